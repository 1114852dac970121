"""Batches for the ranking loss: every caption once per epoch, no image twice in a batch."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch


def distinct_image_batches(caption_image: np.ndarray, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Caption indices in shuffled batches in which no image appears twice.

    Eq. (9) scores every other sentence of a batch as a wrong one for an image, so a second caption
    of the same image would be a right sentence counted as wrong. Captions are dealt in rounds: round
    r holds the r-th caption (in shuffled order) of every image that has one, and a batch never
    spans two rounds. Batches of one caption are dropped: they have nothing to rank.
    """
    order = torch.randperm(len(caption_image), generator=generator).tolist()
    dealt: dict[int, int] = defaultdict(int)
    rounds: dict[int, list[int]] = defaultdict(list)
    for index in order:
        image = int(caption_image[index])
        rounds[dealt[image]].append(index)
        dealt[image] += 1
    batches = [members[start:start + batch_size] for _, members in sorted(rounds.items())
               for start in range(0, len(members), batch_size)]
    batches = [batch for batch in batches if len(batch) > 1]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def caption_words(captions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared captions (B, L) `<start> w... <end> <pad>...` with lengths (B,) counting <start> and
    <end> -> the words (B, T) padded with 0, T the longest in the batch, and their counts (B,)."""
    counts = (lengths - 2).clamp(min=0)  # (B,)
    longest = max(int(counts.max()), 1)
    words = captions[:, 1:1 + longest]  # (B, T)
    real = torch.arange(words.shape[1], device=words.device)[None, :] < counts[:, None]  # (B, T)
    return words * real, counts
