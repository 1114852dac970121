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

import shutil
import uuid

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from orchestrator.ids import variant_id
from orchestrator.storage import resolve, share_endpoint_with_mlflow
from trainers.errors import InputError

TAG_INVOCATION = "orch.invocation"
TAG_TRIAL = "orch.trial"
TAG_VARIANT = "orch.variant"
TAG_KIND = "orch.kind"  # parent | trial | variant
TAG_DRIVER = "orch.driver"  # host:pid of the writing process, to find orphans
TAG_REASON = "orch.failure_reason"
MAX_PARAM_LENGTH = 6000
BEST_CHECKPOINT = "best_checkpoint"  # a trial run's artifact folder, for trials without an MLflow model
CAPTIONER_MODEL = "captioner"  # the logged model of a captioner trial; it holds the best checkpoint
TRIAL_METRIC = re.compile(r"^((train|val|test)_\w+|lr|ss_rate|epoch|epoch_time_s|best_epoch)$")
BLEU = re.compile(r"^Bleu_\d$")


def mlflow_metric(name: str) -> str:
    """The MLflow key of a metric a trainer reports: validation scores go in the sections the UI
    shows first.

    The MLflow UI groups a run's charts by the key's prefix before its last `/`, shows named groups,
    sorted, before the unnamed one, and sorts charts inside a group. So `val_CIDEr` is logged
    as `val/CIDEr`, the first chart of the first group; the BLEU n-grams as `val/bleu/Bleu_4`, the
    next group (in `val/` they would sort before CIDEr); every other metric keeps its name."""
    if not name.startswith("val_"):
        return name
    score = name[len("val_"):]
    return f"val/bleu/{score}" if BLEU.match(score) else f"val/{score}"


def orch_metric(key: str) -> str:
    """The metric name orch uses (`val_CIDEr`) for an MLflow key (`val/CIDEr`): `mlflow_metric` undone."""
    if not key.startswith("val/"):
        return key
    return "val_" + key.rsplit("/", 1)[-1]


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


JOURNAL_FILE = "mlflow-journal.jsonl"  # next to the run: the tracking writes a server did not take, in order
PROBE_EVERY_S = 15.0  # while the server is away, how often a write tries it again
# A driver waits at most about 1 + 2 + 4 s plus three 20 s timeouts on one request, not MLflow's
# default 7 retries with backoff 2 and 120 s timeouts (minutes of silence per request).
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def bounded_http_retries() -> None:
    """MLflow's HTTP retry settings for this process, unless the user set them (MLflow reads them per request)."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def unreachable(error: BaseException) -> bool:
    """True when an MLflow call failed because the server is away (refused, timed out, 5xx), not
    because the request was wrong."""
    text = f"{type(error).__name__} {error}"
    return any(sign in text for sign in ("Max retries exceeded", "ConnectionError", "Connection refused",
                                         "timed out", "Read timed out", "RemoteDisconnected",
                                         "with code 502", "with code 503", "with code 504", "status code 50",
                                         "TEMPORARILY_UNAVAILABLE"))


class store_errors:
    """`with store_errors(uri): ...`: a sqlite file that is not an MLflow store (truncated, overwritten,
    not a database) or a server that does not answer (tried with bounded retries) becomes one
    InputError naming it, instead of SQLAlchemy's or urllib3's traceback."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self):
        bounded_http_retries()
        return self

    def __exit__(self, kind, error, traceback):
        if error is not None and self.uri.startswith(("http://", "https://")) and unreachable(error):
            raise InputError(f"{self.uri}: the MLflow server does not answer ({_short(error)}) (start it, or point "
                             f"tracking.uri / MLFLOW_TRACKING_URI at the right one)") from None
        if error is None or not self.uri.startswith("sqlite:///"):
            return False
        chain, seen = [], error
        while seen is not None and len(chain) < 10:
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__
        text = " ".join(str(item) for item in chain)
        for sign in ("file is not a database", "database disk image is malformed", "no such table",
                     "unable to open database file"):
            if sign in text:
                raise InputError(f"{self.uri.removeprefix('sqlite:///')}: not a readable MLflow store ({sign}) "
                                 f"(move it away, or point tracking.uri / --storage at the right one)") from None
        return False


class Journal:
    """An ordered, append-only file of tracking writes (JSON lines) and how many were replayed.

    Every entry holds what the write needs and its original timestamps, so replaying one that did
    reach the server after all changes nothing (MLflow drops a metric equal in key, step, time and
    value; params, tags and statuses are set to the same values). Artifacts are copied in beside it,
    since a trial's checkpoint folder may be replaced before the server returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.done_path = self.path.with_name(self.path.name + ".done")
        self.ids_path = self.path.with_name(self.path.name + ".ids")
        self.files = self.path.with_name(self.path.name + ".files")

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    @property
    def done(self) -> int:
        return int(self.done_path.read_text() or 0) if self.done_path.is_file() else 0

    def pending(self) -> list[dict]:
        return self.entries()[self.done:]

    def append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def mark_done(self, count: int) -> None:
        _write_atomically(self.done_path, str(count))

    def ids(self) -> dict[str, str]:
        """Placeholder run ids (runs created while the server was away) -> their real ids."""
        return json.loads(self.ids_path.read_text()) if self.ids_path.is_file() else {}

    def set_id(self, placeholder: str, run_id: str) -> None:
        _write_atomically(self.ids_path, json.dumps({**self.ids(), placeholder: run_id}))

    def keep(self, source: Path) -> str:
        """A copy of a file or folder in the journal's files folder; its path."""
        target = self.files / uuid.uuid4().hex / Path(source).name
        target.parent.mkdir(parents=True)
        (shutil.copytree if Path(source).is_dir() else shutil.copyfile)(source, target)
        return str(target)


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)


class Tracker:
    """Creates, finds and ends the runs of one experiment; the only MLflow writer of a command.

    Given a `journal`, a server that goes away does not stop the command: each write it does not
    take is appended to the journal, in order, and the whole journal is replayed, in order, when
    the server answers again (tried every PROBE_EVERY_S while writes come, and at the end), or later
    by `orch resume` / `orch status` (`replay_journals`). One line says when it goes, one when it is back."""

    def __init__(self, uri: str, experiment: str, artifact_root: Optional[str | Path] = None,
                 journal: Optional[Path] = None, say=None):
        """`artifact_root`: the `ray.storage` setting a new experiment keeps its artifacts under
        (see `artifact_location`); None leaves them where MLflow puts them by default.
        `journal`: the journal file of this run (None: writes fail when the server does).
        `say`: prints one line to the user (default: stderr)."""
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would bury our tables
        bounded_http_retries()
        self.uri = uri
        self.journal = Journal(journal) if journal is not None else None
        self.say = say or (lambda line: print(line, file=__import__("sys").stderr, flush=True))
        self.away_since: Optional[float] = None
        self._last_probe = 0.0
        self._clear = self.journal is None or not self.journal.pending()  # nothing waits: write straight through
        self.run_tags: dict[str, str] = {}  # given to every run this tracker creates (provenance.standard_tags)
        if artifact_root is not None:
            share_endpoint_with_mlflow(str(artifact_root))
        with _store_creation_lock(uri), store_errors(uri):
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
        While the server is away, the run gets a placeholder id and its creation is journaled: the
        replay finds the run by its tags before it creates one, so it is never made twice.
        """
        if self.away_since is None:
            try:
                existing = self._find(tags)
            except Exception as error:  # noqa: BLE001 - only a server away is absorbed
                if self.journal is None or not unreachable(error):
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
                     "find": dict(tags), "reopen_finished": reopen_finished, "time": _now_ms()})
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
                    params: Mapping[str, object]) -> str:
        tags = {TAG_INVOCATION: invocation, TAG_TRIAL: trial, TAG_VARIANT: variant, TAG_KIND: "variant"}
        run_id, before = self._find_or_create(tags, run_name, trial_run, reopen_finished=False)
        if before is None:
            self.log_params(run_id, params)
        return run_id

    # ------------------------------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: Mapping[str, object]) -> None:
        items = [[k, _param_text(v)] for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self._write({"op": "log_batch", "run_id": run_id, "params": items[start:start + 100]})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        stamp = _now_ms()
        items = [[k, float(v), stamp, step] for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for start in range(0, len(items), 500):
            self._write({"op": "log_batch", "run_id": run_id, "metrics": items[start:start + 500]})

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

    def log_model(self, run_id: str, folder: Path, name: str, step: int) -> None:
        """A saved MLflow model folder as a logged model of the run (the UI's Models column, Register)."""
        self._write({"op": "log_model", "run_id": run_id, "path": str(folder), "name": name, "step": step})

    def end(self, run_id: str, status: str = "FINISHED", reason: str = "") -> None:
        if reason:
            self.set_tags(run_id, {TAG_REASON: reason[:5000]})
        self._write({"op": "set_terminated", "run_id": run_id, "status": status, "time": _now_ms()})

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
            if self.journal is None or not unreachable(error):
                raise
            self._went_away(error)
            self._write(entry)

    def _went_away(self, error: BaseException) -> None:
        if self.away_since is None:
            self.away_since = time.monotonic()
            self._last_probe = time.monotonic()
            self.say(f"MLflow server {self.uri} is not answering ({_short(error)}): training goes on; tracking "
                     f"writes are kept in {self.journal.path} and replayed in order when it is back")

    def flush(self, force: bool = True) -> bool:
        """Replay the journal's pending writes in order; True when none is left. Unless `force`, a server
        that is away is tried at most every PROBE_EVERY_S."""
        if self.journal is None:
            return True
        if self.away and not force and time.monotonic() - self._last_probe < PROBE_EVERY_S:
            return False
        self._last_probe = time.monotonic()
        if self.away and not _server_answers(self.uri):
            return False
        done, pending = self.journal.done, self.journal.pending()
        for number, entry in enumerate(pending, start=done + 1):
            try:
                self._apply(entry)
            except Exception as error:  # noqa: BLE001
                if not unreachable(error):
                    raise
                self._went_away(error)
                return False
            self.journal.mark_done(number)
        self._clear = True
        if self.away or pending:
            self.say(f"MLflow server {self.uri} is back: replayed {len(pending)} journaled tracking write(s) "
                     f"in order")
            self.away_since = None
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
            self._ids = {**getattr(self, "_ids", {}), entry["placeholder"]: run_id}
            if self.journal is not None and not live:
                self.journal.set_id(entry["placeholder"], run_id)
            return
        run_id = self._resolved(entry["run_id"])
        if op == "log_batch":
            self.client.log_batch(run_id, metrics=[Metric(k, v, t, step) for k, v, t, step in entry.get("metrics", [])],
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
            model = self.client.create_logged_model(self.experiment_id, entry["name"], source_run_id=run_id)
            self.client.log_model_artifacts(model.model_id, entry["path"])
            self.client.finalize_logged_model(model.model_id, "READY")
            self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, entry["step"])])
        else:
            raise ValueError(f"{self.journal.path if self.journal else 'journal'}: unknown entry {op!r}")

    def _resolved(self, run_id: str) -> str:
        if not run_id.startswith("pending-"):
            return run_id
        ids = getattr(self, "_ids", {})
        return ids[run_id] if run_id in ids else (self.journal.ids() if self.journal is not None else {})[run_id]

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


def _server_answers(uri: str, timeout_s: float = 3.0) -> bool:
    """One quick request, no retries: is the MLflow server back? (A database store: assume so.)"""
    if urlsplit(uri).scheme not in ("http", "https"):
        return True
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                max_retries=0, backoff_factor=0, timeout=timeout_s, raise_on_status=False,
                                json={"max_results": 1})
    except Exception:  # noqa: BLE001 - any failure means not yet
        return False
    return response.status_code == 200


def _short(error: BaseException) -> str:
    text = str(error)
    for sign in ("Connection refused", "timed out", "Max retries exceeded", "with code 50"):
        if sign in text:
            return sign.replace("with code", "HTTP")
    return type(error).__name__


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

    It consumes the flat per-epoch reports a trainer emits (`EpochResult.as_report()`, with the cost
    meter's fields), whether they arrive in-process (`orch train`) or through Ray Tune to the driver
    (`orch run`). The trial run holds what it trained with (no `decode.*` key: those, and their
    metrics, are the variant runs'); its validation scores per epoch (`val/…`, `mlflow_metric`) are
    the reference decode's, named by the tag `orch.reference_variant` and in its description.
    """

    def __init__(self, tracker: Tracker, parent: str, invocation: str, trial: str, run_name: str,
                 params: Mapping[str, object], variants: Mapping[str, Mapping[str, object]],
                 *, variant_names: Optional[Mapping[str, str]] = None, reference: str = "",
                 dataset: Optional[Mapping[str, str]] = None):
        """`variant_names`: each variant's run name (orchestrator.ids); by default its id under `trial`.
        `reference`: the variant id of the training's own decode section (plan.reference_variant).
        `dataset`: the prepared dataset as provenance.prepared_dataset gives it."""
        from orchestrator.cost import COST_METRICS, PEAK_HOST_METRIC

        self.tracker = tracker
        training = {k: v for k, v in params.items() if not k.startswith("decode.")}
        self.run_id, before = tracker.trial_run(parent, invocation, trial, run_name, training)
        if before is None:
            decode = ", ".join(f"{label} {params[key]}" for key, label in (("decode.beam_size", "beam"),
                                                                            ("decode.length_penalty", "β"))
                               if key in params)
            tracker.describe(self.run_id, f"Training {run_name} ({params.get('orch.cell', trial)}): its val/* per epoch "
                                          f"are decode variant {reference or '?'}'s, the training's own decode section "
                                          f"({decode}); every variant's scores are in the runs nested under it.")
            tracker.set_tags(self.run_id, {"orch.reference_variant": reference})
            tracker.log_input(self.run_id, dataset)
        # Data the trial prepares itself (the quickstart's synthetic set) is a dataset only once it has:
        # logged with the first epoch then. A dataset logged twice is kept once (Tracker._apply).
        self.unlogged_dataset = params.get("data.prepared") if dataset is None and not before else None
        self.variant_runs = {
            vid: tracker.variant_run(self.run_id, invocation, trial, vid,
                                     (variant_names or {}).get(vid) or variant_id(trial, vid), {**params, **decode_params})
            for vid, decode_params in variants.items()}
        # Finished under an earlier driver: left exactly as it is. Continued: its epochs already
        # logged are not logged again when Tune restores a checkpoint older than the last report,
        # and its cost so far is added to.
        self.closed = before == "FINISHED"
        logged = tracker.client.get_run(self.run_id).data.metrics if before else {}
        self.logged_epoch = logged.get("epoch", 0)
        self.cost_before = {k: v for k, v in logged.items() if k in (*COST_METRICS, PEAK_HOST_METRIC)}
        self.started_at = time.time()  # Tune started the trial (or `orch train` its training)
        self.cost: dict[str, float] = {}
        self._device_tagged = False

    def record(self, report: Mapping[str, object]) -> None:
        """Log one epoch's metrics, cost so far and system metrics on the trial run and each variant
        run's, with step = epoch.

        Only the trainer's own metrics are logged, not the bookkeeping Ray adds to a result.
        """
        from orchestrator.cost import FIELD, TAG_COST_DEVICE, system_metrics, trial_cost

        epoch = int(report["epoch"])
        if self.closed or epoch <= self.logged_epoch:
            return
        if self.unlogged_dataset:
            from orchestrator.provenance import prepared_dataset

            self.tracker.log_input(self.run_id, prepared_dataset(self.unlogged_dataset))
            self.unlogged_dataset = None
        own = {k: v for k, v in report.items() if TRIAL_METRIC.match(k)}
        if f"{FIELD}began" in report:
            self.cost = trial_cost(report, self.started_at, self.cost_before)
            if not self._device_tagged:
                self.tracker.set_tags(self.run_id, {TAG_COST_DEVICE: report[f"{FIELD}device"]})
                self._device_tagged = True
        self.tracker.log_metrics(self.run_id, {**{mlflow_metric(k): v for k, v in own.items()}, **self.cost,
                                               **system_metrics(report)}, step=epoch)
        for vid, run_id in self.variant_runs.items():
            prefix = f"{vid}/"
            self.tracker.log_metrics(run_id, {mlflow_metric(k[len(prefix):]): v for k, v in report.items()
                                              if k.startswith(prefix)}, step=epoch)
        self.logged_epoch = epoch

    def complete(self, report: Mapping[str, object], checkpoint: Optional[Path],
                 status: str = "FINISHED", reason: str = "") -> None:
        """Attach the best checkpoint (also as an MLflow model), sample captions and test predictions,
        then end the runs."""
        if self.closed:
            return
        samples = json.loads(str(report.get("samples_json") or "[]"))
        self.tracker.log_json(self.run_id, samples, "sample_captions.json")
        # A captioner's best checkpoint is stored once, inside its MLflow model (orch export reads it
        # there); a trial that is not a captioner (alignment) keeps it as the artifact best_checkpoint/.
        if checkpoint is not None and not self._log_model(Path(checkpoint),
                                                          int(report.get("best_epoch") or report.get("epoch") or 0)):
            for name in ("best_model.pt", "meta.json"):
                if (Path(checkpoint) / name).is_file():
                    self.tracker.log_file(self.run_id, Path(checkpoint) / name, BEST_CHECKPOINT)
        for vid, run_id in self.variant_runs.items():
            path = _predictions_file(report, checkpoint, vid)
            if path is not None:
                self.tracker.log_file(run_id, path, "predictions")
        self.tracker.set_tags(self.run_id, {"orch.stop_reason": report.get("stop_reason") or reason,
                                            "orch.reference_variant": report.get("reference_variant", "")})
        self.end(status, reason)

    def _log_model(self, checkpoint: Path, best_epoch: int) -> bool:
        """The best weights as an MLflow pyfunc model of the trial run (the UI's Models column offers
        Register): the checkpoint's files. False when the checkpoint is not a whole captioner's.

        A frozen encoder is not in them: loading rebuilds it (torchvision's weights, or a random one
        from its seed) and checks its hash. A random one is stored once per run, in the study's
        folder, not once per trial here: a torch that draws another init fails that check, saying so."""
        import tempfile

        meta_path = checkpoint / "meta.json"
        if not (checkpoint / "best_model.pt").is_file() or not meta_path.is_file():
            return False
        meta = json.loads(meta_path.read_text())
        if meta["config"].get("trainer", "captioner") != "captioner":
            return False  # an alignment model is not a captioner (orch export --metric rsum)
        from orchestrator.pyfunc import save_captioner

        with tempfile.TemporaryDirectory(prefix="orch-model-") as scratch:
            files = Path(scratch) / "checkpoint"
            files.mkdir()
            for name in ("best_model.pt", "meta.json"):
                shutil.copyfile(checkpoint / name, files / name)
            save_captioner(Path(scratch) / "model", files, meta["config"]["decode"])
            self.tracker.log_model(self.run_id, Path(scratch) / "model", CAPTIONER_MODEL, best_epoch)
        return True

    def end(self, status: str, reason: str = "") -> None:
        """End the trial run and its variant runs with one status (FINISHED, FAILED or KILLED)."""
        if self.closed:
            return
        for run_id in self.variant_runs.values():
            self.tracker.end(run_id, status, reason)
        self.tracker.end(self.run_id, status, reason)
        self.closed = True
