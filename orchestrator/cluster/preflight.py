"""Checks `orch run` makes before any trial starts: can it reach what the config points at?

A cluster run that discovers an unreachable MLflow server or a wrong Ray address only after its
trials trained has spent GPU hours for nothing (MLflow's own client retries for minutes; `ray.init`
waits as long). So the tracking store, the results storage and the Ray cluster are each tried once,
with a short timeout, and the first that fails stops the command with a message naming the key to
fix. Failures are `PreflightError`, an InputError: exit code 2, nothing started, nothing written.

Credentials are MLflow's own: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (basic auth) or
MLFLOW_TRACKING_TOKEN, read by MLflow's request code exactly as the run itself will send them; a
password inside the URI is shown masked. A Ray cluster is asked for the token the run will send
(orchestrator.cluster.auth), and one that asks for none is said in a note.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import pyarrow
import pyarrow.fs

from orchestrator.cluster import auth
from orchestrator.credentials import masked
from orchestrator.settings import LOCAL_RAY, RunSettings
from orchestrator.storage import Storage
from trainers.errors import InputError

CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # with or without +driver
SEARCH_ENDPOINT = "/api/2.0/mlflow/experiments/search"
BUCKET_SCHEMES = ("s3", "gs", "gcs")  # a storage root there is bucket/prefix


class PreflightError(InputError):
    """Something the run needs cannot be reached; the message names the setting to fix."""


def check_settings(settings: RunSettings, timeout_s: float = 10.0) -> list[str]:
    """Raise PreflightError unless the run's storage, tracking store and Ray cluster all answer; the
    notes to show (a cluster without authentication)."""
    check_storage(settings.storage)
    check_tracking(settings.tracking_uri, timeout_s)
    if settings.ray_address == LOCAL_RAY:  # a new local Ray: nothing to reach
        return []
    note = check_ray_address(settings.ray_address, settings.ray_source, timeout_s)
    return [note] if note else []


# ------------------------------------------------------------------------------------- storage
def check_storage(storage: Storage) -> None:
    """A bucket answers with the credentials in the environment, and exists (a local folder, or the
    prefix in a bucket, is made by the run; the bucket is not, unless the URI allows it)."""
    if storage.is_local:
        return
    parts = urlsplit(storage.setting)
    bucket = storage.root.split("/")[0]
    try:
        storage.filesystem.get_file_info(storage.root)
        missing = (parts.scheme in BUCKET_SCHEMES
                   and parse_qs(parts.query).get("allow_bucket_creation", [""])[0].lower() != "true"
                   and storage.filesystem.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound)
    except (OSError, pyarrow.ArrowException) as error:
        raise PreflightError(f"ray.storage: cannot reach {storage.uri()}: {_first_line(error)} (credentials come "
                             f"from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL "
                             f"for MinIO; GOOGLE_APPLICATION_CREDENTIALS)") from None
    if missing:
        raise PreflightError(f"ray.storage: the bucket {bucket!r} of {storage.uri()} does not exist: create it "
                             f"(or add allow_bucket_creation=true to the URI's query). Nothing was started.")


# ------------------------------------------------------------------------------------ tracking
def check_tracking(uri: str, timeout_s: float = 10.0) -> None:
    """An MLflow server answers an authenticated request; a database accepts a connection."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme in DATABASE_SCHEMES:
        _check_database(uri, timeout_s)
    # sqlite and file stores are local files the run creates; databricks handles its own login


def _check_server(uri: str, timeout_s: float) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    shown = masked(uri)
    try:
        response = http_request(get_default_host_creds(uri), SEARCH_ENDPOINT, "POST", max_retries=0,
                                backoff_factor=0, timeout=timeout_s, raise_on_status=False,
                                json={"max_results": 1})
    except MlflowException as error:
        raise PreflightError(f"tracking.uri: cannot reach the MLflow server at {shown} ({_network_reason(error)}); "
                             f"start it, or point tracking.uri at it. Nothing was started.") from None
    if response.status_code == 401:
        given = [name for name in CREDENTIAL_VARIABLES if os.environ.get(name)]
        said = f"it refused {', '.join(given)}" if given else "none of " + ", ".join(CREDENTIAL_VARIABLES) + " is set"
        raise PreflightError(f"tracking.uri: the MLflow server at {shown} asks for credentials and {said}: "
                             f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if response.status_code == 403:
        raise PreflightError(f"tracking.uri: the MLflow server at {shown} accepted the credentials but denies "
                             f"this user access to experiments (HTTP 403): ask its admin for EDIT permission")
    if response.status_code != 200 or "json" not in response.headers.get("Content-Type", ""):
        raise PreflightError(f"tracking.uri: {shown} answered HTTP {response.status_code} "
                             f"({response.text.strip()[:200] or 'no body'}), not as an MLflow tracking server does")


def _check_database(uri: str, timeout_s: float) -> None:
    import sqlalchemy

    shown = masked(uri)
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, int(timeout_s))})
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as error:
        raise PreflightError(f"tracking.uri: {shown} needs a database driver this Python lacks ({error}); "
                             f"for PostgreSQL: pip install 'psycopg[binary]'") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as error:
        reason = _first_line(getattr(error, "orig", None) or error)
        raise PreflightError(f"tracking.uri: cannot connect to the database {shown} ({reason})") from None
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------ Ray
def check_ray_address(address: Optional[str], source: str = "ray.address", timeout_s: float = 10.0) -> Optional[str]:
    """The cluster's head answers on its port and takes the token the run sends (None: a local Ray is
    started, nothing to check); a note when the cluster asks for no token."""
    if address is None:
        return None
    target = address
    if address == "auto":
        # Ray's own lookup for "auto": RAY_ADDRESS, then the cluster `ray start` recorded on this machine.
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            target = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError:
            raise PreflightError(f"{source}: auto found no running Ray cluster on this machine: start one "
                                 f"(`ray start --head`) or give the head's host:port") from None
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        raise PreflightError(f"{source}: no Ray cluster answers at {target} ({_first_line(error)}): start it "
                             f"(`ray start --head`), or fix the address. Nothing was started.") from None
    if target.startswith("ray://"):  # Ray Client's server: it takes the token ray.init sends, asked of it there
        return None
    return check_ray_token(target, source)


def check_ray_token(address: str, source: str) -> Optional[str]:
    """The Ray cluster whose GCS is at `address` takes the token the environment gives
    (orchestrator.cluster.auth), and this process is left sending it; a note when it asks for none.
    Asked without a token first: an open cluster is joined without one (its workers would refuse a
    job that sends one; Ray's own ~/.ray/auth_token, written for a local Ray, is no token for it)."""
    token, origin = auth.given_token()
    auth.use_token(None)
    if _gcs_takes(address, source):
        return (f"{source}: the Ray cluster at {address} has no token authentication: anyone who reaches it can "
                f"run code on it (docs/cluster.md, Security)")
    if token is None:
        raise PreflightError(f"{source}: the Ray cluster at {address} asks for a token and none of "
                             f"{auth.TOKEN_VARIABLE}, {auth.PATH_VARIABLE} is set: set {auth.TOKEN_VARIABLE} to the "
                             f"cluster's token (or {auth.PATH_VARIABLE} to a file holding it). Nothing was started.")
    auth.use_token(token)
    if not _gcs_takes(address, source):
        raise PreflightError(f"{source}: the Ray cluster at {address} refused the token in {origin}: set "
                             f"{auth.TOKEN_VARIABLE} to the cluster's token. Nothing was started.")
    return None


def _gcs_takes(address: str, source: str) -> bool:
    """A client of the GCS at `address` connects with this process's token: True; refused: False.
    Ray's C++ client logs each refusal on stderr, kept off the terminal: the verdict is one line."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        GcsClient(address=address)
        return True
    except AuthenticationError:
        return False
    except Exception as error:  # noqa: BLE001 - whatever Ray's client says, the port is not a head it can use
        raise PreflightError(f"{source}: {address} answers, but not as a Ray cluster's head "
                             f"({_first_line(error)}): give the head's GCS address (port 6379 by default)") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def check_cluster_gpus(need: float, resources: dict, address: str, source: str = "") -> None:
    """The Ray cluster holds one trial's GPU (`resources`: ray.cluster_resources()); a plan whose trials
    reserve GPUs no node has would wait for them forever. `address` "local": a local Ray on this
    machine, whose trials also need a torch that can use its GPU (trainers.devices says why not)."""
    if need <= 0:
        return
    have, local = float(resources.get("GPU", 0.0)), address == "local"  # orchestrator.settings.LOCAL_RAY
    if local and have < need:
        raise PreflightError(f"resources.gpu: {need:g} per trial, but the local Ray on this machine (ray.address: "
                             f"null) has {have:g} GPUs: run on a machine with a GPU, join a GPU cluster (--address "
                             f"or ray.address), or set resources.gpu: 0 to train on CPUs. Nothing was started.")
    if have < need:
        raise PreflightError(f"resources.gpu: {need:g} per trial, but the Ray cluster at {address} ({source}) has "
                             f"{have:g} GPUs: join a cluster with GPU nodes, set resources.gpu: 0 to train on CPUs, "
                             f"or set ray.autoscaling: true if its autoscaler adds GPU nodes on demand. "
                             f"Nothing was started.")
    if local:  # the trials run here, on this torch
        from trainers.devices import cuda_diagnosis, torch_cuda_usable

        if not torch_cuda_usable():
            raise PreflightError(f"resources.gpu: {need:g} per trial, but {cuda_diagnosis()}. Nothing was started.")


# ------------------------------------------------------------------------------------ messages
def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def _network_reason(error: BaseException) -> str:
    """'Connection refused', 'timed out', ... out of requests' long wrapped message."""
    text = f"{error} {error.__context__ or ''}"
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    return "timed out" if "timed out" in text.lower() else _first_line(error)
