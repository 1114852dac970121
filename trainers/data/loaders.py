"""torch Datasets over a prepared split, safe to hand to DataLoader workers (fork or spawn).

Arrays are opened lazily in each worker, never pickled: a worker receives only file paths and
memory-maps the `.npy` files itself. The per-row image source is any indexable (`LazyArray` of
the prepared images, of cached encoder features, ...), so the caption/index logic lives once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from trainers.data.prepared import PreparedSplit


class LazyArray:
    """A `.npy` file memory-mapped on first access in whichever process uses it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getitem__(self, index) -> np.ndarray:
        return self.array[index]

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_array": None}


class RowsOnly:
    """A per-row source that holds nothing: each row reads as an empty array. For features gathered a
    batch at a time from where they are held (trainers.features.FeatureStore): the loader carries rows."""

    def __init__(self, size: int):
        self.size = size

    def __getitem__(self, index) -> np.ndarray:
        return np.empty(0, dtype=np.float16)

    def __len__(self) -> int:
        return self.size


def _row_tensor(rows: Sequence, index: int) -> torch.Tensor:
    return torch.from_numpy(np.array(rows[index]))  # copied out of the memory map


class CaptionPairs(Dataset):
    """One item per caption (Show-Attend-Tell): (image row, caption int64 (L,), length, image row index).

    `length` counts <start> and <end>. `images` defaults to the split's uint8 (N, 3, S, S) images;
    pass another per-row source (e.g. cached features (N, P, C)) to pair captions with it instead.
    """

    def __init__(self, split: PreparedSplit, images: Sequence | None = None):
        self.images = images if images is not None else LazyArray(split.images_path)
        self.captions = LazyArray(split.captions_path)  # (M, L) int32
        self.lengths = LazyArray(split.lengths_path)  # (M,) int32
        self.caption_image = LazyArray(split.caption_image_path)  # (M,) int32
        self._size = len(split.caption_image)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        row = int(self.caption_image[index])
        caption = torch.from_numpy(self.captions[index].astype(np.int64))  # (L,)
        return _row_tensor(self.images, row), caption, int(self.lengths[index]), row


def longest_first(items: list[tuple]) -> tuple[torch.Tensor, ...]:
    """Collate CaptionPairs items longest caption first, padding cut at the longest.

    The decoder's batch shrinks as captions end, so it needs them sorted: sorting here, on the host,
    spares it a permuted copy of the feature grid on the device, and no step runs past the longest.
    Lengths stay on the host (the decoder reads them every step).
    """
    inputs, captions, lengths, rows = default_collate(items)
    order = lengths.argsort(descending=True, stable=True)  # (B,)
    longest = int(lengths[order[0]])
    return inputs[order], captions[order, :longest], lengths[order], rows[order]


class SplitImages(Dataset):
    """One item per image: (image row, row index), for captioning and evaluation."""

    def __init__(self, split: PreparedSplit, images: Sequence | None = None):
        self.images = images if images is not None else LazyArray(split.images_path)
        self._size = len(split)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _row_tensor(self.images, index), index
