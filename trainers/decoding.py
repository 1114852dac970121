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
  The set of candidates does not depend on β, so a larger β never picks a shorter caption.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from trainers.config import DecodeConfig
from trainers.models.decoder import Decoder, Memory

START, END, UNK = 1, 2, 3


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
    with _eval_mode(decoder):
        memory = decoder.prepare(features)
        if cfg.strategy == "beam":
            return _beam_search(decoder, memory, cfg)
        return _one_token_at_a_time(decoder, memory, cfg, generator)


def _one_token_at_a_time(decoder: Decoder, memory: Memory, cfg: DecodeConfig,
                         generator: torch.Generator | None) -> list[Hypothesis]:
    """Greedy (the most likely token) or sampling (softmax(log p / temperature)), the whole batch at once."""
    batch = memory.features.shape[0]
    device = memory.features.device
    state = decoder.init_state(memory)
    tokens = torch.full((batch,), START, dtype=torch.long, device=device)  # (B,)
    log_prob = torch.zeros(batch, device=device)  # (B,)
    words = torch.full((batch,), cfg.max_len, device=device)  # (B,)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
    chosen, alphas = [], []
    for t in range(cfg.max_len):
        logprobs, state, alpha = decoder.step(tokens, state, memory)  # (B, V), (B, P)
        allowed = _block_unk(logprobs, cfg)  # (B, V)
        if cfg.strategy == "greedy":
            tokens = allowed.argmax(dim=1)  # (B,)
        else:
            probs = (allowed / cfg.temperature).softmax(dim=1)  # (B, V)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        step_log_prob = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)  # (B,)
        log_prob = log_prob + step_log_prob.masked_fill(finished, 0.0)
        ends_now = ~finished & (tokens == END)  # (B,)
        words = words.masked_fill(ends_now, t)
        finished = finished | ends_now
        chosen.append(tokens)
        alphas.append(alpha)
        if finished.all():
            break
    return _hypotheses(torch.stack(chosen, dim=1), words, log_prob, torch.stack(alphas, dim=1),
                       finished, cfg.length_penalty)


def _beam_search(decoder: Decoder, memory: Memory, cfg: DecodeConfig) -> list[Hypothesis]:
    """Beam search over the whole batch at once: B images x K beams are B*K rows of one step."""
    batch, pixels = memory.features.shape[:2]
    device = memory.features.device
    k, beta = cfg.beam_size, cfg.length_penalty
    images = torch.arange(batch, device=device)  # (B,)
    # K consecutive rows per image; the memory stays one row per image (the attention broadcasts).
    state = decoder.reorder_state(decoder.init_state(memory), images.repeat_interleave(k))  # (B*K, ...)
    tokens = torch.full((batch * k,), START, dtype=torch.long, device=device)  # (B*K,)
    beam_log_prob = torch.full((batch, k), float("-inf"), device=device)  # (B, K)
    beam_log_prob[:, 0] = 0.0  # one live beam per image at the start, so no duplicates
    width = torch.full((batch,), k, device=device)  # (B,) beams still searching per image
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=device)  # (B*K, t)
    alpha_history = torch.zeros(batch * k, 0, pixels, device=device)  # (B*K, t, P)
    best = _BestSoFar(batch, cfg.max_len, pixels, device)
    for t in range(cfg.max_len):
        logprobs, state, alpha = decoder.step(tokens, state, memory)  # (B*K, V), (B*K, P)
        vocab = logprobs.shape[1]
        candidates = beam_log_prob.view(-1, 1) + _block_unk(logprobs, cfg)  # (B*K, V)
        top, flat = candidates.view(batch, k * vocab).topk(k, dim=1)  # (B, K), sorted
        kept = (torch.arange(k, device=device) < width.unsqueeze(1)) & top.isfinite()  # (B, K)
        origin = (images.unsqueeze(1) * k + flat // vocab).view(-1)  # (B*K,) row each beam extends
        tokens = (flat % vocab).view(-1)  # (B*K,)
        state = decoder.reorder_state(state, origin)
        history = torch.cat([history[origin], tokens.unsqueeze(1)], dim=1)  # (B*K, t+1)
        alpha_history = torch.cat([alpha_history[origin], alpha[origin].unsqueeze(1)], dim=1)  # (B*K, t+1, P)
        ended = kept & (tokens.view(batch, k) == END)  # (B, K)
        if ended.any():
            best.offer(top.masked_fill(~ended, float("-inf")), t, history, alpha_history, beta, finished=True)
            width = width - ended.sum(dim=1)
        beam_log_prob = top.masked_fill(ended | ~kept, float("-inf"))
        if (width == 0).all():
            break
    else:  # max_len reached: the captions still running compete too, as they are
        best.offer(beam_log_prob, cfg.max_len, history, alpha_history, beta, finished=False)
    return _hypotheses(best.tokens, best.words, best.log_prob, best.alphas, best.finished, beta)


class _BestSoFar:
    """The best-scoring caption offered so far for each of B images, kept as batched tensors."""

    def __init__(self, batch: int, max_len: int, pixels: int, device: torch.device):
        self.score = torch.full((batch,), float("-inf"), device=device)  # (B,)
        self.log_prob = torch.zeros(batch, device=device)  # (B,)
        self.words = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
        self.tokens = torch.zeros(batch, max_len, dtype=torch.long, device=device)  # (B, L)
        self.alphas = torch.zeros(batch, max_len, pixels, device=device)  # (B, L, P)

    def offer(self, log_prob: torch.Tensor, words: int, history: torch.Tensor, alpha_history: torch.Tensor,
              beta: float, finished: bool) -> None:
        """Candidates: log_prob (B, K), -inf where there is none, each the first `words` tokens of its history row."""
        batch, k = log_prob.shape
        score, slot = length_penalised(log_prob, words, beta).max(dim=1)  # (B,)
        better = score > self.score  # (B,)
        rows = (torch.arange(batch, device=score.device) * k + slot)[better]  # history rows of the winners
        self.score = torch.where(better, score, self.score)
        self.log_prob = torch.where(better, log_prob.gather(1, slot.unsqueeze(1)).squeeze(1), self.log_prob)
        self.words = self.words.masked_fill(better, words)
        self.finished = self.finished.masked_fill(better, finished)
        self.tokens[better, :words] = history[rows, :words]
        self.alphas[better, :words] = alpha_history[rows, :words]


def _block_unk(logprobs: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    if not cfg.block_unk:
        return logprobs
    return logprobs.index_fill(1, torch.tensor([UNK], device=logprobs.device), float("-inf"))


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
