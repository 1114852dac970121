"""A plan run as Ray Tune trials, the driver recording them in MLflow: what `orch run` and `orch resume`
do once their settings are resolved (orchestrator.settings).

Layout of one invocation under `ray.storage` (a folder, a shared mount or a bucket: orchestrator.storage):

    <storage>/<name>/<invocation>/orch.yaml     the resolved config (what `orch resume` re-reads)
    <storage>/<name>/<invocation>/plan.json     the plan
    <storage>/<name>/<invocation>/<study>/      Ray Tune's experiment folder(s): trials, checkpoints

Each study (orchestrator.cluster.studies) is one Tuner, run one after another; a resumed
invocation's studies are rebuilt from orch's own records, never from Ray Tune's pickled state.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from pathlib import Path

from rich.console import Console

from orchestrator.cluster import auth, preflight
from orchestrator.cluster.callbacks import DISK_FULL, LiveTable, MlflowRecorder, StopWhenDiskFull, trial_id
from orchestrator.cluster.trainable import remove_work_folders
from orchestrator.credentials import masked
from orchestrator.cluster.studies import (Study, check_room_to_resume, resume_studies, stored_checkpoints, studies_of,
                                          trial_done)
from orchestrator.experiment.keys import apply_overrides
from orchestrator.experiment.loader import dump_resolved
from orchestrator.experiment.plan import Plan, max_concurrent_trials
from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.lease import DriverLease, refuse_a_live_driver
from orchestrator.reporting.tables import cell_table, sort_rows
from orchestrator.settings import RunSettings
from orchestrator.storage import save_invocation
from orchestrator.tracking.cost import log_totals
from orchestrator.tracking.names import TAG_TRIAL
from orchestrator.tracking.provenance import describe_experiment, log_provenance, prepared_dataset, standard_tags
from orchestrator.tracking.reader import cell_rows
from orchestrator.tracking.store import store_path
from orchestrator.tracking.writer import Tracker
from trainers import determinism
from trainers.config import selection_metric
from trainers.errors import DiskFull, InputError, disk_full

INTERRUPTED = "interrupted (Ctrl-C) before this run ended"


def trainer_base(config: ExperimentConfig) -> dict:
    """The trainer config every trial starts from, with paths made absolute (trials run elsewhere) and
    train.device the one its reservation gives it (orchestrator.cluster.trainable.reserved_device), as MLflow records it."""
    base = config.trainer_config({}).model_dump(mode="json")
    base["train"]["device"] = "cuda" if config.resources.gpu > 0 else "cpu"
    base["data"]["prepared"] = str(Path(base["data"]["prepared"]).resolve())
    if base["data"]["cache_dir"]:
        base["data"]["cache_dir"] = str(Path(base["data"]["cache_dir"]).resolve())
    return base


def _scheduler(config: ExperimentConfig, metric: str, mode: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    s = config.scheduler
    if s.kind == "asha":
        return ASHAScheduler(metric=metric, mode=mode, max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, time_attr="epoch")
    if s.kind == "median":
        return MedianStoppingRule(metric=metric, mode=mode, grace_period=s.grace_period, time_attr="epoch")
    return FIFOScheduler()


def _tuner(settings: RunSettings, study: Study, trainable, callbacks: list, stopper: StopWhenDiskFull):
    """A new Tuner for `study`, writing under the invocation folder through the storage's filesystem."""
    from ray import tune

    config = settings.config
    search_alg, samples = None, 1
    if study.resumed is not None:
        param_space: dict = {"resumed": tune.grid_search(study.resumed)}  # trainable.trial_params reads it
    else:
        param_space = {"cell": tune.grid_search(study.cells)}
        if config.search is not None:
            samples = study.samples or config.search.num_samples
            space = {key: dimension.tune_domain() for key, dimension in config.search.space.items()}
            if config.search.algorithm == "optuna":
                from ray.tune.search.optuna import OptunaSearch

                search_metric, search_mode = selection_metric(config.search.metric, config.search.mode)
                search_alg = OptunaSearch(metric=search_metric, mode=search_mode, seed=config.train.seed)
                param_space = {"cell": study.cells[0], "search": space}
            else:
                param_space["search"] = space
    storage_path, storage_filesystem = settings.storage.for_ray(settings.folder)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=samples, search_alg=search_alg,
                                    scheduler=_scheduler(config, settings.metric, settings.mode),
                                    max_concurrent_trials=max_concurrent_trials(config),
                                    reuse_actors=True,  # the next trial runs in a finished one's worker: no re-import
                                    # a trial's Ray name and folder: its training id, as everywhere else
                                    trial_name_creator=trial_id, trial_dirname_creator=trial_id),
        run_config=tune.RunConfig(
            name=study.name, storage_path=storage_path, storage_filesystem=storage_filesystem, verbose=0,
            callbacks=callbacks, stop=stopper,
            failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
            # The newest: every checkpoint also holds the best weights so far (trainers.checkpoint).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=config.ray.keep_checkpoints)),
    )


def _init_ray(settings: RunSettings) -> None:
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's own banners off: the live table is the display
    if ray.is_initialized():
        return
    auth.prepare(settings.ray_address)  # a fresh token for a Ray started here, the environment's for a join
    # A cluster's workers get the environment reproducible arithmetic needs (trainers.determinism) from the
    # job; a local Ray's inherit this process's.
    ray.init(address=settings.ray_address, log_to_driver=False, include_dashboard=False,
             configure_logging=True, logging_level="ERROR", runtime_env={"env_vars": determinism.environment()})
    for handler in logging.getLogger("ray").handlers:
        handler.addFilter(_not_said_by_orch)


def _not_said_by_orch(record: logging.LogRecord) -> bool:
    """Ray's lines that orch says better stay off the terminal: a full disk's tracebacks (a trial's, its
    experiment state's; orch says it in one line, callbacks.StopWhenDiskFull, and the trial's error file
    keeps the whole text) and "Trials did not complete" (the table and `failed <trial>: ...` say which)."""
    error = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()
    return disk_full(error) is None and "No space left on device" not in message and \
        not message.startswith("Trials did not complete")


def check_data(config: ExperimentConfig, plan: Plan) -> None:
    """Every grid cell's `data.prepared` (and the base's) is a prepared dataset: refused before Ray starts."""
    from trainers.data.prepared import check_prepared

    base = config.trainer_config({}).model_dump(mode="json")
    seen = set()
    for cell in plan.cells:
        data = apply_overrides(base, cell.overrides)["data"]
        if data["prepared"] not in seen:
            seen.add(data["prepared"])
            check_prepared(data, "data.prepared" + (f" (cell {cell.id})" if "data.prepared" in cell.overrides else ""))


def run_plan(settings: RunSettings, plan: Plan, console: Console) -> int:
    """Run (or, for an existing invocation, resume) every study of the plan; returns the exit code.

    The driver holds the invocation's lease while it runs (orchestrator.lease): a resume beside a
    live driver is refused before anything starts."""
    if settings.resuming:
        refuse_a_live_driver(settings.storage, settings.folder)
        check_room_to_resume(settings.storage, settings.folder)
    # An unreachable tracking server, bucket or cluster fails before any trial; a cluster open to all is said.
    for note in preflight.check_settings(settings):
        console.print(f"[yellow]note[/]: {note}", highlight=False)
    check_data(settings.config, plan)
    check_gpus(settings)
    # The store first: one that cannot be opened is refused before the invocation folder (its lease) is made.
    tracker = Tracker(settings.tracking_uri, settings.experiment, artifact_root=settings.storage,
                      journal=settings.journal)
    with DriverLease.acquire(settings.storage, settings.folder, f"orch {'resume' if settings.resuming else 'run'}"):
        try:
            return _run(settings, plan, console, tracker)
        finally:
            remove_work_folders(settings.run_key)


def check_gpus(settings: RunSettings) -> None:
    """The Ray cluster holds one trial's GPU: asked of Ray itself, once it is up (joined, or started
    here), and before the invocation's folder or any MLflow run exists. A Ray started here for a
    check that fails is shut down again. Skipped when nothing reserves a GPU, and for an autoscaling
    cluster (`ray.autoscaling`), whose GPU nodes arrive only once trials ask for them."""
    config = settings.config
    if config.resources.gpu <= 0 or config.ray.autoscaling:
        return
    import ray

    started = not ray.is_initialized()
    _init_ray(settings)
    try:
        preflight.check_cluster_gpus(config.resources.gpu, ray.cluster_resources(), settings.ray_address,
                                     settings.ray_source)
    except InputError:
        if started:
            ray.shutdown()
        raise


def _run(settings: RunSettings, plan: Plan, console: Console, tracker: Tracker) -> int:
    from ray import tune

    from orchestrator.cluster.trainable import FAIL_ONCE_ENV, train_trial

    config, storage = settings.config, settings.storage
    tracker.run_tags = standard_tags(f"orch run {config.name}")
    if not settings.resuming:
        save_invocation(storage, config.name, settings.invocation, dump_resolved(config),
                        json.dumps(plan.to_dict(), indent=1))
    base = trainer_base(config)
    cells = {cell.id: cell.overrides for cell in plan.cells}

    if settings.resuming and not tracker.flush():  # writes an earlier driver could not make, first and in order
        raise InputError(f"tracking.uri: the MLflow server {masked(settings.tracking_uri)} does not take the journaled writes "
                         f"of {settings.journal}; start it and resume again")
    tracker.repair_orphans()
    trial_runs = tracker.runs(invocation=settings.run_key, kind="trial")
    done = frozenset(run.data.tags[TAG_TRIAL] for run in trial_runs if trial_done(run))
    recorded = {run.data.tags[TAG_TRIAL]: int(run.data.metrics.get("epoch", 0)) for run in trial_runs}
    studies = resume_studies(settings, plan, trial_runs) if settings.resuming else studies_of(config, plan)
    stored = stored_checkpoints(storage, settings.folder, recorded) if settings.resuming else {}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, cells=cells, run_key=settings.run_key,
                             variants={d.id: d.overrides for d in plan.decode_variants}, finished=done,
                             storage=storage, stored=stored, fail_at=int(os.environ.get(FAIL_ONCE_ENV) or 0)),
        {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    parent = tracker.parent_run(settings.run_key, f"orch run {settings.invocation}",
                                {"orch.results": storage.uri(settings.folder), "orch.ray_address": settings.ray_address})
    dataset = prepared_dataset(base["data"]["prepared"])
    if not settings.resuming:
        log_provenance(tracker, parent, dump_resolved(config), plan.to_dict(), dataset)
        describe_experiment(tracker, config.name, config.trainer, config.eval.select_by)
    recorder = MlflowRecorder(tracker, parent, settings.run_key, base, cells, {d.id: d.params for d in plan.decode_variants},
                              {d.id: d.overrides for d in plan.decode_variants}, plan.reference_variant, dataset)
    callbacks = [recorder, LiveTable(plan, settings.metric, cells, base)]
    stopper = StopWhenDiskFull(recorder)

    console.print(f"ray: {settings.describe_ray()}", highlight=False)
    unfinished: list[str] = []
    status, reason = "FAILED", "the driver stopped"
    try:
        if studies:
            _init_ray(settings)
        for study in studies:
            grid = _tuner(settings, study, trainable, callbacks, stopper).fit()
            clean_ray_temp(study.name, [r.path.rsplit("/", 1)[-1] for r in grid])
            if recorder.disk_full:
                break
            # On Ctrl-C (SIGINT) Tune saves its state and returns early, its running trials unended.
            unfinished = [] if tracker.away and not tracker.settle() else \
                [run.info.run_name for run in tracker.runs(invocation=settings.run_key, kind="trial")
                 if run.info.status == "RUNNING"]
            if unfinished:
                break
        if recorder.disk_full:
            status, reason = "FAILED", recorder.disk_full
        elif unfinished:
            status, reason = "KILLED", INTERRUPTED
        else:
            status, reason = ("FAILED", "; ".join(recorder.failures.values())) if recorder.failures else ("FINISHED", "")
    except KeyboardInterrupt:
        status, reason = "KILLED", INTERRUPTED
        raise
    except Exception as error:  # noqa: BLE001 - only a full disk is translated; the rest goes on as it was
        where = disk_full(error)
        if where is None:
            raise
        full = DiskFull(where or storage.locate(settings.folder))
        status, reason = "FAILED", str(full)
        raise full from None
    finally:
        if not tracker.away or tracker.settle():
            if reason.startswith(DISK_FULL):
                closing = ("FAILED", reason)
            else:
                closing = ("KILLED", INTERRUPTED if status == "KILLED" else "the driver stopped before this run ended")
            close_unfinished(tracker, settings.run_key, *closing)
            log_totals(tracker, parent, settings.run_key)
        if dataset is None:  # the trials prepared it themselves (auto-prepared data): it exists now
            tracker.log_input(parent, prepared_dataset(base["data"]["prepared"]))
        tracker.end(parent, status, reason)
    if tracker.away and not tracker.settle():
        if tracker.store_full:  # one line, exit 2: what waits where, and what replays it
            raise DiskFull(f"{store_path(settings.tracking_uri)}, the MLflow store ({len(tracker.journal.pending())} "
                           f"tracking writes wait in {tracker.journal.path}; once there is space, `orch status "
                           f"{config.name} --storage {shlex.quote(storage.locate())}` replays them)")
        console.print(f"[yellow]MLflow server {masked(settings.tracking_uri)} did not come back[/]: {len(tracker.journal.pending())} "
                      f"tracking write(s) are kept in order in {tracker.journal.path}; `orch status {config.name} "
                      f"--storage {shlex.quote(storage.locate())}` (or `orch resume`) replays them once it answers",
                      highlight=False)
        console.print(f"results: {storage.uri(settings.folder)}", highlight=False)
        return 1
    if recorder.disk_full:  # one line, exit 2 (orchestrator.cli); `orch resume` continues once there is space
        raise DiskFull(recorder.disk_full.removeprefix(DISK_FULL))
    rows = sort_rows(cell_rows(tracker, settings.run_key), config.eval.select_by)
    console.print(cell_table(rows, config.eval.select_by, f"{config.name} ({settings.invocation}): every ablation cell, "
                                                          f"best val {config.eval.select_by} first"))
    for training, failure in recorder.failures.items():
        console.print(f"[red]failed[/] {training}: {failure[:300]}", highlight=False)
    if unfinished:
        console.print(f"[yellow]interrupted[/]: {len(unfinished)} trial(s) did not finish; continue with "
                      f"`orch resume {shlex.quote(storage.locate(settings.folder))}`", highlight=False)
    console.print(f"results: {storage.uri(settings.folder)}\nMLflow: {masked(settings.tracking_uri)}\nnext: `orch report "
                  f"{config.name}`, `orch status {config.name}`, `orch ui`", highlight=False)
    return 1 if recorder.failures or unfinished else 0


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
