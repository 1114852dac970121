"""The one MLflow writer of a command: parent run ► trial runs ► decode-variant runs
(docs/architecture.md, "The MLflow layout").

One process writes (the `orch run` driver, or `orch train` itself), so concurrent trials never
contend for a sqlite lock. Runs are found again by their tags (`orch.invocation`, `orch.trial`,
`orch.variant`) before any is created, so a resumed experiment continues its runs instead of
duplicating them. Every run is ended with a true status; `repair_orphans` ends the runs a driver
killed with SIGKILL left RUNNING. A server that goes away costs nothing: writes wait in the journal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Optional

import psutil
from mlflow import MlflowClient
from mlflow.entities import (Dataset, DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput, LoggedModelStatus,
                             Metric, Param, RunTag)
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from orchestrator.credentials import masked
from orchestrator.storage import Storage
from orchestrator.locations import share_endpoint_with_mlflow
from orchestrator.tracking.journal import JOURNAL_FILE, Journal
from orchestrator.tracking.names import (MAX_PARAM_LENGTH, TAG_DRIVER, TAG_INVOCATION, TAG_KIND, TAG_REASON,
                                         TAG_TRIAL, TAG_VARIANT)
from trainers.errors import disk_full
from orchestrator.tracking.store import (artifact_location, bounded_http_retries, no_printed_passwords, server_answers,
                                         short_reason, store_creation_lock, store_errors, unreachable)


def _driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _now_ms() -> int:
    return int(time.time() * 1000)



PROBE_EVERY_S = 15.0  # while the server is away, how often a write tries it again


class Tracker:
    """Creates, finds and ends the runs of one experiment; the only MLflow writer of a command.

    Given a `journal`, a server that goes away does not stop the command: each write it does not
    take is appended to the journal, in order, and the whole journal is replayed, in order, when
    the server answers again (tried every PROBE_EVERY_S while writes come, and at the end), or later
    by `orch resume` / `orch status` (`replay_journals`). One line says when it goes, one when it is back."""

    def __init__(self, uri: str, experiment: str, artifact_root: Optional[Storage] = None,
                 journal: Optional[Path] = None, say=None):
        """`artifact_root`: the storage a new experiment keeps its artifacts under (see
        `artifact_location`); None leaves them where MLflow puts them by default.
        `journal`: the journal file of this run (None: writes fail when the server does).
        `say`: prints one line to the user (default: stderr)."""
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would bury our tables
        logging.getLogger("mlflow.store.db.utils").addFilter(_not_a_full_store)  # said once, below
        bounded_http_retries()
        no_printed_passwords(uri)
        self.uri = uri
        self.journal = Journal(journal) if journal is not None else None
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.away_since: Optional[float] = None
        self.store_full = False  # away because its disk is full, not because its server does not answer
        self._last_probe = 0.0
        self._clear = self.journal is None or not self.journal.pending()  # nothing waits: write straight through
        self.run_tags: dict[str, str] = {}  # given to every run this tracker creates (provenance.standard_tags)
        if artifact_root is not None:
            share_endpoint_with_mlflow(artifact_root.setting)
        with store_creation_lock(uri), store_errors(uri):
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
                        reopen_finished: bool = True, start_ms: Optional[int] = None) -> tuple[str, Optional[str]]:
        """The run with these tags, created when missing (started at `start_ms`, default now); returns its
        id and the status it had (None: new).

        A run found again is reopened (RUNNING, owned by this driver, its old end reason dropped),
        except a FINISHED one when `reopen_finished` is false: a resume never rewrites finished work.
        While the server is away, the run gets a placeholder id and its creation is journaled: the
        replay finds the run by its tags before it creates one, so it is never made twice.
        """
        if self.away_since is None:
            try:
                existing = self._find(tags)
            except Exception as error:  # noqa: BLE001 - only a server away is absorbed
                if self.journal is None or not _away(error):
                    raise
                self._went_away(error)
            else:
                if existing is not None:
                    if existing.info.status != "FINISHED" or reopen_finished:
                        self._reopen(existing)
                    return existing.info.run_id, existing.info.status
        all_tags = {**self.run_tags, **tags, TAG_DRIVER: _driver_id()}
        if parent is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        placeholder = f"pending-{uuid.uuid4().hex}"
        self._write({"op": "create_run", "placeholder": placeholder, "tags": all_tags, "run_name": run_name,
                     "find": dict(tags), "reopen_finished": reopen_finished, "time": start_ms or _now_ms()})
        return self._real_id(placeholder), None

    def _reopen(self, run) -> None:
        run_id = run.info.run_id
        self._write({"op": "update_run", "run_id": run_id, "status": "RUNNING"})
        self.set_tags(run_id, {TAG_DRIVER: _driver_id()})
        if TAG_REASON in run.data.tags:
            self._write({"op": "delete_tag", "run_id": run_id, "key": TAG_REASON})

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
                    params: Mapping[str, object], start_ms: Optional[int] = None) -> str:
        """A decode variant's run, nested under its trial's, started when its evaluation began (`start_ms`)."""
        tags = {TAG_INVOCATION: invocation, TAG_TRIAL: trial, TAG_VARIANT: variant, TAG_KIND: "variant"}
        run_id, before = self._find_or_create(tags, run_name, trial_run, reopen_finished=False, start_ms=start_ms)
        if before is None:
            self.log_params(run_id, params)
        return run_id

    # ------------------------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: Mapping[str, object]) -> None:
        """One write (MLflow's log_batch splits it into requests the server takes)."""
        self._write({"op": "log_batch", "run_id": run_id,
                     "params": [[k, _param_text(v)] for k, v in sorted(params.items())]})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int, model_id: Optional[str] = None,
                    dataset: Optional[Mapping[str, str]] = None) -> None:
        """Numbers at `step`; with `model_id`, also the logged model's metrics, measured on `dataset`
        (as provenance.prepared_dataset gives it): MLflow's Models page ranks models by them."""
        stamp = _now_ms()
        entry = {"op": "log_batch", "run_id": run_id,
                 "metrics": [[k, float(v), stamp, step] for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)]}
        if model_id is not None:
            entry["model_id"] = model_id
            if dataset is not None:
                entry["dataset"] = [dataset["name"], dataset["digest"]]
        self._write(entry)

    def set_tags(self, run_id: str, tags: Mapping[str, object]) -> None:
        self._write({"op": "log_batch", "run_id": run_id, "tags": [[k, str(v)] for k, v in tags.items()]})

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._write({"op": "log_text", "run_id": run_id, "text": text, "artifact_file": artifact_file})

    def log_json(self, run_id: str, data, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(data, indent=1, default=str), artifact_file)

    def log_folder(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self._write({"op": "log_artifacts", "run_id": run_id, "path": str(folder), "artifact_path": artifact_path})

    def log_file(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        self._write({"op": "log_artifact", "run_id": run_id, "path": str(path), "artifact_path": artifact_path})

    def describe(self, run_id: str, markdown: str) -> None:
        """The run's Description in the MLflow UI."""
        self.set_tags(run_id, {MLFLOW_RUN_NOTE: markdown})

    def log_input(self, run_id: str, dataset: Optional[Mapping[str, str]], context: str = "train") -> None:
        """The run's Dataset (`mlflow.log_input`): `dataset` as provenance.prepared_dataset gives it; None logs nothing."""
        if dataset is not None:
            self._write({"op": "log_input", "run_id": run_id, "dataset": dict(dataset), "context": context})

    def log_model(self, run_id: str, folder: Path, name: str, step: int, params: Mapping[str, object] = (),
                  tags: Mapping[str, object] = (), model_type: Optional[str] = None) -> str:
        """A saved MLflow model folder as a logged model of the run, made at `step`, with its params and tags
        (the Models page, the run's Models column, Register); its id (a placeholder while its creation waits
        in the journal). Its MLmodel names the run and the model, as MLflow's own log_model writes them."""
        placeholder = f"pending-{uuid.uuid4().hex}"
        self._write({"op": "log_model", "placeholder": placeholder, "run_id": run_id, "path": str(folder), "name": name,
                     "step": step, "params": {k: _param_text(v) for k, v in dict(params).items()},
                     "tags": {k: str(v) for k, v in {**self.run_tags, **dict(tags)}.items()}, "model_type": model_type})
        return self._real_id(placeholder)

    def link_step_metrics(self, run_id: str, model_id: str, step: int, prefix: str,
                          dataset: Optional[Mapping[str, str]] = None) -> None:
        """The run's metrics at `step` whose names start with `prefix` as the logged model's metrics too, on
        `dataset`: how MLflow's own log_model links a training run's metrics at the model's step."""
        self._write({"op": "link_metrics", "run_id": run_id, "model_id": model_id, "step": step, "prefix": prefix,
                     "dataset": [dataset["name"], dataset["digest"]] if dataset is not None else None})

    def link_model(self, run_id: str, model_id: str) -> None:
        """The logged model the run evaluated, as the run's model input (a decode variant's run)."""
        self._write({"op": "link_model", "run_id": run_id, "model_id": model_id})

    def set_experiment_tags(self, tags: Mapping[str, str]) -> None:
        """The experiment's tags: its description (`mlflow.note.content`), its kind, its stored views."""
        self._write({"op": "set_experiment_tags", "tags": {k: str(v) for k, v in tags.items()}})

    def end(self, run_id: str, status: str = "FINISHED", reason: str = "", end_ms: Optional[int] = None) -> None:
        """End the run with `status` at `end_ms` (default now), `reason` as its failure reason tag."""
        if reason:
            self.set_tags(run_id, {TAG_REASON: reason[:5000]})
        self._write({"op": "set_terminated", "run_id": run_id, "status": status, "time": end_ms or _now_ms()})

    # ------------------------------------------------------------------------- the write journal
    def use_journal(self, path: Path) -> None:
        """Journal this command's writes in `path` from now on (a run folder made after the store opened)."""
        self.journal = Journal(path)
        self._clear = not self.journal.pending()

    @property
    def away(self) -> bool:
        return self.away_since is not None

    def _real_id(self, run_id: str) -> str:
        """The run's id, or its placeholder while its creation waits in the journal."""
        try:
            return self._resolved(run_id)
        except KeyError:
            return run_id

    def _write(self, entry: dict) -> None:
        """Do one write now, or journal it: while the server is away, and behind earlier journaled writes."""
        if self.journal is not None and (self.away or not self._clear):
            if entry["op"] in ("log_artifact", "log_artifacts", "log_model"):
                entry = {**entry, "path": self.journal.keep(Path(entry["path"]))}
            self.journal.append(entry)
            self._clear = False
            self.flush(force=False)
            return
        try:
            self._apply(entry, live=True)
        except Exception as error:  # noqa: BLE001 - only a server away is absorbed
            if self.journal is None or not _away(error):
                raise
            self._went_away(error)
            self._write(entry)

    def _went_away(self, error: BaseException) -> None:
        if self.away_since is None:
            self.away_since = time.monotonic()
            self._last_probe = time.monotonic()
            self.store_full = disk_full(error) is not None
            what = "store" if self.store_full else "server"
            state = "is full" if self.store_full else "is not answering"
            reason = "database or disk is full" if self.store_full else short_reason(error)
            self.say(f"MLflow {what} {masked(self.uri)} {state} ({reason}): training goes on; tracking "
                     f"writes are kept in {self.journal.path} and replayed in order when it is back")

    def flush(self, force: bool = True) -> bool:
        """Replay the journal's pending writes in order; True when none is left. Unless `force`, a server
        that is away is tried at most every PROBE_EVERY_S."""
        if self.journal is None:
            return True
        if self.away and not force and time.monotonic() - self._last_probe < PROBE_EVERY_S:
            return False
        self._last_probe = time.monotonic()
        if self.away and not server_answers(self.uri):
            return False
        done, pending = self.journal.done, self.journal.pending()
        for number, entry in enumerate(pending, start=done + 1):
            try:
                self._apply(entry)
            except Exception as error:  # noqa: BLE001
                if not _away(error):
                    raise
                self._went_away(error)
                return False
            self.journal.mark_done(number)
        self._clear = True
        if self.away or pending:
            self.say(f"MLflow server {masked(self.uri)} is back: replayed {len(pending)} journaled tracking write(s) "
                     f"in order")
            self.away_since = None
        return True

    def settle(self, wait_s: float = 60.0) -> bool:
        """Give a server that went away a bounded while to come back and take the journal; True when it did.
        A full store is tried once: space does not come back by waiting."""
        deadline = time.monotonic() + (0.0 if self.store_full else wait_s)
        while not self.flush():
            if time.monotonic() > deadline:
                return False
            time.sleep(5)
        return True

    def _apply(self, entry: dict, live: bool = False) -> None:
        """Perform one write on the server; placeholders become the ids their creation got (kept beside
        the journal when it is a replay, so a later process replays the rest with them)."""
        op = entry["op"]
        if op == "create_run":
            existing = self._find(entry["find"])
            if existing is not None:
                run_id = existing.info.run_id
                if existing.info.status != "FINISHED" or entry["reopen_finished"]:
                    self.client.update_run(run_id, status="RUNNING")
            else:
                tags = {key: self._resolved(value) if key == MLFLOW_PARENT_RUN_ID else value
                        for key, value in entry["tags"].items()}  # a parent created while away, too
                run_id = self.client.create_run(self.experiment_id, start_time=entry["time"], tags=tags,
                                                run_name=entry["run_name"]).info.run_id
            self._remember(entry["placeholder"], run_id, live)
            return
        if op == "set_experiment_tags":
            for key, value in entry["tags"].items():
                self.client.set_experiment_tag(self.experiment_id, key, value)
            return
        run_id = self._resolved(entry["run_id"])
        if op == "log_batch":
            model_id = self._resolved(entry["model_id"]) if "model_id" in entry else None
            dataset_name, dataset_digest = entry.get("dataset") or (None, None)
            self.client.log_batch(run_id, metrics=[Metric(k, v, t, step, model_id=model_id, dataset_name=dataset_name,
                                                          dataset_digest=dataset_digest)
                                                   for k, v, t, step in entry.get("metrics", [])],
                                  params=[Param(k, v) for k, v in entry.get("params", [])],
                                  tags=[RunTag(k, v) for k, v in entry.get("tags", [])])
        elif op == "update_run":
            self.client.update_run(run_id, status=entry["status"])
        elif op == "delete_tag":
            with contextlib.suppress(Exception):  # already gone
                self.client.delete_tag(run_id, entry["key"])
        elif op == "set_terminated":
            self.client.set_terminated(run_id, status=entry["status"], end_time=entry["time"])
        elif op == "log_text":
            self.client.log_text(run_id, entry["text"], entry["artifact_file"])
        elif op == "log_artifact":
            self.client.log_artifact(run_id, entry["path"], entry["artifact_path"])
        elif op == "log_artifacts":
            self.client.log_artifacts(run_id, entry["path"], entry["artifact_path"])
        elif op == "log_input":
            dataset = Dataset(**entry["dataset"])
            if not any(item.dataset.digest == dataset.digest for item in self.client.get_run(run_id).inputs.dataset_inputs):
                self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, entry["context"])])])
        elif op == "log_model":
            self._log_model(run_id, entry, live)
        elif op == "link_metrics":
            dataset_name, dataset_digest = entry["dataset"] or (None, None)
            model_id = self._resolved(entry["model_id"])
            self.client.log_batch(run_id, metrics=[  # the run drops the copies: equal in key, step, time and value
                Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, dataset_name=dataset_name,
                       dataset_digest=dataset_digest)
                for key in self.client.get_run(run_id).data.metrics if key.startswith(entry["prefix"])
                for m in self.client.get_metric_history(run_id, key) if m.step == entry["step"]])
        elif op == "link_model":  # MLflow keeps a run's link to a model once
            self.client.log_inputs(run_id, models=[LoggedModelInput(self._resolved(entry["model_id"]))])
        else:
            raise ValueError(f"{self.journal.path if self.journal else 'journal'}: unknown entry {op!r}")

    def _log_model(self, run_id: str, entry: dict, live: bool) -> None:
        """Create the run's logged model (or find the one an earlier replay made: same run and name), stamp its
        ids into the folder's MLmodel, upload the folder, mark it READY and link it as the run's output once."""
        from mlflow.models import Model

        found = self.client.search_logged_models([self.experiment_id], filter_string=(
            f"source_run_id = '{run_id}' AND name = '{entry['name']}'"), max_results=1)
        model = found[0] if found else self.client.create_logged_model(
            self.experiment_id, entry["name"], source_run_id=run_id, params=entry["params"], tags=entry["tags"],
            model_type=entry["model_type"])
        self._remember(entry["placeholder"], model.model_id, live)
        if model.status != LoggedModelStatus.READY:
            mlmodel_path = Path(entry["path"]) / "MLmodel"
            mlmodel = Model.load(mlmodel_path)
            mlmodel.model_id = mlmodel.model_uuid = model.model_id
            mlmodel.run_id, mlmodel.artifact_path = run_id, model.artifact_location
            mlmodel.save(mlmodel_path)
            self.client.log_model_artifacts(model.model_id, entry["path"])
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        if model.model_id not in {item.model_id for item in self.client.get_run(run_id).outputs.model_outputs}:
            self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, entry["step"])])

    def _remember(self, placeholder: str, real_id: str, live: bool) -> None:
        """The id a placeholder's creation got (kept beside the journal when it is a replay)."""
        self._ids = {**getattr(self, "_ids", {}), placeholder: real_id}
        if self.journal is not None and not live:
            self.journal.set_id(placeholder, real_id)

    def _resolved(self, pending_id: str) -> str:
        """A run's or logged model's id: placeholders (`pending-…`) become the ids their creation got."""
        if not pending_id.startswith("pending-"):
            return pending_id
        ids = getattr(self, "_ids", {})
        return ids[pending_id] if pending_id in ids else (self.journal.ids() if self.journal is not None else {})[pending_id]

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


def replay_journals(uri: str, experiment: str, folder: Path, say=None) -> int:
    """Replay the journal of every run folder under `folder` (<storage>/<name>) whose writes the MLflow
    server at `uri` has not taken; returns how many writes were replayed. `orch status` and
    `orch resume` call this, so a run whose server went away is complete in MLflow again."""
    replayed = 0
    for path in sorted(Path(folder).glob(f"*/{JOURNAL_FILE}")):
        pending = len(Journal(path).pending())
        if pending:
            tracker = Tracker(uri, experiment, journal=path, say=say)
            if tracker.flush():
                replayed += pending
    return replayed


def _not_a_full_store(record: logging.LogRecord) -> bool:
    """MLflow logs each write a full sqlite store refuses with its traceback; the Tracker says it in one line."""
    return disk_full(record.exc_info[1] if record.exc_info else None) is None and \
        "database or disk is full" not in record.getMessage()


def _away(error: BaseException) -> bool:
    """A write the store could not take for now: its server away, or its disk full (SQLite's
    "database or disk is full"). Both are waited out with the journal; anything else is a bug."""
    return unreachable(error) or disk_full(error) is not None


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
    return psutil.pid_exists(int(pid))


def _param_text(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_LENGTH]


