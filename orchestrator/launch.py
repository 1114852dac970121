"""`orch run` / `orch resume`: a plan becomes Ray Tune trials; the driver records them in MLflow.

Layout of one invocation under `ray.storage` (a folder, a shared mount or a bucket: orchestrator.storage):

    <storage>/<name>/<invocation>/orch.yaml     the resolved config (what `orch resume` re-reads)
    <storage>/<name>/<invocation>/plan.json     the plan
    <storage>/<name>/<invocation>/<study>/      Ray Tune's experiment folder(s): trials, checkpoints

A study is one Tuner: all grid cells at once, except with Optuna, which searches each cell in a
study of its own (one sampler per cell), one study after another.

`orch resume` never reads Ray Tune's saved state (`tuner.pkl`, `experiment_state-*.json`): both are
pickles, and a results folder is often shared, so unpickling them would run whatever a colleague (or
an intruder) put there. It rebuilds the run from orch's own files instead: `orch.yaml`, MLflow's
view of which trials finished, and the trainer's checkpoints (state dicts read with `weights_only`),
and it starts fresh Tuners (`resume-<time>` studies) whose trials carry the identity of the trials
they continue, so they log to the same MLflow runs.
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

import yaml
from rich.console import Console

from orchestrator.config import ExperimentConfig, dump_resolved
from orchestrator import preflight
from orchestrator.plan import Plan, max_concurrent_trials
from orchestrator.cost import log_totals
from orchestrator.provenance import log_provenance, prepared_dataset, standard_tags
from orchestrator.single import tracking_uri
from orchestrator.status import cell_rows, cell_table, sort_rows
from orchestrator.storage import CONFIG_FILE, Storage, driver_folder, find_invocation, resolve, save_invocation
from orchestrator.tracking import JOURNAL_FILE, TAG_REASON, TAG_TRIAL, Tracker
from orchestrator.tune_callbacks import LiveTable, MlflowRecorder, trial_id
from trainers.config import selection_metric
from trainers.errors import InputError

INTERRUPTED = "interrupted (Ctrl-C) before this run ended"
STOPPED_EARLY = "stopped early by the scheduler"  # a KILLED trial run the scheduler ended: done, never resumed
LOCAL_RAY = "local"  # ray.init's address for "start a new local Ray, whatever else runs on this machine"


@dataclass(frozen=True)
class Launch:
    """Everything `orch run` and `orch resume` need, resolved once from the config at the edge: the
    launcher, the tracker and resume read this, never the loose config keys again."""

    config: ExperimentConfig
    plan: Plan
    storage: Storage
    invocation: str  # run-YYYYmmdd-HHMMSS, the folder under <storage>/<name>/
    ray_address: str  # "local" (a fresh Ray for this run), "auto", host:port or ray://host:port
    ray_source: str  # the setting that named the address ("" for local)
    tracking_uri: str
    experiment: str  # the MLflow experiment
    metric: str  # the reported metric that ranks trials (val_CIDEr, val_loss, ...)
    mode: str  # max or min
    resuming: bool

    @classmethod
    def resolve(cls, config: ExperimentConfig, plan: Plan, address: Optional[str] = None,
                invocation: Optional[str] = None, storage: Optional[Storage] = None, command: str = "run") -> "Launch":
        """`invocation` given: a resume of it. `command` names a new one: run-... (`orch run`) or train-..."""
        ray_address, source = ray_address_of(config, address)
        metric, mode = selection_metric(config.eval.select_by)
        return cls(config, plan, storage or resolve(config.ray.storage),
                   invocation or time.strftime(f"{command}-%Y%m%d-%H%M%S"),
                   ray_address, source, tracking_uri(config), config.tracking.experiment or config.name, metric, mode,
                   invocation is not None)

    @property
    def folder(self) -> str:
        """The invocation's folder, relative to the storage."""
        return f"{self.config.name}/{self.invocation}"

    @property
    def driver_folder(self) -> Path:
        """The invocation's folder on this machine: the run folder itself on a local storage, else a
        local one of its own (orchestrator.storage.driver_folder)."""
        return driver_folder(self.storage.setting) / self.folder

    @property
    def journal(self) -> Path:
        """The run's journal of tracking writes the server did not take, on this machine's disk."""
        return self.driver_folder / JOURNAL_FILE

    @property
    def run_key(self) -> str:
        """The `orch.invocation` tag of its MLflow runs."""
        return self.folder

    def describe_ray(self) -> str:
        if self.ray_address == LOCAL_RAY:
            return "ray: a new local Ray for this run (ray.address: null)"
        return f"ray: joining {self.ray_address} ({self.ray_source})"


def ray_address_of(config: ExperimentConfig, address: Optional[str]) -> tuple[str, str]:
    """The address ray.init gets and the setting that named it.

    `ray.address: null` means a new local Ray for this run: ray.init(address="local"), never
    ray.init(address=None), which joins the cluster Ray's `ray_current_cluster` file names (a dead one
    after a killed `ray start --head` hangs the run; a live one runs the ablation on it unasked).
    Joining is `auto`, an address, `--address`, or RAY_ADDRESS exported on purpose (Slurm, RayJob)."""
    if address:
        return address, "--address"
    if config.ray.address:
        return config.ray.address, "ray.address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return LOCAL_RAY, ""


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


def trainer_base(config: ExperimentConfig) -> dict:
    """The trainer config every trial starts from, with paths made absolute (trials run elsewhere) and
    train.device the one its reservation gives it (orchestrator.trainable.reserved_device), as MLflow records it."""
    base = config.trainer_config({}).model_dump(mode="json")
    base["train"]["device"] = "cuda" if config.resources.gpu > 0 else "cpu"
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


def _tuner(launch: Launch, study: Study, trainable, callbacks: list):
    """A new Tuner for `study`, writing under the invocation folder through the storage's filesystem."""
    from ray import tune

    config = launch.config
    search_alg, samples = None, 1
    if study.resumed is not None:
        param_space: dict = {"resumed": tune.grid_search(study.resumed)}  # trainable.trial_params reads it
    else:
        param_space = {"cell": tune.grid_search(study.cells)}
        if config.search is not None:
            samples = study.samples or config.search.num_samples
            space = _search_space(config)
            if config.search.algorithm == "optuna":
                from ray.tune.search.optuna import OptunaSearch

                search_metric, search_mode = selection_metric(config.search.metric, config.search.mode)
                search_alg = OptunaSearch(metric=search_metric, mode=search_mode, seed=config.train.seed)
                param_space = {"cell": study.cells[0], "search": space}
            else:
                param_space["search"] = space
    storage_path, storage_filesystem = launch.storage.for_ray(launch.folder)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=samples, search_alg=search_alg,
                                    scheduler=_scheduler(config, launch.metric, launch.mode),
                                    max_concurrent_trials=max_concurrent_trials(config),
                                    reuse_actors=True,  # the next trial runs in a finished one's worker: no re-import
                                    # a trial's Ray name and folder: its training id, as everywhere else
                                    trial_name_creator=trial_id, trial_dirname_creator=trial_id),
        run_config=tune.RunConfig(
            name=study.name, storage_path=storage_path, storage_filesystem=storage_filesystem, verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
            # The newest: every checkpoint also holds the best weights so far (trainers.checkpoint).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=config.ray.keep_checkpoints)),
    )


def _init_ray(launch: Launch) -> None:
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's own banners off: the live table is the display
    if ray.is_initialized():
        return
    ray.init(address=launch.ray_address, log_to_driver=False, include_dashboard=False,
             configure_logging=True, logging_level="ERROR")


def check_data(config: ExperimentConfig, plan: Plan) -> None:
    """Every grid cell's `data.prepared` (and the base's) is a prepared dataset: refused before Ray starts."""
    from orchestrator.keys import apply_overrides
    from trainers.data.prepared import check_prepared

    base = config.trainer_config({}).model_dump(mode="json")
    seen = set()
    for cell in plan.cells:
        data = apply_overrides(base, cell.overrides)["data"]
        if data["prepared"] not in seen:
            seen.add(data["prepared"])
            check_prepared(data, "data.prepared" + (f" (cell {cell.id})" if "data.prepared" in cell.overrides else ""))


def run_plan(config: ExperimentConfig, plan: Plan, console: Console, *, address: Optional[str] = None,
             invocation: Optional[str] = None, storage: Optional[Storage] = None) -> int:
    """Run (or, given an existing invocation, resume) every study of the plan; returns the exit code."""
    launch = Launch.resolve(config, plan, address, invocation, storage)  # resolved once, read by all below
    preflight.check_launch(launch)  # an unreachable tracking server, bucket or cluster fails before any trial
    check_data(config, plan)
    check_gpus(launch)
    return _run(launch, console)


def check_gpus(launch: Launch) -> None:
    """The Ray cluster holds one trial's GPU: asked of Ray itself, once it is up (joined, or started
    here), and before the invocation's folder or any MLflow run exists. A Ray started here for a
    check that fails is shut down again. Skipped when nothing reserves a GPU, and for an autoscaling
    cluster (`ray.autoscaling`), whose GPU nodes arrive only once trials ask for them."""
    config = launch.config
    if config.resources.gpu <= 0 or config.ray.autoscaling:
        return
    import ray

    started = not ray.is_initialized()
    _init_ray(launch)
    try:
        preflight.check_cluster_gpus(config.resources.gpu, ray.cluster_resources(), launch.ray_address,
                                     launch.ray_source)
    except InputError:
        if started:
            ray.shutdown()
        raise


def _run(launch: Launch, console: Console) -> int:
    from ray import tune

    from orchestrator.trainable import FAIL_ONCE_ENV, train_trial

    config, plan, storage = launch.config, launch.plan, launch.storage
    # The store first: one that cannot be opened is refused before the invocation folder is made.
    tracker = Tracker(launch.tracking_uri, launch.experiment, artifact_root=storage.setting, journal=launch.journal)
    tracker.run_tags = standard_tags(f"orch run {config.name}")
    if not launch.resuming:
        save_invocation(storage, config.name, launch.invocation, dump_resolved(config),
                        json.dumps(plan.to_dict(), indent=1))
    base = trainer_base(config)
    cells = {cell.id: cell.overrides for cell in plan.cells}

    if launch.resuming and not tracker.flush():  # writes an earlier driver could not make, first and in order
        raise InputError(f"tracking.uri: the MLflow server {launch.tracking_uri} does not take the journaled writes "
                         f"of {launch.journal}; start it and resume again")
    tracker.repair_orphans()
    trial_runs = tracker.runs(invocation=launch.run_key, kind="trial")
    done = frozenset(run.data.tags[TAG_TRIAL] for run in trial_runs if trial_done(run))
    recorded = {run.data.tags[TAG_TRIAL]: int(run.data.metrics.get("epoch", 0)) for run in trial_runs}
    studies = resume_studies(launch, trial_runs) if launch.resuming else studies_of(config, plan)
    stored = stored_checkpoints(storage, launch.folder, recorded) if launch.resuming else {}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=base, cells=cells,
                             variants={d.id: d.overrides for d in plan.decode_variants}, finished=done,
                             storage=storage, stored=stored, fail_at=int(os.environ.get(FAIL_ONCE_ENV) or 0)),
        {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    parent = tracker.parent_run(launch.run_key, f"orch run {launch.invocation}",
                                {"orch.results": storage.uri(launch.folder), "orch.ray_address": launch.ray_address})
    dataset = prepared_dataset(base["data"]["prepared"])
    if not launch.resuming:
        log_provenance(tracker, parent, dump_resolved(config), plan.to_dict(), dataset)
    recorder = MlflowRecorder(launch.tracking_uri, launch.experiment, storage.setting, parent, launch.run_key, base,
                              cells, {d.id: d.params for d in plan.decode_variants},
                              {d.id: d.overrides for d in plan.decode_variants}, plan.reference_variant, dataset)
    recorder.share(tracker)  # one writer, one journal, in order
    callbacks = [recorder, LiveTable(plan, launch.metric, cells, base)]

    console.print(launch.describe_ray(), highlight=False)
    failures: list[str] = []
    unfinished: list[str] = []
    status, reason = "FAILED", "the driver stopped"
    try:
        if studies:
            _init_ray(launch)
        for study in studies:
            grid = _tuner(launch, study, trainable, callbacks).fit()
            clean_ray_temp(study.name, [r.path.rsplit("/", 1)[-1] for r in grid])
            failures += [f"{r.path.rsplit('/', 1)[-1]}: {str(r.error).strip().splitlines()[-1][:300]}"
                         for r in grid if r.error is not None]
            # On Ctrl-C (SIGINT) Tune saves its state and returns early, its running trials unended.
            unfinished = [] if tracker.away and not settle(tracker) else \
                [run.info.run_name for run in tracker.runs(invocation=launch.run_key, kind="trial")
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
        if not tracker.away or settle(tracker):
            close_unfinished(tracker, launch.run_key, "KILLED",
                             INTERRUPTED if status == "KILLED" else "the driver stopped before this run ended")
            log_totals(tracker, parent, launch.run_key)
        if dataset is None:  # the trials prepared it themselves (auto-prepared data): it exists now
            tracker.log_input(parent, prepared_dataset(base["data"]["prepared"]))
        tracker.end(parent, status, reason)
    if tracker.away and not settle(tracker):
        console.print(f"[yellow]MLflow server {launch.tracking_uri} did not come back[/]: {len(tracker.journal.pending())} "
                      f"tracking write(s) are kept in order in {tracker.journal.path}; `orch status {config.name} "
                      f"--storage {shlex.quote(storage.locate())}` (or `orch resume`) replays them once it answers",
                      highlight=False)
        console.print(f"results: {storage.uri(launch.folder)}", highlight=False)
        return 1
    rows = sort_rows(cell_rows(tracker, launch.run_key), config.eval.select_by)
    console.print(cell_table(rows, config.eval.select_by, f"{config.name} ({launch.invocation}): every ablation cell, "
                                                          f"best val {config.eval.select_by} first"))
    for failure in failures:
        console.print(f"[red]failed[/] {failure}", highlight=False)
    if unfinished:
        console.print(f"[yellow]interrupted[/]: {len(unfinished)} trial(s) did not finish; continue with "
                      f"`orch resume {shlex.quote(storage.locate(launch.folder))}`", highlight=False)
    console.print(f"results: {storage.uri(launch.folder)}\nMLflow: {launch.tracking_uri}\nnext: `orch report "
                  f"{config.name}`, `orch status {config.name}`, `orch ui`", highlight=False)
    return 1 if failures or unfinished else 0


def settle(tracker: Tracker, wait_s: float = 60.0) -> bool:
    """Give a server that went away a bounded while to come back and take the journal; True when it did."""
    deadline = time.monotonic() + wait_s
    while not tracker.flush():
        if time.monotonic() > deadline:
            return False
        time.sleep(5)
    return True


def trial_done(run) -> bool:
    """A trial run that a resume leaves alone: it finished, or the scheduler stopped it early."""
    return run.info.status == "FINISHED" or \
        (run.info.status == "KILLED" and run.data.tags.get(TAG_REASON, "").startswith(STOPPED_EARLY))


def resume_studies(launch: Launch, trial_runs: list) -> list[Study]:
    """The studies that continue an invocation from what MLflow holds, without Ray Tune's saved state.

    Every trial MLflow knows and that is not done is started again under its own identity (its
    `orch.trial` tag: the same MLflow run, the checkpoints of its trial folder); a training of the
    plan that never got a run (the driver died first) starts afresh, once per missing sample. Search
    values of a continued trial come back from its run's params (they round-trip through YAML)."""
    config, plan = launch.config, launch.plan
    stamp = time.strftime("%Y%m%d-%H%M%S")
    known = {run.data.tags[TAG_TRIAL]: run for run in trial_runs}
    resumed: list[dict] = []
    for trial, run in sorted(known.items()):
        if trial_done(run):
            continue
        cell = run.data.params.get("orch.cell")
        if cell not in {c.id for c in plan.cells}:
            raise InputError(f"{launch.storage.uri(launch.folder)}: MLflow's trial run {trial} names cell {cell!r}, "
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
    `storage_setting`, continued with the config it was started with, on the storage it was found on.

    Reads only orch.yaml (YAML, safe loader), MLflow and checkpoints' meta.json: nothing Ray pickled."""
    from orchestrator.config import load_config
    from orchestrator.plan import make_plan

    storage, name, invocation = find_invocation(name_or_run, storage_setting)
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(storage.local(f"{name}/{invocation}/{CONFIG_FILE}", Path(scratch)), saved=True,
                             trials=not invocation.startswith("train-"))  # a killed `orch train` reserved nothing
    config.ray.storage = storage.setting
    if invocation.startswith("train-"):  # a killed `orch train`: continued in this process, no Ray
        from orchestrator.single import train_one

        train_one(config, console, invocation=invocation, storage=storage)
        return 0
    console.print(f"resuming {storage.uri(f'{name}/{invocation}')}", highlight=False)
    return run_plan(config, make_plan(config), console, invocation=invocation, storage=storage)
