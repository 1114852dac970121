"""An experiment's results as MLflow holds them: what `orch report` and `orch export` start from.

Read-only: a missing store or experiment is an InputError, never created. The invocation is the
experiment's latest `orch run` / `orch train` unless one is named.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from orchestrator.status import CellRow, cell_rows, latest_invocation
from orchestrator.tracking import TAG_INVOCATION, TAG_KIND, TAG_TRIAL, TAG_VARIANT, Tracker, store_errors
from trainers.errors import InputError

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
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise InputError(f"no MLflow store at {uri}: run `orch run` first, or pass --storage / --config")
    with store_errors(uri):
        known = [e.name for e in MlflowClient(tracking_uri=uri).search_experiments() if e.name != "Default"]
    if name not in known:
        raise InputError(f"no experiment named {name!r} in {uri} (known: {', '.join(sorted(known)) or 'none'})")
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
    """Every finished trial with its best decode variant by val `metric`, best first. A variant's val
    scores are those of the checkpoint its trial kept (its best epoch); the test split never ranks."""
    best_by_trial: dict[str, Pick] = {}
    for row in results.finished():
        run = results.trials.get(row.trial)
        score = row.metrics.get(f"val_{metric}")
        if run is None or run.info.status != "FINISHED" or score is None:
            continue
        best_epoch = int(run.data.metrics.get("best_epoch", run.data.metrics.get("epoch", 0)))
        if row.trial not in best_by_trial or score > best_by_trial[row.trial].score:
            best_by_trial[row.trial] = Pick(row.trial, run, row, score, best_epoch)
    return sorted(best_by_trial.values(), key=lambda pick: -pick.score)


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
