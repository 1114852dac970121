"""An experiment's results as MLflow holds them: every ablation cell's row, what `orch status`,
`orch report` and `orch export` start from.

Read-only: a missing store or experiment is an InputError, never created. The invocation is the
experiment's latest `orch run` / `orch train` unless one is named.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from orchestrator.credentials import masked
from orchestrator.ids import training_id, variant_id
from orchestrator.tracking.names import TAG_INVOCATION, TAG_KIND, TAG_REASON, TAG_TRIAL, TAG_VARIANT, orch_metric
from orchestrator.tracking.store import store_errors
from orchestrator.tracking.writer import Tracker
from trainers.config import selection_metric
from trainers.errors import InputError


@dataclass
class CellRow:
    trial: str
    trial_name: str
    variant: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    reason: str = ""
    epochs: float = 0.0
    varying: dict[str, str] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # its trial's cost_* (orchestrator.tracking.cost), shared by its variants

    @property
    def training(self) -> str:
        """The training's id (orchestrator.ids): `c002`, or `c002-<Ray trial id>` for a search sample."""
        return training_id(self.params.get("orch.cell", ""), self.trial)

    @property
    def id(self) -> str:
        """The decode variant's id: `c002-d03`; the training's (`c002`) for a training not evaluated yet."""
        return variant_id(self.training, self.variant) if self.variant else self.training


def experiment_names(uri: str) -> list[str]:
    """The experiments of the store at `uri` (MLflow's own Default left out)."""
    from mlflow import MlflowClient

    with store_errors(uri):
        return [e.name for e in MlflowClient(tracking_uri=uri).search_experiments() if e.name != "Default"]


def stored_views(uri: str, server: str) -> dict[str, str]:
    """Each experiment's stored view of every run's curves (provenance.VIEW) as a URL of the UI at `server`."""
    from mlflow import MlflowClient

    from orchestrator.tracking.provenance import VIEW_QUERY, VIEW_TAG

    with store_errors(uri):
        experiments = MlflowClient(tracking_uri=uri).search_experiments()
    return {e.name: f"{server}/#/experiments/{e.experiment_id}/runs?{VIEW_QUERY}"
            for e in experiments if VIEW_TAG in e.tags}


def latest_invocation(tracker: Tracker) -> Optional[str]:
    parents = tracker.client.search_runs([tracker.experiment_id], f"tags.`{TAG_KIND}` = 'parent'",
                                         max_results=1, order_by=["attributes.start_time DESC"])
    return parents[0].data.tags.get(TAG_INVOCATION) if parents else None


def cell_rows(tracker: Tracker, invocation: str) -> list[CellRow]:
    """Every trial × variant of an invocation. A training whose variants were not evaluated (running,
    failed, stopped early: a variant run is made when its evaluation runs) shows alone, as its trial run."""
    runs = tracker.runs(invocation=invocation)
    trials = {r.data.tags.get(TAG_TRIAL): r for r in runs if r.data.tags.get(TAG_KIND) == "trial"}
    variants = [run for run in runs if run.data.tags.get(TAG_KIND) == "variant"]
    evaluated = {run.data.tags.get(TAG_TRIAL) for run in variants}
    rows = [_row(run, trials.get(run.data.tags.get(TAG_TRIAL))) for run in variants]
    rows += [_row(trial, trial) for key, trial in trials.items() if key not in evaluated]
    _mark_varying(rows)
    return rows


def _row(run, trial) -> CellRow:
    """A variant run's row (`trial`: its trial run, if found), or a trial run's own (`run` is `trial`)."""
    return CellRow(
        trial=run.data.tags.get(TAG_TRIAL, ""), trial_name=trial.info.run_name if trial else "",
        variant=run.data.tags.get(TAG_VARIANT, ""), status=run.info.status, params=dict(run.data.params),
        metrics={orch_metric(k): v for k, v in run.data.metrics.items()}, reason=run.data.tags.get(TAG_REASON, ""),
        epochs=trial.data.metrics.get("epoch", 0.0) if trial else 0.0,
        cost={k: v for k, v in trial.data.metrics.items() if k.startswith("cost_")} if trial else {})


def _mark_varying(rows: list[CellRow]) -> None:
    keys = {k for row in rows for k in row.params if not k.startswith("orch.")}
    varying = sorted(k for k in keys if len({row.params.get(k) for row in rows}) > 1)
    for row in rows:
        row.varying = {k: row.params.get(k, "") for k in varying}



PLAN_ARTIFACT = "config/plan.json"
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass
class Results:
    """One invocation's runs: the rows `orch status` shows, the trial runs, and the plan."""

    experiment: str
    uri: str
    invocation: str
    tracker: Tracker
    rows: list[CellRow]  # every trial x decode variant of the invocation
    trials: dict[str, object]  # trial id -> its MLflow run
    variant_runs: dict[tuple[str, str], str]  # (trial id, variant id) -> the variant's run id
    plan: Optional[dict]  # the parent run's plan (absent for `orch train`)
    parent_run_id: Optional[str] = None  # the invocation's parent run, which holds the report

    def variant_run_id(self, row: CellRow) -> str:
        return self.variant_runs[(row.trial, row.variant)]

    def finished(self) -> list[CellRow]:
        """The evaluations that completed: finished runs with test metrics."""
        return [row for row in self.rows if row.status == "FINISHED" and any(k.startswith("test_") for k in row.metrics)]

    @property
    def search_keys(self) -> list[str]:
        return list((self.plan or {}).get("search_space", {}))

    def grid_keys(self) -> list[str]:
        """The keys the grid varies, in the order the YAML lists them (decode keys last)."""
        if self.plan is not None:
            return [*self.plan["varying_keys"], *self.plan["decode_keys"]]
        return sorted({key for row in self.rows for key in row.varying})


def open_results(name: str, uri: str, invocation: Optional[str] = None) -> Results:
    """The runs of `name`'s latest (or the named) invocation in the store at `uri`."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise InputError(f"no MLflow store at {uri}: run `orch run` first, or pass --storage / --config")
    known = experiment_names(uri)
    if name not in known:
        raise InputError(f"no experiment named {name!r} in {masked(uri)} (known: {', '.join(sorted(known)) or 'none'})")
    tracker = Tracker(uri, name)
    chosen = _invocation(tracker, name, invocation)
    runs = tracker.runs(invocation=chosen)
    trials = {run.data.tags[TAG_TRIAL]: run for run in runs if run.data.tags.get(TAG_KIND) == "trial"}
    variants = {(run.data.tags[TAG_TRIAL], run.data.tags[TAG_VARIANT]): run.info.run_id
                for run in runs if run.data.tags.get(TAG_KIND) == "variant"}
    parents = [run for run in runs if run.data.tags.get(TAG_KIND) == "parent"]
    parent = parents[0].info.run_id if parents else None
    return Results(name, uri, chosen, tracker, cell_rows(tracker, chosen), trials, variants,
                   _plan(tracker, parent) if parent else None, parent)


@dataclass
class Pick:
    """A finished trial and its best decode variant."""

    trial: str
    trial_run: object  # the MLflow run
    variant: CellRow
    score: float  # val_<metric> of the variant at the trial's best epoch
    best_epoch: int


def pick_best(results: Results, metric: str) -> list[Pick]:
    """Every finished trial with its best decode variant by `metric` (an `eval.select_by` name: val
    `CIDEr`, higher first; `neg_loss`, the val loss, lowest first), best first. A variant's val scores
    are those of the checkpoint its trial kept (its best epoch); the test split never ranks."""
    key, mode = selection_metric(metric)
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    best_by_trial: dict[str, Pick] = {}
    for row in results.finished():
        run = results.trials.get(row.trial)
        score = row.metrics.get(key)
        if run is None or run.info.status != "FINISHED" or score is None:
            continue
        best_epoch = int(run.data.metrics.get("best_epoch", run.data.metrics.get("epoch", 0)))
        if row.trial not in best_by_trial or better(score, best_by_trial[row.trial].score):
            best_by_trial[row.trial] = Pick(row.trial, run, row, score, best_epoch)
    return sorted(best_by_trial.values(), key=lambda pick: -pick.score if mode == "max" else pick.score)


def _invocation(tracker: Tracker, name: str, wanted: Optional[str]) -> str:
    if wanted is None:
        latest = latest_invocation(tracker)
        if latest is None:
            raise InputError(f"experiment {name!r} has no runs yet")
        return latest
    parents = {run.data.tags.get(TAG_INVOCATION) for run in tracker.runs(kind="parent")}
    for candidate in (wanted, f"{name}/{wanted}"):
        if candidate in parents:
            return candidate
    raise InputError(f"experiment {name!r} has no invocation {wanted!r} (it has: {', '.join(sorted(parents))})")


def _plan(tracker: Tracker, run_id: str) -> Optional[dict]:
    """The plan `orch run` logged on its parent run; None for `orch train`, which logs none."""
    if PLAN_ARTIFACT not in {item.path for item in tracker.client.list_artifacts(run_id, "config")}:
        return None
    with tempfile.TemporaryDirectory() as scratch, quiet_downloads():
        return json.loads(Path(tracker.client.download_artifacts(run_id, PLAN_ARTIFACT, scratch)).read_text())


@contextlib.contextmanager
def quiet_downloads():
    """No MLflow download progress bar between our output lines."""
    before = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[PROGRESS_BAR_ENV]
        else:
            os.environ[PROGRESS_BAR_ENV] = before
