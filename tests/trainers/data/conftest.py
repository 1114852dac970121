"""Hand-written Karpathy JSON files for the data tests (the synthetic set is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainers.data.karpathy_files import image_entry, write_karpathy


@pytest.fixture
def small_flickr(tmp_path) -> Path:
    """Three train images, one val, one test; returns the JSON path (images under tmp_path)."""
    entries = [
        image_entry("a.jpg", "train", 0, ["A dog runs.", "A dog jumps over a log."]),
        image_entry("b.jpg", "train", 1, ["A cat sleeps.", "The dog and the cat."]),
        image_entry("c.jpg", "train", 2, ["A dog, a cat!"]),
        image_entry("d.jpg", "val", 3, ["A zebra runs."]),
        image_entry("e.jpg", "test", 4, ["A dog sleeps."]),
    ]
    return write_karpathy(tmp_path, entries)
