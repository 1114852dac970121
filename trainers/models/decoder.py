"""The decoder shell: embedding, attention, a swappable recurrent core, dropout, output layer.

One step (`_hidden_step`) serves training (`forward`, with scheduled sampling, the output layer
applied once to all steps) and decoding (`step`, used by trainers.decoding), so no sampling or
search code lives in a model (ImageCaptioning.pytorch's AttModel + cores, without copying the
sampling code into each model).

Which path runs where (docs/architecture.md, "The training step"):
- `forward` on a CPU, LSTM or GRU with soft attention, teacher-forced: the steps as one autograd
  function (trainers.models.recurrence), which re-implements `_hidden_step`'s arithmetic for speed
  and is tested bit for bit against it;
- `forward` otherwise (a GPU without `train.compile`, scheduled sampling, the other cores): step by
  step through `_hidden_step`, the rows shrinking as captions end;
- `teacher_forced` under `train.compile` (trainers.compiled): step by step through `_hidden_step`
  with every row at every step, so its shapes never change and it compiles once.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from trainers.config import ModelConfig
from trainers.models.attention import ATTENTIONS, SoftAttention, uniform_weights
from trainers.models.cores import DECODERS, State
from trainers.models.recurrence import CELLS, attend_and_tell


class Memory(NamedTuple):
    """What every step reads about the images, computed once per caption by `Decoder.prepare`."""

    features: torch.Tensor  # (B, P, C)
    prepared: torch.Tensor  # the attention's per-image projection, (B, P, A) or (B, C)
    mean: torch.Tensor  # (B, C)

    def select(self, index) -> "Memory":
        """Rows picked by `index` (a slice, or (B',) row indices: beam search expands images to beams)."""
        return Memory(*(part[index] for part in self))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        core_class = DECODERS.get(cfg.decoder)
        self.vocab_size = vocab_size
        # Only learned attention is regularised (alpha_c): uniform weights have nothing to learn.
        self.learns_attention = cfg.attention in ("soft", "dot")
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)
        # `none`: the image only starts the state (the tutorial's "without attention"); no context.
        self.attention = (ATTENTIONS.get(cfg.attention)(feature_dim, cfg.hidden_dim, cfg.attention_dim)
                          if cfg.attention != "none" else None)
        context_dim = self.attention.context_dim if self.attention is not None else 0
        # Show, Attend and Tell gates the soft-attention context with sigmoid(f_beta(h)).
        self.f_beta = nn.Linear(cfg.hidden_dim, context_dim) if cfg.attention == "soft" else None
        input_dim = cfg.embed_dim + context_dim
        self.core = core_class(input_dim, cfg.hidden_dim, feature_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.hidden_dim, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.fc.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)

    def prepare(self, features: torch.Tensor) -> Memory:
        mean = features.mean(dim=1)  # (B, C)
        prepared = self.attention.prepare(features) if self.attention is not None else mean
        return Memory(features, prepared, mean)

    def init_state(self, memory: Memory) -> State:
        return self.core.init_state(memory.mean)

    def reorder_state(self, state: State, index) -> State:
        return self.core.reorder(state, index)

    def step(self, tokens: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One decoding step: tokens (B,) -> log-probabilities (B, V), next state, alpha (B, P)."""
        logits, state, alpha = self._step(tokens, state, memory)
        return logits.log_softmax(dim=1), state, alpha

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                ss_rate: float = 0.0, ss_per: Literal["token", "sequence"] = "token",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T-1, V) predicting captions[:, 1:], and attention weights (B, T-1, P).

        captions (B, T) start with <start>; lengths (B,) count <start> and <end>. Steps past a
        caption's end are not computed (their outputs are zeros). With scheduled sampling
        (Bengio et al. 2015) a coin per token, or one per caption for `ss_per: sequence`, replaces
        the ground-truth input with probability `ss_rate` by a token sampled from the model's
        previous output. `ss_rate` 0 draws no coins, so it is exactly teacher forcing.
        """
        batch, length = captions.shape
        steps = length - 1
        lengths = lengths.cpu()  # a no-op for the training loaders' batches, whose lengths stay on the host
        # Sorted longest first, the captions still running at step t are a prefix of the batch. The
        # training loaders sort their batches already (trainers.data.loaders.longest_first): no copy then.
        order = lengths.argsort(descending=True, stable=True)  # (B,)
        if not bool((order == torch.arange(batch)).all()):
            order_on_device = order.to(captions.device)
            captions, features = captions[order_on_device], features[order_on_device]  # (B, T), (B, P, C)
        steps_needed = lengths[order] - 1  # (B,)
        rows = [int((steps_needed > t).sum()) for t in range(min(steps, int(steps_needed.max())))]  # running at t
        memory = self.prepare(features)
        state = self.init_state(memory)
        embedded = self.embedding(captions)  # (B, T, E): one lookup, and one gradient, for every step
        if self._runs_as_one_function(features, ss_rate):
            hidden, alphas = attend_and_tell(self, embedded, memory, state, rows)  # (N, H), (N, P)
            outputs = [self.dropout(part) for part in hidden.split(rows)]  # per step, as stepping draws them
        else:
            outputs, alphas = self._stepwise(embedded, memory, state, rows, ss_rate if ss_rate > 0 else None, ss_per,
                                             generator)
        # The output layer runs once over every real token: one large product instead of one per step,
        # whose weight gradients (inner size = rows) and per-step accumulation cost more than the product.
        positions = torch.cat([order[:count] * steps + t for t, count in enumerate(rows)])  # (N,) flat (b, t), unsorted
        logits = self.fc(torch.cat(outputs))  # (N, V)
        positions = positions.to(captions.device, non_blocking=True)
        return (self._padded(logits, positions, batch, steps),  # (B, T-1, V)
                self._padded(alphas, positions, batch, steps))  # (B, T-1, P)

    def teacher_forced(self, features: torch.Tensor, captions: torch.Tensor, ss_rate: torch.Tensor | None = None,
                       ss_per: Literal["token", "sequence"] = "token") -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` with fixed shapes, for the compiled path: logits (B, T-1, V) and alphas (B, T-1, P).

        Every row runs every step, steps past a caption's end included: their outputs are computed
        and left for the loss to mask (targets are pads there), so the shapes depend only on (B, T)
        and one compiled graph serves every batch of that shape. `ss_rate` is a 0-dim tensor, so a
        rate that changes each epoch does not recompile; None is teacher forcing, which draws nothing.
        """
        batch, length = captions.shape
        memory = self.prepare(features)
        state = self.init_state(memory)
        embedded = self.embedding(captions)  # (B, T, E)
        outputs, alphas = self._stepwise(embedded, memory, state, [batch] * (length - 1), ss_rate, ss_per, None)
        logits = self.fc(torch.stack(outputs, dim=1))  # (B, T-1, V)
        return logits, alphas.view(length - 1, batch, -1).transpose(0, 1)  # (B, T-1, V), (B, T-1, P)

    def _runs_as_one_function(self, features: torch.Tensor, ss_rate: float) -> bool:
        """Whether the steps run as trainers.models.recurrence's one autograd function: an LSTM or GRU with
        soft attention, teacher-forced, on a CPU without autocast, where stepping through autograd is
        memory-bound. A GPU steps through `_hidden_step`, which `train.compile` compiles."""
        cell = getattr(self.core, "cell", None)  # the torch cell of an rnn, lstm or gru core; mrnn has none
        return (type(cell) in CELLS and isinstance(self.attention, SoftAttention)
                and ss_rate == 0 and features.device.type == "cpu" and not torch.is_autocast_enabled("cpu"))

    def _stepwise(self, embedded: torch.Tensor, memory: Memory, state: State, rows: list[int],
                  ss_rate: float | torch.Tensor | None, ss_per: str,
                  generator: torch.Generator | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Step by step through `_hidden_step`: each step's dropped-out h (rows, H), and alphas (N, P).
        `ss_rate` None: teacher forcing, no coins drawn."""
        outputs, alphas = [], []
        sampling = ss_rate is not None
        if sampling and ss_per == "sequence":
            caption_coins = self._coins(embedded.shape[0], ss_rate, embedded.device, generator)  # (B,)
        for t, count in enumerate(rows):
            state, memory = self.reorder_state(state, slice(count)), memory.select(slice(count))
            x = embedded[:count, t]  # (rows, E)
            if sampling and t > 0:
                coins = (caption_coins[:count] if ss_per == "sequence"
                         else self._coins(count, ss_rate, embedded.device, generator))  # (rows,)
                with torch.no_grad():
                    previous = self.fc(outputs[-1][:count]).softmax(dim=1)  # (rows, V)
                sampled = sample_tokens(previous, generator)  # (rows,)
                x = torch.where(coins.unsqueeze(1), self.embedding(sampled), x)  # (rows, E)
            h, state, alpha = self._hidden_step(x, state, memory)
            outputs.append(self.dropout(h))  # (rows, H)
            alphas.append(alpha)  # (rows, P)
        return outputs, torch.cat(alphas)

    @staticmethod
    def _padded(packed: torch.Tensor, positions: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
        """Rows (N, X) of real steps -> (B, steps, X) with zeros past each caption's end.

        One index_copy: its backward is one gather, where writing each step into a preallocated
        buffer would copy the whole buffer's gradient once per step."""
        flat = packed.new_zeros(batch * steps, packed.shape[1])  # (B*T', X)
        return flat.index_copy(0, positions, packed).view(batch, steps, -1)

    @staticmethod
    def _coins(n: int, rate: float | torch.Tensor, device, generator) -> torch.Tensor:
        """(n,) booleans, true with probability `rate`: feed the model's own token."""
        return torch.rand(n, device=device, generator=generator) < rate

    def _step(self, tokens: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        h, state, alpha = self._hidden_step(self.embedding(tokens), state, memory)
        return self.fc(self.dropout(h)), state, alpha  # (B, V)

    def _hidden_step(self, x: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        """A step between the embedding and the output layer: embedded tokens x (B, E) -> h (B, H),
        next state, alpha (B, P)."""
        hidden = self.core.hidden(state)  # (B, H)
        if self.attention is None:
            alpha = uniform_weights(memory.features, hidden.shape[0])  # (B, P)
        else:
            context, alpha = self.attention(memory.features, hidden, memory.prepared)  # (B, D), (B, P)
            if self.f_beta is not None:
                context = torch.sigmoid(self.f_beta(hidden)) * context  # (B, D)
            x = torch.cat([x, context], dim=1)  # (B, E + D)
        h, state = self.core(x, state)  # (B, H)
        return h, state, alpha


def sample_tokens(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of probs (rows, V), drawn as torch.multinomial(probs, 1) draws it (the same
    tokens for the same generator state): the argmax of probs / Exp(1) noise. Written out, it never
    waits for the device, which multinomial's input checks do, and it compiles."""
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)  # (rows, V)
    return (probs / noise).argmax(dim=1)  # (rows,)
