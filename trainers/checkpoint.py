"""Checkpoints: state dicts plus the config and vocabulary that rebuild the model.

A checkpoint is a folder, written atomically (a temp folder renamed into place), so a crash
mid-write never leaves a checkpoint that loads half. It holds:

- `training_state.pt`: everything resuming needs (trainable weights, optimizer, LR schedule, RNG
  states, epoch, history, best score) — tensors and plain containers only, loaded with weights_only.
- `best_model.pt`: the trainable weights at the best epoch so far.
- `meta.json`: the trainer config, the vocabulary, the epoch, the best epoch's metrics and, when
  the encoder has frozen blocks, what identifies them (`frozen_encoder`).

The frozen blocks of an encoder never go into a checkpoint: a frozen ResNet-101 is 170 MB that
every epoch would write twice. They are rebuilt when a checkpoint is read (`complete_state`): from
torchvision's weights enum (`imagenet`), the weights file (a path), or the fixed random init
(`weights: none`), and checked against the SHA-256 the checkpoint recorded. A random frozen
encoder is also stored once per run, beside the checkpoint folder or one level up
(`frozen_encoder-<hash>.safetensors`), in case another torch version draws a different init.

Nothing unpickles whole modules (docs/architecture.md, contract 11).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import numpy as np
import torch

from trainers.config import ModelConfig, TrainerConfig, without_retired_keys
from trainers.errors import InputError, reading
from trainers.staging import staged_folder

TRAINING_STATE = "training_state.pt"
BEST_MODEL = "best_model.pt"
FILE_SIZES = "file_sizes"  # meta.json: the bytes of training_state.pt and best_model.pt as written
META = "meta.json"


def frozen_encoder_file(frozen: dict) -> str:
    """The name a random frozen encoder is stored under, once per run: its hash tells encoders apart."""
    return f"frozen_encoder-{frozen['sha256'][:16]}.safetensors"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of tensors by name: what identifies frozen weights and the feature cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def frozen_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the encoder's frozen blocks (none for a model without an encoder)."""
    encoder = getattr(model, "encoder", None)
    return _block_prefixes(encoder.first_trainable if encoder is not None else 0)


def _block_prefixes(blocks: int) -> tuple[str, ...]:
    """State-dict prefixes of the encoder's first `blocks` blocks."""
    return tuple(f"encoder.blocks.{i}." for i in range(blocks))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of the state dict without the frozen encoder blocks: what a checkpoint
    and the best weights kept in memory hold (the frozen blocks never change)."""
    skip = frozen_prefixes(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if not k.startswith(skip)}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a trainable state into a model built with its frozen blocks; only those may be absent."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    skip = frozen_prefixes(model)
    wrong = [k for k in missing if not k.startswith(skip)] + list(unexpected)
    if wrong:
        raise InputError(f"the saved weights do not fit the model: {', '.join(wrong[:5])}")


def frozen_encoder_meta(model: torch.nn.Module, cfg: ModelConfig) -> Optional[dict]:
    """What identifies the frozen blocks a checkpoint leaves out: the weights and their hash."""
    skip = frozen_prefixes(model)
    if not skip:
        return None
    from trainers.models.encoders import weights_source

    frozen = {k: v for k, v in model.state_dict().items() if k.startswith(skip)}
    return {"blocks": len(skip), "weights": weights_source(cfg), "sha256": state_digest(frozen)}


def store_random_encoder(run_dir: Path, model: torch.nn.Module, frozen: Optional[dict]) -> None:
    """A random frozen encoder (`weights: none`) is written once per run, beside its checkpoints."""
    if frozen is None or frozen["weights"] != "none" or (Path(run_dir) / frozen_encoder_file(frozen)).is_file():
        return
    from safetensors.torch import save_file

    skip = frozen_prefixes(model)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=run_dir, suffix=".partial", delete=False) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(skip)},
                  staging.name)
    os.replace(staging.name, Path(run_dir) / frozen_encoder_file(frozen))


def complete_state(state: dict[str, torch.Tensor], meta: dict, folder: Path) -> dict[str, torch.Tensor]:
    """The whole model's state dict from a checkpoint's trainable one: the frozen blocks rebuilt and
    checked against the checkpoint's hash. A checkpoint without `frozen_encoder` holds them already."""
    frozen = meta.get("frozen_encoder")
    if not frozen:
        return state
    from trainers.models.encoders import build_encoder

    cfg = TrainerConfig.model_validate(without_retired_keys(meta["config"])).model
    prefixes = _block_prefixes(frozen["blocks"])
    rebuilt = {f"encoder.{k}": v for k, v in build_encoder(cfg).state_dict().items()
               if f"encoder.{k}".startswith(prefixes)}
    if state_digest(rebuilt) != frozen["sha256"]:
        rebuilt = _stored_random_encoder(Path(folder), frozen)
    return {**rebuilt, **state}


def stored_random_encoder_files(folder: Path, frozen: dict) -> list[Path]:
    """The copies a run stored of its random frozen encoder, nearest first: in the checkpoint folder,
    its run's folder (`orch train`, a trial) or the one above (the trials of an `orch run`)."""
    name = frozen_encoder_file(frozen)
    folder = Path(folder)
    return [path for path in (folder / name, folder.parent / name, folder.parent.parent / name) if path.is_file()]


def _stored_random_encoder(folder: Path, frozen: dict) -> dict[str, torch.Tensor]:
    """The stored copy of a random frozen encoder whose hash the checkpoint recorded."""
    from safetensors.torch import load_file

    name = frozen_encoder_file(frozen)
    for path in stored_random_encoder_files(folder, frozen):
        if state_digest(stored := load_file(path)) == frozen["sha256"]:
            return stored
    raise InputError(f"{folder}: the frozen encoder ({frozen['weights']}) rebuilt here does not match the one it "
                     f"was trained with (sha256 {frozen['sha256'][:16]}...), and no {name} was found beside the "
                     f"checkpoint")


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
    """The generators `rng_state` saved, whichever device their tensors were loaded onto: torch's
    setters take CPU byte tensors only. CUDA states are restored for the devices visible now (a trial
    sees the one it reserved)."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        for index, device_state in zip(range(torch.cuda.device_count()), state["cuda"]):
            torch.cuda.set_rng_state(device_state.cpu(), index)


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
        for name, source in (extra_files or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        for path in (staging / TRAINING_STATE, staging / BEST_MODEL):
            _sync(path)
        # meta.json last, with the sizes of the weights: a copy cut short (Ray persisting it to a full
        # disk, a node lost mid-upload) is told from a whole one by its sizes (load_checkpoint).
        sizes = {name: (staging / name).stat().st_size for name in (TRAINING_STATE, BEST_MODEL)}
        (staging / META).write_text(json.dumps({**meta, FILE_SIZES: sizes}, indent=1, default=str))
        _sync(staging / META)
    return folder


def _sync(path: Path) -> None:
    """The file's bytes on the disk before the folder is renamed into place: a crash leaves no empty file."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())


@dataclass
class Checkpoint:
    folder: Path
    meta: dict

    def training_state(self, device: torch.device | str = "cpu") -> dict:
        """What resuming needs, by the device contract (docs/architecture.md): the model's weights on
        `device`; everything else on the CPU. RNG states, counters and history are read there (torch's
        generators take CPU byte tensors only), and the optimizer's state goes where
        `Optimizer.load_state_dict` puts it (its step counts stay on the CPU unless it is fused)."""
        state = self._load(TRAINING_STATE)
        state["model"] = {name: tensor.to(device) for name, tensor in state["model"].items()}
        return state

    def best_model(self) -> dict:
        """The best epoch's trainable weights (the frozen encoder blocks left out), on the CPU."""
        return self._load(BEST_MODEL)

    def _load(self, name: str) -> dict:
        with reading(self.folder / name, DAMAGED):
            return torch.load(self.folder / name, map_location="cpu", weights_only=True)


DAMAGED = "a damaged checkpoint: nothing can continue from it; train the configuration again"


def load_checkpoint(folder: Path) -> Checkpoint:
    folder = Path(folder)
    missing = [name for name in (TRAINING_STATE, BEST_MODEL, META) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: not a checkpoint (missing {', '.join(missing)})")
    with reading(folder / META, DAMAGED):
        meta = json.loads((folder / META).read_text())
    for name, size in meta.get(FILE_SIZES, {}).items():
        found = (folder / name).stat().st_size
        if found != size:
            raise InputError(f"{folder / name}: cut short ({found} of {size} bytes): {DAMAGED}")
    return Checkpoint(folder, meta)


def checkpoint_epoch(folder: Optional[Path]) -> int:
    """The epoch a whole checkpoint folder holds; -1 for none, or one missing a file."""
    try:
        return load_checkpoint(folder).meta["epoch"] if folder is not None else -1
    except (InputError, OSError, ValueError, KeyError, TypeError):
        return -1


def resume_point(candidates: list[Optional[Path]], epochs: int) -> Optional[Path]:
    """The newest whole checkpoint among `candidates` with epochs left to train; None: start afresh.

    A checkpoint of the last epoch is passed over: nothing is left to train from it (it keeps no
    optimizer state), and the test evaluation that ends a training belongs to the run that trains
    that epoch. One rule for `orch train` and for every trial."""
    usable = [(epoch, folder) for folder in candidates if 0 <= (epoch := checkpoint_epoch(folder)) < epochs]
    return max(usable, key=lambda item: item[0])[1] if usable else None
