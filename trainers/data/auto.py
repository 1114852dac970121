"""Open the prepared dataset a config names, generating synthetic data first when asked to.

With `data.synthetic` set and `data.prepared` absent, the data is made (`orch synth` then
`orch prepare`) once; concurrent trials wait on a file lock instead of racing to write it.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from trainers.config import DataConfig
from trainers.data.prepare import prepare_dataset
from trainers.data.prepared import PreparedDataset
from trainers.data.synthetic import write_synthetic_dataset


def ensure_prepared(data: DataConfig) -> PreparedDataset:
    prepared = Path(data.prepared)
    if data.synthetic is None or prepared.exists():
        return PreparedDataset(prepared)
    prepared.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(prepared) + ".lock"):
        if not prepared.exists():
            synth = data.synthetic
            raw = prepared.parent / f"{prepared.name}-source"
            if not (raw / "dataset.json").exists():
                write_synthetic_dataset(raw, n=synth.n, size=synth.size, seed=synth.seed)
            prepare_dataset(raw / "dataset.json", raw, prepared, min_word_freq=synth.min_word_freq,
                            max_len=50, image_size=synth.size, skip_bad_images=False)
    return PreparedDataset(prepared)
