"""The Ray Tune trainable: a plain function of `config` that trains one cell and reports each epoch.

It runs in a Ray worker, possibly on another node. It receives the resolved trainer config as a
plain dict (absolute paths), applies its cell's and its search sample's overrides, resumes from
the checkpoint Tune hands back after a failure, and calls `tune.report(metrics, checkpoint=...)`
once per epoch (docs/architecture.md, contract 10). MLflow is written by the driver, never here.

The driver imports this module only to hand `train_trial` to Ray, so torch and the trainer are
imported inside the functions, in the trial's worker: the driver starts without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ray import tune

from orchestrator.experiment.keys import apply_overrides
from orchestrator.storage import Storage
from trainers.config import DecodeConfig, TrainerConfig
from trainers.errors import DiskFull, disk_full

if TYPE_CHECKING:
    from trainers.evaluation import DecodeVariant

FAIL_ONCE_ENV = "ORCH_FAIL_ONCE_AT_EPOCH"  # fault injection for tests: fail each trial once at this epoch
# Read by the driver and handed to every trial, so it reaches trials on a cluster the driver joined.


def trial_params(params: dict) -> dict:
    """`{cell, search?, trial?}` of a trial's Tune config: its own keys, or, for a trial `orch resume`
    starts again, the `resumed` entry its grid value holds (cell, search values and the key it continues)."""
    return params["resumed"] if "resumed" in params else params


def trial_key(params: dict, ray_trial_id: str) -> str:
    """A trial's identity in MLflow (`orch.trial`) and in its folder name: stable across resumes.

    A trial `orch resume` starts again carries the key of the trial it continues (`trial`); a grid
    trial without a search is its cell (one training per cell); a search sample is Ray's trial id."""
    params = trial_params(params)
    return params.get("trial") or (params["cell"] if "search" not in params else ray_trial_id)


def train_trial(params: dict, *, base: dict, cells: dict[str, dict], variants: dict[str, dict], run_key: str,
                finished: frozenset[str] = frozenset(), storage: Optional[Storage] = None,
                stored: Optional[dict[str, list[str]]] = None, fail_at: int = 0) -> None:
    """Tune's saved state can lag a SIGKILLed driver by seconds, so the driver of `orch resume` says
    what the storage holds: `finished`, the trials MLflow saw finish (not trained again), and
    `stored`, each trial's checkpoint folders on `storage` (relative to it), newest first.
    `fail_at`: the driver's FAIL_ONCE_ENV.

    The trial trains on what Ray reserved for it: its GPU (`cuda`), or the CPU with CUDA hidden."""
    assigned = _assigned_resources()
    hide_unreserved_gpus(assigned)  # before any trainer code touches CUDA
    from trainers.checkpoint import resume_point
    from trainers.training import run_training

    trial_id = trial_key(params, tune.get_context().get_trial_id())
    params = trial_params(params)
    if trial_id in finished:
        return
    overrides = {**cells[params["cell"]], **params.get("search", {}), "train.device": reserved_device(assigned)}
    config = TrainerConfig.model_validate(apply_overrides(base, overrides))
    decode_variants = decode_variants_of(config, variants)
    run_dir = Path(tune.get_context().get_trial_dir())
    meter = _meter(assigned)

    def report(result) -> None:
        if result.final:  # before the driver hears of the end: it logs the trial's model with this encoder
            _keep_random_encoder(work_dir, run_dir.parent)
        fields = meter.fields(result.metrics)
        with meter.checkpoint_io():  # Tune persists the checkpoint to the storage before it returns
            tune.report({**result.as_report(), **fields}, checkpoint=tune.Checkpoint.from_directory(str(result.checkpoint)))
        marker = run_dir / "injected_failure_done"
        if fail_at and result.epoch == fail_at and not result.final and not marker.exists():
            marker.write_text("1")
            raise RuntimeError(f"injected failure at epoch {result.epoch} ({FAIL_ONCE_ENV})")

    # The trainer works in a scratch folder: Ray copies the trial folder to the storage now and then,
    # and would copy a working checkpoint there too, whole or half-written.
    work_dir = work_folder(run_key, trial_id)
    checkpoint = tune.get_checkpoint()
    # Tune's checkpoint is read where it is (a local storage) or from a temporary download it removes.
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as restored:
        try:
            candidates = [Path(restored) if restored else None,
                          _stored_checkpoint(storage, (stored or {}).get(trial_id, []), work_dir, config.train.epochs)]
            resume_from = resume_point(candidates, config.train.epochs)
            run_training(config, work_dir, variants=decode_variants, on_epoch=report, resume_from=resume_from)
        except Exception as error:
            where = disk_full(error)
            if where is None:
                raise
            # One line for the driver, which stops the run on it (callbacks.MlflowRecorder), instead of a
            # traceback that retries would repeat on the same full disk.
            raise DiskFull(where or tune.get_context().get_storage().trial_fs_path) from None
        finally:
            meter.close()
            _keep_random_encoder(work_dir, run_dir.parent)
            shutil.rmtree(work_dir, ignore_errors=True)


def work_folder(run_key: str, trial: str) -> Path:
    """The trial's scratch folder, named after its invocation and trial: a later attempt of the trial
    (a retry, a resume) finds what a killed one left there and starts it clean, and the driver
    removes its invocation's folders on this node when it ends (`remove_work_folders`)."""
    folder = _work_root(run_key) / trial
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def remove_work_folders(run_key: str) -> None:
    """Every scratch folder of the invocation `run_key` on this node, whatever ended its trials."""
    shutil.rmtree(_work_root(run_key), ignore_errors=True)


def _work_root(run_key: str) -> Path:
    return Path(tempfile.gettempdir()) / f"orch-work-{hashlib.sha256(run_key.encode()).hexdigest()[:12]}"


def _assigned_resources() -> dict[str, float]:
    """What Ray reserved for this trial: {"CPU": 4.0, "GPU": 0.5}; no "GPU" key when it reserved none."""
    import ray

    return ray.get_runtime_context().get_assigned_resources()


def hide_unreserved_gpus(assigned: dict[str, float]) -> None:
    """A trial that reserved no GPU sees none: Ray sets CUDA_VISIBLE_DEVICES only for a task that has
    GPUs, so a 0-GPU trial would see every GPU of its node, and `train.device: auto` would put all of
    them on GPU 0, unreserved, beside the trials that did reserve it."""
    if assigned.get("GPU", 0.0) <= 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def reserved_device(assigned: dict[str, float]) -> str:
    """The trial's train.device: `cuda` when it reserved a GPU (a fraction or one), `cpu` when none."""
    return "cuda" if assigned.get("GPU", 0.0) > 0 else "cpu"


def _meter(assigned: dict[str, float]):
    """The trial's cost meter, with the devices Ray allocated to it."""
    from orchestrator.tracking.cost import TrialMeter

    return TrialMeter(gpus=assigned.get("GPU", 0.0), cpus=assigned.get("CPU", 1.0))


def _keep_random_encoder(work_dir: Path, study_dir: Path) -> None:
    """A random frozen encoder the trainer stored goes once into the study's folder (the trials'
    checkpoints' grandparent, where trainers.checkpoint looks for it); the trials share it."""
    for stored in work_dir.glob("frozen_encoder-*.safetensors"):
        if not (study_dir / stored.name).exists():
            staging = study_dir / f".{stored.name}.{os.getpid()}.partial"
            shutil.copyfile(stored, staging)
            os.replace(staging, study_dir / stored.name)


def decode_variants_of(config: TrainerConfig, variants: dict[str, dict]) -> list[DecodeVariant]:
    """Each variant's dotted `decode.*` values applied to the trial's own decode config."""
    from trainers.evaluation import DecodeVariant

    trial = config.model_dump(mode="json")
    return [DecodeVariant(vid, DecodeConfig.model_validate(apply_overrides(trial, dotted)["decode"]))
            for vid, dotted in variants.items()]


def _stored_checkpoint(storage: Optional[Storage], folders: list[str], run_dir: Path, epochs: int) -> Optional[Path]:
    """The newest whole checkpoint of `folders` (newest first) with epochs left to train, as a local
    folder: on a bucket, each is downloaded next to the trial until one will do."""
    from trainers.checkpoint import checkpoint_epoch

    if storage is None:
        return None
    for folder in folders:
        local = storage.local(folder, run_dir / "stored_checkpoint")
        if 0 <= checkpoint_epoch(local) < epochs:
            return local
        if not storage.is_local:
            shutil.rmtree(local, ignore_errors=True)
    return None
