"""Where a run's things are on this machine, without opening any storage: the default results
folder, a local `ray.storage`'s absolute folder, the driver's own folder for a bucket storage, the
embedded tracking store, and MLflow's S3 endpoint. Light on purpose: every config load reads it
(orchestrator.storage opens the storages themselves, with pyarrow)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from trainers.errors import InputError

DEFAULT_STORAGE = "results"  # ray.storage, and --storage of the read commands, when none is given
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
MLFLOW_ENDPOINT_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
STATE_DIR_ENV = "ORCH_STATE_DIR"  # the driver's own local folder for a bucket storage (default ~/.local/state/orch)


def local_folder(setting: str, option: str = "ray.storage") -> Optional[Path]:
    """The absolute folder a local setting (a path, or file://) names; None for a bucket URI.

    A relative folder is made absolute against the current directory: trials run elsewhere.
    Raises InputError naming `option` for a scheme that is neither.
    """
    scheme = urlsplit(setting).scheme
    if scheme in ("", "file"):
        return Path(setting.removeprefix("file://") if scheme == "file" else setting).expanduser().resolve()
    if scheme not in REMOTE_SCHEMES:
        raise InputError(f"{option}: {setting!r} is neither a folder nor a storage URI "
                         f"({', '.join(s + '://' for s in ('file',) + REMOTE_SCHEMES)})")
    return None


def driver_folder(setting: str, option: str = "ray.storage") -> Path:
    """The local folder where the driver keeps, per storage, what must outlive it on this machine: the
    journal of tracking writes a server did not take, and `orch train`'s run folder between uploads.

    A local storage is its own driver folder. A bucket gets one under ORCH_STATE_DIR (default
    ~/.local/state/orch), named after the bucket and prefix, so a killed driver's journal is found
    again by `orch status` and `orch resume` run on the same machine."""
    folder = local_folder(setting, option)
    if folder is not None:
        return folder
    parts = urlsplit(setting)
    home = Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".local" / "state" / "orch").expanduser()
    return home / "storage" / parts.scheme / (parts.netloc + parts.path).strip("/")


def default_tracking_uri(setting: str, option: str = "ray.storage",
                         remedy: str = "set tracking.uri (an MLflow server, or sqlite:///PATH)") -> str:
    """The store of a command whose config names none: MLFLOW_TRACKING_URI when set (MLflow users set
    it), else the embedded default, a sqlite file in a local storage folder. A config's tracking.uri
    comes first; this is the one place the rest is decided.

    A bucket cannot hold a sqlite file (it needs a filesystem with locks): InputError naming `option` and `remedy`."""
    from_environment = os.environ.get(TRACKING_URI_VARIABLE, "").strip()
    if from_environment:
        return absolute_sqlite(from_environment)
    folder = local_folder(setting, option)
    if folder is None:
        raise InputError(f"{option} is {setting!r}, where no sqlite file can live: {remedy}")
    return f"sqlite:///{folder / 'mlflow.db'}"


def absolute_sqlite(uri: str) -> str:
    """A sqlite tracking URI with its path made absolute (trials run in their own working folders, where
    a relative path would scatter the store); any other URI as it is."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def share_endpoint_with_mlflow(setting: str) -> None:
    """Point MLflow's S3 client (boto3) at the endpoint an s3:// setting names in its query.

    pyarrow reads `endpoint_override` from the setting; boto3 reads only the environment. Without
    this, artifacts of a MinIO storage would go to AWS. An endpoint the environment already names
    (MLFLOW_S3_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL) is left as it is."""
    parts = urlsplit(setting)
    endpoint = parse_qs(parts.query).get("endpoint_override")
    if parts.scheme != "s3" or not endpoint or any(os.environ.get(v) for v in MLFLOW_ENDPOINT_VARIABLES):
        return
    scheme = parse_qs(parts.query).get("scheme", ["https"])[0]
    os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint[0] if "://" in endpoint[0] else f"{scheme}://{endpoint[0]}"
