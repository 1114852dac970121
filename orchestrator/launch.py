"""`orch run` / `orch resume`: a plan becomes Ray Tune trials; the driver records them in MLflow.

Layout of one invocation under `ray.storage` (a folder, a shared mount or a bucket: orchestrator.storage):

    <storage>/<name>/<invocation>/orch.yaml     the resolved config (what `orch resume` re-reads)
    <storage>/<name>/<invocation>/plan.json     the plan
    <storage>/<name>/<invocation>/<study>/      Ray Tune's experiment folder(s): trials, checkpoints

A study is one Tuner: all grid cells at once, except with Optuna, which searches each cell in a
study of its own (one sampler per cell), one study after another.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console

from orchestrator.config import ExperimentConfig, dump_resolved
from orchestrator import preflight
from orchestrator.plan import Plan, max_concurrent_trials
from orchestrator.provenance import log_provenance
from orchestrator.single import tracking_uri
from orchestrator.status import cell_rows, cell_table, selection_metric, sort_rows
from orchestrator.storage import CONFIG_FILE, Storage, find_invocation, resolve, save_invocation
from orchestrator.tracking import TAG_TRIAL, Tracker
from orchestrator.tune_callbacks import LiveTable, MlflowRecorder
from trainers.errors import InputError

INTERRUPTED = "interrupted (Ctrl-C) before this run ended"


@dataclass
class Study:
    name: str  # Ray Tune experiment name, a folder under the invocation folder
    cells: list[str]


def studies_of(config: ExperimentConfig, plan: Plan) -> list[Study]:
    if config.search is not None and config.search.algorithm == "optuna" and len(plan.cells) > 1:
        return [Study(f"trials-{cell.id}", [cell.id]) for cell in plan.cells]
    return [Study("trials", [cell.id for cell in plan.cells])]


def trainer_base(config: ExperimentConfig) -> dict:
    """The trainer config every trial starts from, with paths made absolute (trials run elsewhere)."""
    base = config.trainer_config({}).model_dump(mode="json")
    base["data"]["prepared"] = str(Path(base["data"]["prepared"]).resolve())
    if base["data"]["cache_dir"]:
        base["data"]["cache_dir"] = str(Path(base["data"]["cache_dir"]).resolve())
    return base


def _search_space(config: ExperimentConfig) -> dict:
    from ray import tune

    makers = {"uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
              "int": lambda a: tune.randint(a[0], a[1] + 1), "choice": lambda a: tune.choice(list(a))}
    return {key: makers[dim.kind](dim.args) for key, dim in config.search.space.items()}


def _scheduler(config: ExperimentConfig, metric: str, mode: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    s = config.scheduler
    if s.kind == "asha":
        return ASHAScheduler(metric=metric, mode=mode, max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, time_attr="epoch")
    if s.kind == "median":
        return MedianStoppingRule(metric=metric, mode=mode, grace_period=s.grace_period, time_attr="epoch")
    return FIFOScheduler()


def _tuner(config: ExperimentConfig, study: Study, storage: Storage, folder: str, trainable, callbacks: list):
    """A new Tuner for `study`, writing under `folder` (relative to the storage) through its filesystem."""
    from ray import tune

    metric, mode = selection_metric(config.eval.select_by)
    param_space: dict = {"cell": tune.grid_search(study.cells)}
    search_alg, samples = None, 1
    if config.search is not None:
        samples = config.search.num_samples
        space = _search_space(config)
        if config.search.algorithm == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_metric, search_mode = selection_metric(config.search.metric, config.search.mode)
            search_alg = OptunaSearch(metric=search_metric, mode=search_mode, seed=config.train.seed)
            param_space = {"cell": study.cells[0], "search": space}
        else:
            param_space["search"] = space
    storage_path, storage_filesystem = storage.for_ray(folder)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=samples, search_alg=search_alg,
                                    scheduler=_scheduler(config, metric, mode),
                                    max_concurrent_trials=max_concurrent_trials(config),
                                    reuse_actors=True,  # the next trial runs in a finished one's worker: no re-import
                                    trial_name_creator=lambda t: f"{t.config['cell']}-{t.trial_id}",
                                    trial_dirname_creator=lambda t: f"{t.config['cell']}-{t.trial_id}"),
        run_config=tune.RunConfig(
            name=study.name, storage_path=storage_path, storage_filesystem=storage_filesystem, verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
            # The newest: every checkpoint also holds the best weights so far (trainers.checkpoint).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=config.ray.keep_checkpoints)),
    )


def _init_ray(config: ExperimentConfig, address: Optional[str]) -> None:
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's own banners off: the live table is the display
    if ray.is_initialized():
        return
    ray.init(address=address or config.ray.address or None, log_to_driver=False, include_dashboard=False,
             configure_logging=True, logging_level="ERROR")


def run_plan(config: ExperimentConfig, plan: Plan, console: Console, *, address: Optional[str] = None,
             invocation: Optional[str] = None) -> int:
    """Run (or, given an existing invocation, resume) every study of the plan; returns the exit code."""
    from ray import tune

    from orchestrator.trainable import FAIL_ONCE_ENV, train_trial

    preflight.check(config, address)  # an unreachable tracking server, bucket or cluster fails before any trial
    storage = resolve(config.ray.storage)
    resuming = invocation is not None
    invocation = invocation or time.strftime("run-%Y%m%d-%H%M%S")
    folder = f"{config.name}/{invocation}"  # relative to the storage
    if not resuming:
        save_invocation(storage, config.name, invocation, dump_resolved(config), json.dumps(plan.to_dict(), indent=1))
    metric, _ = selection_metric(config.eval.select_by)
    base = trainer_base(config)
    cells = {cell.id: cell.overrides for cell in plan.cells}
    variants = {d.id: d.overrides for d in plan.decode_variants}

    uri, experiment = tracking_uri(config), config.tracking.experiment or config.name
    tracker = Tracker(uri, experiment, artifact_root=storage.setting)
    tracker.repair_orphans()
    run_key = f"{config.name}/{invocation}"
    trial_runs = tracker.runs(invocation=run_key, kind="trial")
    finished = frozenset(run.data.tags[TAG_TRIAL] for run in trial_runs if run.info.status == "FINISHED")
    recorded = {run.data.tags[TAG_TRIAL]: int(run.data.metrics.get("epoch", 0)) for run in trial_runs}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, cells=cells, variants=variants, finished=finished,
                             storage=storage, stored=stored_checkpoints(storage, folder, recorded) if resuming else {},
                             fail_at=int(os.environ.get(FAIL_ONCE_ENV) or 0)),
        {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    parent = tracker.parent_run(run_key, f"orch run {invocation}",
                                {"orch.results": storage.uri(folder), "orch.ray_address": config.ray.address or "local"})
    if not resuming:
        log_provenance(tracker, parent, dump_resolved(config), plan.to_dict())
    callbacks = [MlflowRecorder(uri, experiment, storage.setting, parent, run_key, base, cells,
                                {d.id: d.params for d in plan.decode_variants}),
                 LiveTable(plan, metric, cells)]

    _init_ray(config, address)
    failures: list[str] = []
    unfinished: list[str] = []
    status, reason = "FAILED", "the driver stopped"
    try:
        for study in studies_of(config, plan):
            study_folder = f"{folder}/{study.name}"
            if resuming and storage.is_file(f"{study_folder}/tuner.pkl"):
                study_path, filesystem = storage.for_ray(study_folder)
                tuner = tune.Tuner.restore(study_path, trainable, resume_unfinished=True, resume_errored=True,
                                           storage_filesystem=filesystem)
            else:
                tuner = _tuner(config, study, storage, folder, trainable, callbacks)
            grid = tuner.fit()
            clean_ray_temp(study.name, [r.path.rsplit("/", 1)[-1] for r in grid])
            failures += [f"{r.path.rsplit('/', 1)[-1]}: {str(r.error).strip().splitlines()[-1][:300]}"
                         for r in grid if r.error is not None]
            # On Ctrl-C (SIGINT) Tune saves its state and returns early, its running trials unended.
            unfinished = [run.info.run_name for run in tracker.runs(invocation=run_key, kind="trial")
                          if run.info.status == "RUNNING"]
            if unfinished:
                break
        if unfinished:
            status, reason = "KILLED", INTERRUPTED
        else:
            status, reason = ("FAILED", "; ".join(failures)) if failures else ("FINISHED", "")
    except KeyboardInterrupt:
        status, reason = "KILLED", INTERRUPTED
        raise
    finally:
        close_unfinished(tracker, run_key, "KILLED",
                         INTERRUPTED if status == "KILLED" else "the driver stopped before this run ended")
        tracker.end(parent, status, reason)
    rows = sort_rows(cell_rows(tracker, run_key), config.eval.select_by)
    console.print(cell_table(rows, config.eval.select_by, f"{config.name} ({invocation}): every ablation cell, "
                                                          f"best val {config.eval.select_by} first"))
    for failure in failures:
        console.print(f"[red]failed[/] {failure}", highlight=False)
    if unfinished:
        console.print(f"[yellow]interrupted[/]: {len(unfinished)} trial(s) did not finish; continue with "
                      f"`orch resume {shlex.quote(storage.locate(folder))}`", highlight=False)
    console.print(f"results: {storage.uri(folder)}\nMLflow: {uri}\nnext: `orch report {config.name}`, "
                  f"`orch status {config.name}`, `orch ui`", highlight=False)
    return 1 if failures or unfinished else 0


def stored_checkpoints(storage: Storage, folder: str, recorded: dict[str, int]) -> dict[str, list[str]]:
    """Trial id -> the checkpoint folders (relative to the storage) of its trial folder under the
    invocation `folder`, newest first, up to the epoch MLflow recorded.

    What a resumed trial may continue from when Tune's saved state, written every few seconds,
    lags behind the checkpoints the trials wrote before their driver was killed. A checkpoint of an
    epoch the driver never recorded is passed over: resuming there would leave that epoch out of
    the trial's MLflow history."""
    found: dict[str, list[tuple[int, str]]] = {}
    for meta in storage.find(folder, "meta.json"):
        parts = posixpath.relpath(meta, folder).split("/") if folder else meta.split("/")
        if len(parts) != 4 or not parts[2].startswith("checkpoint_"):
            continue  # <study>/<trial>/checkpoint_*/meta.json only, not the trainer's own files
        try:
            epoch = int(json.loads(storage.read_text(meta))["epoch"])
        except (InputError, ValueError, KeyError):
            continue  # a checkpoint cut short by the kill
        trial_id = parts[1].split("-", 1)[1]  # trial folders are <cell>-<trial id>
        if epoch <= recorded.get(trial_id, 0):
            found.setdefault(trial_id, []).append((epoch, posixpath.dirname(meta)))
    return {trial: [path for _, path in sorted(folders, reverse=True)] for trial, folders in found.items()}


def clean_ray_temp(study: str, trial_folders: list[str]) -> None:
    """Remove what Ray staged for a finished study in its session's temp folder on this node
    (`<session>/artifacts/<time>/<study>/`, which holds these trials' folders): the storage has
    everything kept, and Ray leaves the folder behind when the run ends."""
    from ray.train.constants import _get_ray_train_session_dir

    for staged in Path(_get_ray_train_session_dir()).glob(f"*/{study}"):
        if any((staged / kind / name).exists() for kind in ("driver_artifacts", "working_dirs")
               for name in trial_folders):
            shutil.rmtree(staged, ignore_errors=True)


def close_unfinished(tracker: Tracker, run_key: str, status: str, reason: str) -> None:
    """No run of this invocation stays RUNNING after the command, however it ended."""
    for run in tracker.runs(invocation=run_key):
        if run.info.status == "RUNNING" and run.data.tags.get("orch.kind") != "parent":
            tracker.end(run.info.run_id, status, reason)


def resume_invocation(name_or_run: str, storage_setting: str, console: Console) -> int:
    """`orch resume`: the invocation a run folder or URI names, or experiment `name`'s newest under
    `storage_setting`, continued with the config it was started with, on the storage it was found on."""
    from orchestrator.config import load_config
    from orchestrator.plan import make_plan

    storage, name, invocation = find_invocation(name_or_run, storage_setting)
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(storage.local(f"{name}/{invocation}/{CONFIG_FILE}", Path(scratch)), saved=True)
    config.ray.storage = storage.setting
    console.print(f"resuming {storage.uri(f'{name}/{invocation}')}", highlight=False)
    return run_plan(config, make_plan(config), console, invocation=invocation)
