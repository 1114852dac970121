"""Tiny datasets for the data tests: a 40-image synthetic set and hand-written Karpathy JSON files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainers.data.karpathy_files import image_entry, write_karpathy
from trainers.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """orch synth output, 40 images of 32 px (32 train, 4 val, 4 test)."""
    out = tmp_path_factory.mktemp("synth") / "synth"
    write_synthetic_dataset(out, n=40, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_dir(synth_dir, tmp_path_factory) -> Path:
    from trainers.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_dataset(synth_dir / "dataset.json", synth_dir, out, min_word_freq=1, max_len=30, image_size=32)
    return out


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
