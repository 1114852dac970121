"""Batches for the ranking loss: every caption once, never two captions of one image together."""

from __future__ import annotations

import numpy as np
import torch

from trainers.alignment.batches import caption_words, distinct_image_batches


def test_no_image_twice_in_a_batch_and_every_caption_once():
    caption_image = np.repeat(np.arange(23), 5)
    batches = distinct_image_batches(caption_image, 10, torch.Generator().manual_seed(0))
    assert all(len(set(caption_image[b])) == len(b) <= 10 for b in batches)
    dealt = sorted(i for b in batches for i in b)
    assert len(dealt) == len(set(dealt)) and set(dealt) <= set(range(len(caption_image)))
    assert len(caption_image) - len(dealt) <= 5  # at most one single-caption leftover per round is dropped


def test_batches_depend_only_on_the_seed():
    caption_image = np.repeat(np.arange(30), 3)
    first = distinct_image_batches(caption_image, 8, torch.Generator().manual_seed(4))
    assert first == distinct_image_batches(caption_image, 8, torch.Generator().manual_seed(4))
    assert first != distinct_image_batches(caption_image, 8, torch.Generator().manual_seed(5))


def test_caption_words_drop_start_end_and_padding():
    captions = torch.tensor([[1, 7, 8, 9, 2, 0],
                             [1, 5, 2, 0, 0, 0]])
    words, counts = caption_words(captions, torch.tensor([5, 3]))
    assert counts.tolist() == [3, 1]
    assert words.tolist() == [[7, 8, 9], [5, 0, 0]]
