"""Words to regions: the paper's Markov random field on the chain of words, solved exactly.

    E(a) = Σ_j ψ_U(a_j) + Σ_j ψ_B(a_j, a_{j+1}),  ψ_U(a_j = i) = v_iᵀ s_j,  ψ_B = β 1[a_j = a_{j+1}]

The best assignment (highest E: scores are similarities) comes from dynamic programming over the
chain (Viterbi), O(T M). β = 0 aligns every word to its best region on its own; a larger β pays
for neighbours that share a region, so the words gather into longer snippets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Snippet(NamedTuple):
    start: int  # first word
    end: int  # one past the last word
    region: int


def align_words(unary: np.ndarray, beta: float) -> list[int]:
    """The region of each word maximising E, for unary (T words, M regions) = v_iᵀ s_t."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    unary = np.asarray(unary, dtype=np.float64)
    words, regions = unary.shape
    if words == 0:
        return []
    best = unary[0].copy()  # (M,): the best energy of words 0..j ending in each region
    came_from = np.zeros((words, regions), dtype=np.int64)  # (T, M)
    for j in range(1, words):
        # With β >= 0 the best switch may come from any region, the same one included.
        switch_from = int(best.argmax())
        stay = best + beta  # (M,)
        stays = stay >= best[switch_from]  # (M,)
        came_from[j] = np.where(stays, np.arange(regions), switch_from)
        best = np.where(stays, stay, best[switch_from]) + unary[j]  # (M,)
    assignment = [int(best.argmax())]
    for j in range(words - 1, 0, -1):
        assignment.append(int(came_from[j, assignment[-1]]))
    return assignment[::-1]


def snippets(assignment: list[int]) -> list[Snippet]:
    """Maximal runs of neighbouring words aligned to the same region, in sentence order."""
    runs: list[Snippet] = []
    for index, region in enumerate(assignment):
        if runs and runs[-1].region == region and runs[-1].end == index:
            runs[-1] = runs[-1]._replace(end=index + 1)
        else:
            runs.append(Snippet(index, index + 1, region))
    return runs


def sentence_snippets(image: torch.Tensor, sentence: torch.Tensor, beta: float) -> list[Snippet]:
    """Snippets of one sentence: image fragments v (M, h), its words' fragments s (T, h)."""
    unary = sentence @ image.T  # (T, M): v_iᵀ s_t
    return snippets(align_words(unary.detach().float().cpu().numpy(), beta))
