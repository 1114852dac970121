"""Region captions: the generator trained on the region-snippet pairs the alignment infers.

The paper's second stage: every training sentence is aligned to its image (the MRF at
`alignment.beta`), each snippet becomes a caption of its region, and a decoder of
trainers.models (the multimodal RNN with `model.decoder: mrnn`) learns to generate them from the
region's CNN feature, standardised as eq. (1) reads it (AlignmentModel.standardised) and seen as a
one-cell grid (B, 1, C). Any region can then be captioned.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from trainers.alignment.mrf import Snippet
from trainers.alignment.regions import BOX
from trainers.config import DecodeConfig
from trainers.data.vocab import Vocab
from trainers.decoding import decode
from trainers.models import Decoder


class RegionSnippetPairs(Dataset):
    """One item per pair: (its image's fragments or pixels, region index, snippet caption (L,), length).

    `source` holds one row per image (cached fragments (N, M, 4 + C), or images); the recipe turns
    a batch of rows into fragments and picks each pair's region.
    """

    def __init__(self, source: Sequence, rows: np.ndarray, regions: np.ndarray, captions: np.ndarray,
                 lengths: np.ndarray):
        self.source = source
        self.rows, self.regions, self.captions, self.lengths = rows, regions, captions, lengths

    @classmethod
    def from_alignments(cls, source: Sequence, aligned: Iterable[tuple[int, list[int], list[Snippet]]],
                        vocab: Vocab) -> "RegionSnippetPairs":
        """Pairs from (image row, word ids, snippets) of aligned sentences."""
        rows, regions, snippets = [], [], []
        for row, words, pieces in aligned:
            for piece in pieces:
                rows.append(row)
                regions.append(piece.region)
                snippets.append([vocab.start_id, *words[piece.start:piece.end], vocab.end_id])
        captions = np.full((len(snippets), max(map(len, snippets), default=2)), vocab.pad_id, dtype=np.int64)
        for index, tokens in enumerate(snippets):
            captions[index, :len(tokens)] = tokens
        return cls(source, np.array(rows), np.array(regions), captions, np.array([len(s) for s in snippets]))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor, int]:
        row = torch.from_numpy(np.array(self.source[int(self.rows[index])]))  # copied out of the memory map
        return (row, int(self.regions[index]),
                torch.from_numpy(self.captions[index]), int(self.lengths[index]))


def region_features(fragments: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Fragments (B, M, 4 + C) and a region index per row (B,) -> that region's feature as a grid (B, 1, C)."""
    picked = fragments[torch.arange(fragments.shape[0], device=fragments.device), regions]  # (B, 4 + C)
    return picked[:, None, BOX:]  # (B, 1, C)


@torch.no_grad()
def caption_regions(decoder: Decoder, features: torch.Tensor, cfg: DecodeConfig, vocab: Vocab) -> list[str]:
    """A caption for each (standardised) region feature (R, C)."""
    if features.shape[0] == 0:
        return []
    return [vocab.decode(h.tokens) for h in decode(decoder, features[:, None], cfg)]
