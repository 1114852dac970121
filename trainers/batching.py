"""Batches of captions grouped by image, so a fine-tuned encoder sees each image once per epoch.

Show, Attend and Tell draws captions independently, which is right when the encoder is frozen
(its features are cached, so a caption costs only the decoder). When the encoder trains, an
image with five captions would go through the CNN five times per epoch. Grouping the captions of
an image into the same batch (ImageCaptioning.pytorch's `seq_per_img`) and encoding each distinct
image once (`encode_distinct`) cuts the encoder's work per epoch by the captions-per-image factor.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class ImageGroupedBatches(Sampler[list[int]]):
    """Shuffled images, each image's captions consecutive, cut into batches of `batch_size` captions.

    caption_image (M,): the image row of each caption. An image whose captions straddle two
    batches is encoded in both; every caption appears exactly once per epoch.
    """

    def __init__(self, caption_image: Sequence[int], batch_size: int, generator: torch.Generator):
        self.caption_image = np.asarray(caption_image)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.caption_image) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n_images = int(self.caption_image.max()) + 1 if len(self.caption_image) else 0
        image_order = torch.randperm(n_images, generator=self.generator).numpy()  # (N,)
        rank = np.empty(n_images, dtype=np.int64)
        rank[image_order] = np.arange(n_images)
        captions = np.argsort(rank[self.caption_image], kind="stable")  # (M,) grouped by image
        for start in range(0, len(captions), self.batch_size):
            yield captions[start:start + self.batch_size].tolist()


def encode_distinct(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:
    """`encode` each distinct image row of the batch once; features (B, P, C) in batch order.

    images (B, ...), on any device, with rows (B,) on the host naming the image each item shows (equal
    rows, equal images). The distinct rows are found on the host: `unique` on a GPU waits for it.
    """
    distinct, inverse = rows.cpu().unique(return_inverse=True)  # (U,), (B,)
    first = torch.empty_like(distinct).scatter_(0, inverse, torch.arange(len(rows)))  # (U,)
    first, inverse = first.to(images.device, non_blocking=True), inverse.to(images.device, non_blocking=True)
    # index_select, not [inverse]: its gradient sums the duplicates in a fixed order, where indexing's
    # accumulates them with atomic adds across threads, in whatever order they come (trainers.determinism).
    return encode(images[first]).index_select(0, inverse)  # (B, P, C)
