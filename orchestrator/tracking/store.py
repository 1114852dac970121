"""Reaching an MLflow store: where a new experiment keeps its artifacts, a sqlite store's creation
lock, bounded HTTP retries, which failures mean a server is away, the server probes, and one
InputError for a store that is not one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from filelock import FileLock

from orchestrator.credentials import masked
from orchestrator.storage import Storage
from trainers.errors import DiskFull, InputError, disk_full

SERVER_SCHEMES = ("http", "https", "databricks")  # stores whose server decides where artifacts go


def artifact_location(uri: str, storage: Storage) -> Optional[str]:
    """Where a new experiment of the store at `uri` keeps its artifacts, given `ray.storage`.

    An MLflow server keeps them in its own artifact store (`--serve-artifacts`, or its
    `--default-artifact-root`): None, the server decides, and clients need no access to it. A store
    MLflow writes itself (sqlite, PostgreSQL, MySQL) puts them under the results:
    `<ray.storage>/mlartifacts`, a local folder or `s3://bucket/prefix/mlartifacts`, where every
    machine that reads the store finds them (not in MLflow's default `./mlartifacts` of whichever
    folder the command ran in)."""
    if urlsplit(uri).scheme in SERVER_SCHEMES:
        return None
    return storage.artifact_location()

def store_creation_lock(uri: str):
    """Two commands opening a new sqlite store at once would both run its schema migrations, or both
    create the experiment: one of them fails. A file lock beside the database serialises that."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()  # a server or a database server handles its own concurrency
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(database) + ".lock")



# A driver waits at most about 1 + 2 + 4 s plus three 20 s timeouts on one request, not MLflow's
# default 7 retries with backoff 2 and 120 s timeouts (minutes of silence per request).
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def bounded_http_retries() -> None:
    """MLflow's HTTP retry settings for this process, unless the user set them (MLflow reads them per request)."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def no_printed_passwords(uri: str) -> None:
    """MLflow prints each ended run's URL on the host as `uri` gives it: with a password in it, MLflow
    prints nothing (orch shows the store masked itself: orchestrator.credentials)."""
    if masked(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


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
            raise InputError(f"{masked(self.uri)}: the MLflow server does not answer ({short_reason(error)}) (start it, or point "
                             f"tracking.uri / MLFLOW_TRACKING_URI at the right one)") from None
        if error is None:
            return False
        if disk_full(error) is not None:
            raise DiskFull(store_path(self.uri)) from None
        if not self.uri.startswith("sqlite:///"):
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




def store_path(uri: str) -> str:
    """Where a store keeps its data, as a user would look for it: a sqlite file's path, else the URI (masked)."""
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else masked(uri)


def short_reason(error: BaseException) -> str:
    """'Connection refused', 'timed out', ... out of requests' long wrapped message."""
    text = str(error)
    for sign in ("Connection refused", "timed out", "Max retries exceeded", "with code 50"):
        if sign in text:
            return sign.replace("with code", "HTTP")
    return type(error).__name__


def server_answers(uri: str, timeout_s: float = 3.0) -> bool:
    """Whether a tracking server is back: one request to MLflow's public `/health`, no retries (a
    database store: assume so)."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return True
    import requests

    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False
