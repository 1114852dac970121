"""The studies of an invocation: the Tuners its trials run in, one after another.

A study is one Tuner: all grid cells at once, except with Optuna, which searches each cell in a
study of its own (one sampler per cell). A resume continues an invocation from orch's own records,
never from Ray Tune's saved state: Tune's `tuner.pkl` and `experiment_state-*.json` are pickles,
and a results folder is often shared, so unpickling them would run whatever a colleague (or an
intruder) put there. A resume reads
`orch.yaml`, MLflow's view of which trials finished, and the trainer's checkpoints (state dicts
read with `weights_only`), and starts fresh Tuners (`resume-<time>` studies) whose trials carry the
identity of the trials they continue, so they log to the same MLflow runs.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import time
from dataclasses import dataclass
from typing import Optional

import yaml

from orchestrator.experiment.plan import Plan
from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.settings import RunSettings
from orchestrator.storage import Storage
from orchestrator.tracking.names import TAG_REASON, TAG_TRIAL
from trainers.errors import DiskFull, InputError


STOPPED_EARLY = "stopped early by the scheduler"  # a KILLED trial run the scheduler ended: done, never resumed


@dataclass
class Study:
    name: str  # Ray Tune experiment name, a folder under the invocation folder
    cells: list[str]
    samples: Optional[int] = None  # new search samples to draw (None: the config's num_samples)
    resumed: Optional[list[dict]] = None  # resume: explicit trials {trial, cell, search} instead of the grid


def studies_of(config: ExperimentConfig, plan: Plan) -> list[Study]:
    if config.search is not None and config.search.algorithm == "optuna" and len(plan.cells) > 1:
        return [Study(f"trials-{cell.id}", [cell.id]) for cell in plan.cells]
    return [Study("trials", [cell.id for cell in plan.cells])]


def trial_done(run) -> bool:
    """A trial run that a resume leaves alone: it finished, or the scheduler stopped it early."""
    return run.info.status == "FINISHED" or \
        (run.info.status == "KILLED" and run.data.tags.get(TAG_REASON, "").startswith(STOPPED_EARLY))


def resume_studies(settings: RunSettings, plan: Plan, trial_runs: list) -> list[Study]:
    """The studies that continue an invocation from what MLflow holds, without Ray Tune's saved state.

    Every trial MLflow knows and that is not done is started again under its own identity (its
    `orch.trial` tag: the same MLflow run, the checkpoints of its trial folder); a training of the
    plan that never got a run (the driver died first) starts afresh, once per missing sample. Search
    values of a continued trial come back from its run's params (they round-trip through YAML)."""
    config = settings.config
    stamp = time.strftime("%Y%m%d-%H%M%S")
    known = {run.data.tags[TAG_TRIAL]: run for run in trial_runs}
    resumed: list[dict] = []
    for trial, run in sorted(known.items()):
        if trial_done(run):
            continue
        cell = run.data.params.get("orch.cell")
        if cell not in {c.id for c in plan.cells}:
            raise InputError(f"{settings.storage.uri(settings.folder)}: MLflow's trial run {trial} names cell {cell!r}, "
                             f"which plan.json does not hold: this run cannot be resumed")
        spec = {"trial": trial, "cell": cell}
        if config.search is not None:
            spec["search"] = {key: yaml.safe_load(run.data.params[key]) for key in plan.search_space
                              if key in run.data.params}
        resumed.append(spec)
    studies = []
    if config.search is None:  # a grid trial's identity is its cell: a missing one is simply added
        resumed += [{"trial": cell.id, "cell": cell.id} for cell in plan.cells if cell.id not in known]
    if resumed:
        studies.append(Study(f"resume-{stamp}", [spec["cell"] for spec in resumed], resumed=resumed))
    if config.search is not None:
        for cell in plan.cells:
            missing = plan.samples_per_cell - sum(run.data.params.get("orch.cell") == cell.id for run in known.values())
            if missing > 0:
                studies.append(Study(f"resume-{stamp}-{cell.id}", [cell.id], samples=missing))
    return studies


def stored_checkpoints(storage: Storage, folder: str, recorded: dict[str, int]) -> dict[str, list[str]]:
    """Trial key -> the checkpoint folders (relative to the storage) of its trial folders under the
    invocation `folder` (in any study: the first run's and every resume's), newest first, up to the
    epoch MLflow recorded.

    A checkpoint of an epoch the driver never recorded is passed over: resuming there would leave
    that epoch out of the trial's MLflow history. Only meta.json (JSON) is read here; the trial
    loads the weights with `weights_only`."""
    found: dict[str, list[tuple[int, str]]] = {}
    for meta in storage.find(folder, "meta.json"):
        parts = posixpath.relpath(meta, folder).split("/") if folder else meta.split("/")
        if len(parts) != 4 or not parts[2].startswith("checkpoint_"):
            continue  # <study>/<trial>/checkpoint_*/meta.json only, not the trainer's own files
        try:
            epoch = int(json.loads(storage.read_text(meta))["epoch"])
        except (InputError, ValueError, KeyError, TypeError):
            continue  # a checkpoint cut short by the kill
        trial_id = parts[1].split("-", 1)[-1]  # trial folders are <cell>-<trial key>, or <cell> for a grid
        if epoch <= recorded.get(trial_id, 0):
            found.setdefault(trial_id, []).append((epoch, posixpath.dirname(meta)))
    return {trial: [path for _, path in sorted(folders, reverse=True)] for trial, folders in found.items()}


def check_room_to_resume(storage: Storage, folder: str) -> None:
    """A resume writes a checkpoint per trial and epoch: on a local storage with less space free than the
    largest checkpoint the invocation holds, it is refused in one line before anything starts or is made
    (`disk full: PATH (N bytes free; ...)`). A bucket's space is not known here: it is not checked."""
    if not storage.is_local:
        return
    sizes = [sum(entry.stat().st_size for entry in os.scandir(storage.path(posixpath.dirname(meta))) if entry.is_file())
             for meta in storage.find(folder, "meta.json")]
    need, free = max(sizes, default=0), shutil.disk_usage(storage.path(folder)).free
    if free < need:
        raise DiskFull(f"{storage.path(folder)} ({free:,} bytes free; a checkpoint of this run takes {need:,})")
