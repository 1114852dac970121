"""Caption generation, batched: greedy, temperature sampling and beam search with the β penalty.

This is the only decoding code in orch (training evaluation, `orch evaluate` and `orch caption`
all call `decode`). It needs from a decoder only `prepare`, `init_state`, `step` and
`reorder_state` (trainers.models.decoder), so it never special-cases a model.

Conventions, the same for every strategy:
- A caption is at most `max_len` tokens: decoding runs at most `max_len` steps.
- |y| is the number of words: <end> is not counted. A finished caption thus has at most
  max_len - 1 words, an unfinished one max_len.
- `log_prob` is log P(y) under the model, including P(<end>) when the caption finished. It is the
  model's own probability: neither the sampling temperature nor the <unk> block changes it.
- `score` = log_prob / ((5 + |y|) / 6) ** β (Wu et al. 2016; β = 0 is the raw log-probability).
- Beam search ranks partial captions by log-probability and complete ones by score. The beam
  narrows by one each time a caption ends (as in the Show, Attend and Tell tutorial); the search
  for an image stops when all its beams have ended, or at max_len, where the captions still running
  join the ended ones as they are (`finished=False`). The answer is the best score among them all,
  so a model that never says <end> gets its best max_len-word caption instead of a crash.
  The set of candidates does not depend on β, so a larger β never picks a shorter caption, and
  one search serves every β (`decode_for_betas`): a β sweep costs one search, not one per β.

The hot loops hold no host-device sync: beams keep back-pointers (one (B*K,) row per step) and the
captions are traced back once at the end; on an accelerator the "all ended?" test that ends a
search early runs every few steps only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainers.config import DecodeConfig
from trainers.data.vocab import END_ID, START_ID, UNK_ID
from trainers.models.decoder import Decoder, Memory, sample_tokens


@dataclass
class Hypothesis:
    tokens: list[int]  # the words, without <start> and <end>
    log_prob: float  # log P(y), summed over the steps
    score: float  # log_prob with the length penalty
    alphas: torch.Tensor  # (len(tokens), P): the attention that produced each word, on the CPU
    finished: bool  # whether the caption ended with <end> within max_len


def length_penalised(log_prob: torch.Tensor, words: torch.Tensor | int, beta: float) -> torch.Tensor:
    """score = log P(y) / ((5 + |y|) / 6) ** β, with |y| the number of words."""
    return log_prob / ((5.0 + words) / 6.0) ** beta


@torch.no_grad()
def decode(decoder: Decoder, features: torch.Tensor, cfg: DecodeConfig,
           generator: torch.Generator | None = None) -> list[Hypothesis]:
    """One caption per image of features (B, P, C), by `cfg.strategy`. Runs the decoder in eval mode."""
    return decode_for_betas(decoder, features, cfg, [cfg.length_penalty], generator)[0]


@torch.no_grad()
def decode_for_betas(decoder: Decoder, features: torch.Tensor, cfg: DecodeConfig, betas: Sequence[float],
                     generator: torch.Generator | None = None) -> list[list[Hypothesis]]:
    """One search of `cfg` (its length_penalty unused), then a caption per image for each β of `betas`."""
    with _eval_mode(decoder):
        memory = decoder.prepare(features)
        if cfg.strategy == "beam":
            return [_hypotheses(*found) for found in _beam_search(decoder, memory, cfg, betas)]
        found = _one_token_at_a_time(decoder, memory, cfg, generator)
        return [_hypotheses(*found, beta) for beta in betas]


def _one_token_at_a_time(decoder: Decoder, memory: Memory, cfg: DecodeConfig,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
    """Greedy (the most likely token) or sampling (softmax(log p / temperature)), the whole batch at once.

    Returns tokens (B, L), words (B,), log_prob (B,), alphas (B, L, P), finished (B,).
    """
    batch = memory.features.shape[0]
    device = memory.features.device
    unk = _unk_index(cfg, device)
    state = decoder.init_state(memory)
    tokens = torch.full((batch,), START_ID, dtype=torch.long, device=device)  # (B,)
    log_prob = torch.zeros(batch, device=device)  # (B,)
    words = torch.full((batch,), cfg.max_len, device=device)  # (B,)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
    chosen, alphas = [], []
    for t in range(cfg.max_len):
        logprobs, state, alpha = decoder.step(tokens, state, memory)  # (B, V), (B, P)
        allowed = _block_unk(logprobs, unk)  # (B, V)
        if cfg.strategy == "greedy":
            tokens = allowed.argmax(dim=1)  # (B,)
        else:
            probs = (allowed / cfg.temperature).softmax(dim=1)  # (B, V)
            tokens = sample_tokens(probs, generator)  # (B,)
        step_log_prob = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)  # (B,)
        log_prob = log_prob + step_log_prob.masked_fill(finished, 0.0)
        ends_now = ~finished & (tokens == END_ID)  # (B,)
        words = words.masked_fill(ends_now, t)
        finished = finished | ends_now
        chosen.append(tokens)
        alphas.append(alpha)
        if _time_to_check(t, device) and bool(finished.all()):
            break
    return torch.stack(chosen, dim=1), words, log_prob, torch.stack(alphas, dim=1), finished


def _beam_search(decoder: Decoder, memory: Memory, cfg: DecodeConfig, betas: Sequence[float]) -> list[tuple]:
    """Beam search over the whole batch at once: B images x K beams are B*K rows of one step.

    Each step keeps its chosen tokens, the rows they extend (back-pointers) and their attention;
    every β keeps its own best caption so far as a pointer into those, traced back at the end.
    Per β, on the device: tokens (B, L), words (B,), log_prob (B,), alphas (B, L, P), finished (B,), β.
    """
    batch, pixels = memory.features.shape[:2]
    device = memory.features.device
    k = cfg.beam_size
    unk = _unk_index(cfg, device)
    images = torch.arange(batch, device=device)  # (B,)
    # K consecutive rows per image; the memory stays one row per image (the attention broadcasts).
    state = decoder.reorder_state(decoder.init_state(memory), images.repeat_interleave(k))  # (B*K, ...)
    tokens = torch.full((batch * k,), START_ID, dtype=torch.long, device=device)  # (B*K,)
    beam_log_prob = torch.full((batch, k), float("-inf"), device=device)  # (B, K)
    beam_log_prob[:, 0] = 0.0  # one live beam per image at the start, so no duplicates
    width = torch.full((batch,), k, device=device)  # (B,) beams still searching per image
    trail = _Trail()
    best = [_BestSoFar(batch, beta, device) for beta in betas]
    for t in range(cfg.max_len):
        logprobs, state, alpha = decoder.step(tokens, state, memory)  # (B*K, V), (B*K, P)
        vocab = logprobs.shape[1]
        candidates = beam_log_prob.view(-1, 1) + _block_unk(logprobs, unk)  # (B*K, V)
        top, flat = candidates.view(batch, k * vocab).topk(k, dim=1)  # (B, K), sorted
        kept = (torch.arange(k, device=device) < width.unsqueeze(1)) & top.isfinite()  # (B, K)
        origin = (images.unsqueeze(1) * k + flat // vocab).view(-1)  # (B*K,) row each beam extends
        tokens = (flat % vocab).view(-1)  # (B*K,)
        state = decoder.reorder_state(state, origin)
        trail.add(tokens, origin, alpha[origin])
        ended = kept & (tokens.view(batch, k) == END_ID)  # (B, K)
        ended_log_prob = top.masked_fill(~ended, float("-inf"))  # (B, K)
        for b in best:
            b.offer(ended_log_prob, t, t, finished=True)
        width = width - ended.sum(dim=1)
        beam_log_prob = top.masked_fill(ended | ~kept, float("-inf"))
        if _time_to_check(t, device) and not bool((width > 0).any()):
            break
    else:  # max_len reached: the captions still running compete too, as they are
        for b in best:
            b.offer(beam_log_prob, cfg.max_len, cfg.max_len - 1, finished=False)
    found = []
    for b in best:
        tokens_traced, alphas_traced = trail.trace(b.row, b.last_step, pixels)
        found.append((tokens_traced, b.words, b.log_prob, alphas_traced, b.finished, b.beta))
    return found


class _Trail:
    """Every step's chosen tokens (B*K,), back-pointers (B*K,) and attention (B*K, P), in order."""

    def __init__(self):
        self.tokens: list[torch.Tensor] = []
        self.origins: list[torch.Tensor] = []
        self.alphas: list[torch.Tensor] = []

    def add(self, tokens: torch.Tensor, origins: torch.Tensor, alphas: torch.Tensor) -> None:
        self.tokens.append(tokens)
        self.origins.append(origins)
        self.alphas.append(alphas)

    def trace(self, row: torch.Tensor, last_step: torch.Tensor, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, L) and attention (B, L, P) of the beams ending at `row` (B,) at `last_step` (B,)."""
        steps, batch = len(self.tokens), row.shape[0]
        tokens = row.new_zeros(batch, steps)  # (B, L)
        alphas = self.alphas[0].new_zeros(batch, steps, pixels)  # (B, L, P)
        for t in reversed(range(steps)):
            active = t <= last_step  # (B,)
            tokens[:, t] = torch.where(active, self.tokens[t][row], 0)
            alphas[:, t] = torch.where(active.unsqueeze(1), self.alphas[t][row], 0.0)
            row = torch.where(active, self.origins[t][row], row)
        return tokens, alphas


class _BestSoFar:
    """For one β, the best-scoring caption offered so far for each of B images, as pointers into a _Trail."""

    def __init__(self, batch: int, beta: float, device: torch.device):
        self.beta = beta
        self.score = torch.full((batch,), float("-inf"), device=device)  # (B,)
        self.log_prob = torch.zeros(batch, device=device)  # (B,)
        self.words = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
        self.row = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) beam row at last_step
        self.last_step = torch.full((batch,), -1, dtype=torch.long, device=device)  # (B,)

    def offer(self, log_prob: torch.Tensor, words: int, last_step: int, finished: bool) -> None:
        """Candidates: log_prob (B, K), -inf where there is none, each `words` words ending at `last_step`."""
        batch, k = log_prob.shape
        score, slot = length_penalised(log_prob, words, self.beta).max(dim=1)  # (B,)
        better = score > self.score  # (B,)
        self.score = torch.where(better, score, self.score)
        self.log_prob = torch.where(better, log_prob.gather(1, slot.unsqueeze(1)).squeeze(1), self.log_prob)
        self.words = self.words.masked_fill(better, words)
        self.finished = self.finished.masked_fill(better, finished)
        self.row = torch.where(better, torch.arange(batch, device=score.device) * k + slot, self.row)
        self.last_step = self.last_step.masked_fill(better, last_step)


ACCELERATOR_CHECK_EVERY = 4  # steps between "has every caption ended?" reads on an accelerator


def _time_to_check(t: int, device: torch.device) -> bool:
    """Whether step t asks if every caption has ended: each step on the CPU, where asking is free;
    every 4th on an accelerator, where each answer stalls the queue (extra steps change nothing)."""
    return device.type == "cpu" or t % ACCELERATOR_CHECK_EVERY == ACCELERATOR_CHECK_EVERY - 1


def _unk_index(cfg: DecodeConfig, device: torch.device) -> torch.Tensor | None:
    return torch.tensor([UNK_ID], device=device) if cfg.block_unk else None


def _block_unk(logprobs: torch.Tensor, unk: torch.Tensor | None) -> torch.Tensor:
    return logprobs if unk is None else logprobs.index_fill(1, unk, float("-inf"))


def _hypotheses(tokens: torch.Tensor, words: torch.Tensor, log_prob: torch.Tensor, alphas: torch.Tensor,
                finished: torch.Tensor, beta: float) -> list[Hypothesis]:
    """Per-image results from batched tensors: tokens (B, L), words (B,), alphas (B, L, P)."""
    score = length_penalised(log_prob, words, beta).tolist()
    log_prob, words, finished = log_prob.tolist(), words.tolist(), finished.tolist()
    tokens, alphas = tokens.cpu(), alphas.float().cpu()
    return [Hypothesis(tokens=tokens[i, :n].tolist(), log_prob=log_prob[i], score=score[i],
                       alphas=alphas[i, :n].clone(), finished=finished[i])
            for i, n in enumerate(words)]


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Decode without dropout, then give the module back in the mode it came in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
