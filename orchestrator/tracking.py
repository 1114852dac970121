"""MLflow, laid out as DESIGN.md says: parent run ► trial runs ► decode-variant runs.

One process writes (the `orch run` driver, or `orch train` itself), so concurrent trials never
contend for a sqlite lock. Runs are found again by their tags (`orch.invocation`, `orch.trial`,
`orch.variant`) before any is created, so a resumed experiment continues its runs instead of
duplicating them. Every run is ended with a true status; `repair_orphans` ends the runs a driver
killed with SIGKILL left RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional
from urllib.parse import urlsplit

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from orchestrator.storage import resolve, share_endpoint_with_mlflow

TAG_INVOCATION = "orch.invocation"
TAG_TRIAL = "orch.trial"
TAG_VARIANT = "orch.variant"
TAG_KIND = "orch.kind"  # parent | trial | variant
TAG_DRIVER = "orch.driver"  # host:pid of the writing process, to find orphans
TAG_REASON = "orch.failure_reason"
MAX_PARAM_LENGTH = 6000
TRIAL_METRIC = re.compile(r"^((train|val|test)_\w+|lr|ss_rate|epoch|epoch_time_s|best_epoch)$")


SERVER_SCHEMES = ("http", "https", "databricks")  # stores whose server decides where artifacts go


def artifact_location(uri: str, storage: str | Path) -> Optional[str]:
    """Where a new experiment of the store at `uri` keeps its artifacts, given `ray.storage`.

    An MLflow server keeps them in its own artifact store (`--serve-artifacts`, or its
    `--default-artifact-root`): None, the server decides, and clients need no access to it. A store
    MLflow writes itself (sqlite, PostgreSQL, MySQL) puts them under the results:
    `<ray.storage>/mlartifacts`, a local folder or `s3://bucket/prefix/mlartifacts`, where every
    machine that reads the store finds them (not in MLflow's default `./mlartifacts` of whichever
    folder the command ran in)."""
    if urlsplit(uri).scheme in SERVER_SCHEMES:
        return None
    return resolve(str(storage)).artifact_location()


def _driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _store_creation_lock(uri: str):
    """Two commands opening a new sqlite store at once would both run its schema migrations, or both
    create the experiment: one of them fails. A file lock beside the database serialises that."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()  # a server or a database server handles its own concurrency
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(database) + ".lock")


class Tracker:
    """Creates, finds and ends the runs of one experiment; the only MLflow writer of a command."""

    def __init__(self, uri: str, experiment: str, artifact_root: Optional[str | Path] = None):
        """`artifact_root`: the `ray.storage` setting a new experiment keeps its artifacts under
        (see `artifact_location`); None leaves them where MLflow puts them by default."""
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would bury our tables
        self.uri = uri
        if artifact_root is not None:
            share_endpoint_with_mlflow(str(artifact_root))
        with _store_creation_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                self.experiment_id = found.experiment_id
            else:
                location = artifact_location(uri, artifact_root) if artifact_root is not None else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    # ------------------------------------------------------------------------------ find or create
    def _find(self, tags: Mapping[str, str]):
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        return runs[0] if runs else None

    def _find_or_create(self, tags: dict[str, str], run_name: str, parent: Optional[str],
                        reopen_finished: bool = True) -> tuple[str, Optional[str]]:
        """The run with these tags, created when missing; returns its id and the status it had (None: new).

        A run found again is reopened (RUNNING, owned by this driver, its old end reason dropped),
        except a FINISHED one when `reopen_finished` is false: a resume never rewrites finished work.
        """
        existing = self._find(tags)
        if existing is not None:
            if existing.info.status != "FINISHED" or reopen_finished:
                self._reopen(existing)
            return existing.info.run_id, existing.info.status
        all_tags = {**tags, TAG_DRIVER: _driver_id()}
        if parent is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name)
        return run.info.run_id, None

    def _reopen(self, run) -> None:
        run_id = run.info.run_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, TAG_DRIVER, _driver_id())
        if TAG_REASON in run.data.tags:
            self.client.delete_tag(run_id, TAG_REASON)

    def parent_run(self, invocation: str, run_name: str, tags: Mapping[str, str] = ()) -> str:
        run_id, _ = self._find_or_create({TAG_INVOCATION: invocation, TAG_KIND: "parent"}, run_name, None)
        if tags:
            self.set_tags(run_id, tags)
        return run_id

    def trial_run(self, parent: str, invocation: str, trial: str, run_name: str,
                  params: Mapping[str, object]) -> tuple[str, Optional[str]]:
        """The trial's run and the status it had before (None: new); a FINISHED one stays closed."""
        run_id, before = self._find_or_create({TAG_INVOCATION: invocation, TAG_TRIAL: trial, TAG_KIND: "trial"},
                                               run_name, parent, reopen_finished=False)
        if before is None:
            self.log_params(run_id, params)
        return run_id, before

    def variant_run(self, trial_run: str, invocation: str, trial: str, variant: str, run_name: str,
                    params: Mapping[str, object]) -> str:
        tags = {TAG_INVOCATION: invocation, TAG_TRIAL: trial, TAG_VARIANT: variant, TAG_KIND: "variant"}
        run_id, before = self._find_or_create(tags, run_name, trial_run, reopen_finished=False)
        if before is None:
            self.log_params(run_id, params)
        return run_id

    # ------------------------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: Mapping[str, object]) -> None:
        items = [Param(k, _param_text(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        stamp = _now_ms()
        items = [Metric(k, float(v), stamp, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start:start + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, object]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_json(self, run_id: str, data, artifact_file: str) -> None:
        self.client.log_text(run_id, json.dumps(data, indent=1, default=str), artifact_file)

    def log_folder(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def log_file(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED", reason: str = "") -> None:
        if reason:
            self.set_tags(run_id, {TAG_REASON: reason[:5000]})
        self.client.set_terminated(run_id, status=status)

    # -------------------------------------------------------------------------------- housekeeping
    def runs(self, invocation: Optional[str] = None, kind: Optional[str] = None) -> list:
        clauses = []
        if invocation:
            clauses.append(f"tags.`{TAG_INVOCATION}` = '{invocation}'")
        if kind:
            clauses.append(f"tags.`{TAG_KIND}` = '{kind}'")
        return list(_all_pages(self.client, self.experiment_id, " and ".join(clauses)))

    def repair_orphans(self, alive: Iterable[str] = ()) -> list[str]:
        """End as KILLED every RUNNING run whose driver process is gone; returns their ids."""
        alive = set(alive) | {_driver_id()}
        repaired = []
        for run in _all_pages(self.client, self.experiment_id, "attributes.status = 'RUNNING'"):
            driver = run.data.tags.get(TAG_DRIVER, "")
            if driver in alive or _process_alive(driver):
                continue
            self.end(run.info.run_id, "KILLED", reason=f"driver {driver or '?'} ended without closing this run")
            repaired.append(run.info.run_id)
        return repaired


def _all_pages(client: MlflowClient, experiment_id: str, filter_string: str):
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _process_alive(driver: str) -> bool:
    """True when `host:pid` names a live process on this host (other hosts: assume alive)."""
    host, _, pid = driver.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return bool(driver) and host != socket.gethostname()
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _predictions_file(report: Mapping[str, object], checkpoint: Optional[Path], variant: str) -> Optional[Path]:
    """A variant's test captions: inside the final checkpoint (it travels to storage), else the path reported."""
    candidates = [Path(checkpoint) / "predictions" / f"test_{variant}.json"] if checkpoint is not None else []
    reported = json.loads(str(report.get("predictions_json") or "{}")).get(variant)
    if reported:
        candidates.append(Path(reported))
    return next((path for path in candidates if path.is_file()), None)


def _param_text(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_LENGTH]


class TrialRecorder:
    """The MLflow side of one training trial: its run, one nested run per decode variant.

    It consumes the flat per-epoch reports a trainer emits (`EpochResult.as_report()`), whether
    they arrive in-process (`orch train`) or through Ray Tune to the driver (`orch run`).
    """

    def __init__(self, tracker: Tracker, parent: str, invocation: str, trial: str, run_name: str,
                 params: Mapping[str, object], variants: Mapping[str, Mapping[str, object]]):
        self.tracker = tracker
        self.run_id, before = tracker.trial_run(parent, invocation, trial, run_name, params)
        self.variant_runs = {
            vid: tracker.variant_run(self.run_id, invocation, trial, vid, f"{run_name}/{vid}",
                                     {**params, **decode_params})
            for vid, decode_params in variants.items()}
        # Finished under an earlier driver: left exactly as it is. Continued: its epochs already
        # logged are not logged again when Tune restores a checkpoint older than the last report.
        self.closed = before == "FINISHED"
        self.logged_epoch = tracker.client.get_run(self.run_id).data.metrics.get("epoch", 0) if before else 0

    def record(self, report: Mapping[str, object]) -> None:
        """Log one epoch's metrics on the trial run and each variant run, with step = epoch.

        Only the trainer's own metrics are logged, not the bookkeeping Ray adds to a result.
        """
        epoch = int(report["epoch"])
        if self.closed or epoch <= self.logged_epoch:
            return
        own = {k: v for k, v in report.items() if TRIAL_METRIC.match(k)}
        self.tracker.log_metrics(self.run_id, own, step=epoch)
        for vid, run_id in self.variant_runs.items():
            prefix = f"{vid}/"
            self.tracker.log_metrics(run_id, {k[len(prefix):]: v for k, v in report.items() if k.startswith(prefix)},
                                     step=epoch)
        self.logged_epoch = epoch

    def complete(self, report: Mapping[str, object], checkpoint: Optional[Path],
                 status: str = "FINISHED", reason: str = "") -> None:
        """Attach the best checkpoint, sample captions and test predictions, then end the runs."""
        if self.closed:
            return
        samples = json.loads(str(report.get("samples_json") or "[]"))
        self.tracker.log_json(self.run_id, samples, "sample_captions.json")
        if checkpoint is not None:
            for name in ("best_model.pt", "meta.json"):
                if (Path(checkpoint) / name).is_file():
                    self.tracker.log_file(self.run_id, Path(checkpoint) / name, "best_checkpoint")
        for vid, run_id in self.variant_runs.items():
            path = _predictions_file(report, checkpoint, vid)
            if path is not None:
                self.tracker.log_file(run_id, path, "predictions")
        self.tracker.set_tags(self.run_id, {"orch.stop_reason": report.get("stop_reason") or reason,
                                            "orch.reference_variant": report.get("reference_variant", "")})
        self.end(status, reason)

    def end(self, status: str, reason: str = "") -> None:
        """End the trial run and its variant runs with one status (FINISHED, FAILED or KILLED)."""
        if self.closed:
            return
        for run_id in self.variant_runs.values():
            self.tracker.end(run_id, status, reason)
        self.tracker.end(self.run_id, status, reason)
        self.closed = True
