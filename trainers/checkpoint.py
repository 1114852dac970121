"""Checkpoints: state dicts plus the config and vocabulary that rebuild the model.

A checkpoint is a folder, written atomically (a temp folder renamed into place), so a crash
mid-write never leaves a checkpoint that loads half. It holds:

- `training_state.pt`: everything resuming needs (model, optimizer, LR schedule, RNG states,
  epoch, history, best score) — tensors and plain containers only, loaded with weights_only.
- `best_model.pt`: the model's state dict at the best epoch so far.
- `meta.json`: the trainer config, the vocabulary, the epoch and the best epoch's metrics.

Nothing unpickles whole modules (DESIGN.md item 11).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import numpy as np
import torch

from trainers.errors import InputError
from trainers.staging import staged_folder

TRAINING_STATE = "training_state.pt"
BEST_MODEL = "best_model.pt"
META = "meta.json"


def rng_state() -> dict:
    """Every random generator the training loop draws from, in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate needs tuples where a round trip may have produced lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_checkpoint(folder: Path, training_state: dict, best_model: dict, meta: dict,
                    extra_files: Optional[dict[str, Path]] = None) -> Path:
    """Write a checkpoint folder atomically: readers see the old one or the new one, never half.

    `extra_files` (name inside the folder -> source file) are copied in, e.g. test predictions.
    """
    folder = Path(folder)
    with staged_folder(folder, replace=True) as staging:
        torch.save(training_state, staging / TRAINING_STATE)
        torch.save(best_model, staging / BEST_MODEL)
        (staging / META).write_text(json.dumps(meta, indent=1, default=str))
        for name, source in (extra_files or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
    return folder


@dataclass
class Checkpoint:
    folder: Path
    meta: dict

    def training_state(self, map_location="cpu") -> dict:
        return torch.load(self.folder / TRAINING_STATE, map_location=map_location, weights_only=True)

    def best_model(self, map_location="cpu") -> dict:
        return torch.load(self.folder / BEST_MODEL, map_location=map_location, weights_only=True)


def load_checkpoint(folder: Path) -> Checkpoint:
    folder = Path(folder)
    missing = [name for name in (TRAINING_STATE, BEST_MODEL, META) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: not a checkpoint (missing {', '.join(missing)})")
    return Checkpoint(folder, json.loads((folder / META).read_text()))
