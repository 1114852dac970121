"""Where an experiment's results live (`ray.storage`): a local folder, a mount every node shares,
or a bucket (`s3://bucket/prefix`, `gs://bucket/prefix`) reached through pyarrow's filesystems.

Ray Tune writes trials and checkpoints there itself, given `RunConfig(storage_path=...,
storage_filesystem=...)`; the driver writes `orch.yaml` and `plan.json` beside them with the helpers
here, and `orch resume` finds them again the same way, wherever they are.

Credentials never appear in the setting: pyarrow reads them from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for MinIO; GOOGLE_APPLICATION_CREDENTIALS) or the instance
role. Options pyarrow accepts as a query stay with the setting, e.g.
`s3://orch/results?endpoint_override=minio:9000&scheme=http`.

MLflow artifacts (`artifact_location`) go under the storage too, unless an MLflow server keeps them
(see orchestrator.tracking.artifact_location). MLflow reaches a bucket with boto3, which knows
nothing of pyarrow's query options: `share_endpoint_with_mlflow` hands it an `endpoint_override`.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import pyarrow
import pyarrow.fs

from trainers.errors import InputError

CONFIG_FILE = "orch.yaml"  # the resolved config of one invocation: what `orch resume` re-reads
PLAN_FILE = "plan.json"
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
MLFLOW_ENDPOINT_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
STATE_DIR_ENV = "ORCH_STATE_DIR"  # the driver's own local folder for a bucket storage (default ~/.local/state/orch)


@dataclass(frozen=True)
class Storage:
    """A resolved `ray.storage`: the filesystem and the folder on it that everything goes under."""

    setting: str  # what resolves to this place again (an absolute folder, or the URI with its query)
    filesystem: pyarrow.fs.FileSystem
    root: str  # the folder on `filesystem`: an absolute path, or bucket/prefix

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pyarrow.fs.LocalFileSystem)

    def path(self, relative: str = "") -> str:
        """`relative` (posix, e.g. "coursework/run-1") as a path on `filesystem`."""
        return posixpath.join(self.root, relative) if relative else self.root

    def uri(self, relative: str = "") -> str:
        """Where `relative` is, as users and MLflow name it: /abs/folder or s3://bucket/prefix/..."""
        if self.is_local:
            return self.path(relative)
        return f"{urlsplit(self.setting).scheme}://{self.path(relative)}"

    def for_ray(self, relative: str = "") -> tuple[str, Optional[pyarrow.fs.FileSystem]]:
        """(storage_path, storage_filesystem) for Ray Tune's RunConfig and Tuner.restore.

        A local folder goes to Ray as a plain path: given a filesystem object, Ray stages the trial
        folders elsewhere and syncs them, and a restored trial's sync replaces its result.json.
        """
        return self.path(relative), None if self.is_local else self.filesystem

    def locate(self, relative: str = "") -> str:
        """A setting that resolves to `relative` (the folder, or the URI with this setting's options):
        what to pass to `orch resume` or `--storage`."""
        return self.moved(self.path(relative)).setting

    def moved(self, root: str) -> Storage:
        """The same filesystem and options, another folder on it (`root`, a path on `filesystem`)."""
        if self.is_local:
            return Storage(root, self.filesystem, root)
        parts = urlsplit(self.setting)
        return Storage(f"{parts.scheme}://{root}" + (f"?{parts.query}" if parts.query else ""), self.filesystem, root)

    def artifact_location(self) -> str:
        """The MLflow artifact root for experiments whose results live here (a URI, as MLflow wants)."""
        return Path(self.path("mlartifacts")).as_uri() if self.is_local else self.uri("mlartifacts")

    # ------------------------------------------------------------------------------ small files
    def write_text(self, relative: str, text: str) -> None:
        self.filesystem.create_dir(posixpath.dirname(self.path(relative)), recursive=True)
        with self.filesystem.open_output_stream(self.path(relative)) as stream:
            stream.write(text.encode())

    def read_text(self, relative: str) -> str:
        try:
            with self.filesystem.open_input_stream(self.path(relative)) as stream:
                return stream.read().decode()
        except FileNotFoundError:
            raise InputError(f"{self.uri(relative)}: no such file") from None

    def is_file(self, relative: str) -> bool:
        return self.filesystem.get_file_info(self.path(relative)).type == pyarrow.fs.FileType.File

    def folders(self, relative: str = "") -> list[str]:
        """The names of the folders directly under `relative`, sorted; none when it does not exist."""
        selector = pyarrow.fs.FileSelector(self.path(relative), allow_not_found=True)
        return sorted(info.base_name for info in self.filesystem.get_file_info(selector)
                      if info.type == pyarrow.fs.FileType.Directory)

    def find(self, relative: str, name: str) -> list[str]:
        """Every file called `name` below `relative`, as paths relative to the root, sorted."""
        selector = pyarrow.fs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        return sorted(posixpath.relpath(info.path, self.root) for info in self.filesystem.get_file_info(selector)
                      if info.type == pyarrow.fs.FileType.File and info.base_name == name)

    def download(self, relative: str, folder: Path) -> Path:
        """A local copy of one file or folder (in `folder`, under its own name), for readers that need a path."""
        target = Path(folder) / posixpath.basename(relative)
        is_folder = self.filesystem.get_file_info(self.path(relative)).type == pyarrow.fs.FileType.Directory
        (target if is_folder else target.parent).mkdir(parents=True, exist_ok=True)  # copy_files makes only subfolders
        pyarrow.fs.copy_files(self.path(relative), str(target), source_filesystem=self.filesystem,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return target

    def upload(self, local: Path, relative: str) -> None:
        """Copy a local file or folder to `relative` (a folder's contents go below it)."""
        self.filesystem.create_dir(posixpath.dirname(self.path(relative)), recursive=True)
        pyarrow.fs.copy_files(str(local), self.path(relative), source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=self.filesystem)

    def local(self, relative: str, folder: Path) -> Path:
        """`relative` as a local path: itself on a local storage, else a copy downloaded into `folder`."""
        return Path(self.path(relative)) if self.is_local else self.download(relative, folder)


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
        if from_environment.startswith("sqlite:///") and not from_environment.startswith("sqlite:////"):
            return f"sqlite:///{Path(from_environment.removeprefix('sqlite:///')).resolve()}"  # trials run elsewhere
        return from_environment
    folder = local_folder(setting, option)
    if folder is None:
        raise InputError(f"{option} is {setting!r}, where no sqlite file can live: {remedy}")
    return f"sqlite:///{folder / 'mlflow.db'}"


def resolve(setting: str, option: str = "ray.storage") -> Storage:
    """`ray.storage` as written (a folder, file://, s3://, gs://, hdfs://...) -> Storage.

    Raises InputError naming `option` for a setting pyarrow cannot open.
    """
    folder = local_folder(setting, option)
    if folder is not None:
        return Storage(str(folder), pyarrow.fs.LocalFileSystem(), str(folder))
    scheme = urlsplit(setting).scheme
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(setting)
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise InputError(f"{option}: cannot open {setting!r}: {error}") from None
    if not root.strip("/"):
        raise InputError(f"{option}: {setting!r} names no bucket: write {scheme}://bucket/prefix")
    return Storage(setting, filesystem, root.rstrip("/"))


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


# ---------------------------------------------------------------------------- one invocation's files
def save_invocation(storage: Storage, name: str, invocation: str, resolved_yaml: str, plan_json: str) -> None:
    """Write the resolved config and the plan where `orch resume` looks for them."""
    storage.write_text(f"{name}/{invocation}/{CONFIG_FILE}", resolved_yaml)
    storage.write_text(f"{name}/{invocation}/{PLAN_FILE}", plan_json)


def invocations(storage: Storage, name: str) -> list[str]:
    """The runs of experiment `name` that hold a config (`run-YYYYmmdd-HHMMSS` of `orch run`,
    `train-YYYYmmdd-HHMMSS` of `orch train`), oldest first."""
    return sorted((folder for folder in storage.folders(name)
                   if folder.startswith(("run-", "train-")) and storage.is_file(f"{name}/{folder}/{CONFIG_FILE}")),
                  key=lambda folder: folder.split("-", 1)[1])


def find_invocation(name_or_run: str, storage_setting: str) -> tuple[Storage, str, str]:
    """What `orch resume NAME_OR_RUN` means: (storage, name, invocation).

    NAME_OR_RUN is a run folder or URI (holding orch.yaml), or an experiment name whose newest run
    under `storage_setting` is meant.
    """
    given = resolve(name_or_run, "orch resume") if "://" in name_or_run or Path(name_or_run).is_dir() else None
    if given is not None and given.is_file(CONFIG_FILE):
        experiment = posixpath.dirname(given.root)
        return given.moved(posixpath.dirname(experiment)), posixpath.basename(experiment), \
            posixpath.basename(given.root)
    storage = resolve(storage_setting, "--storage")
    runs = invocations(storage, name_or_run)
    if not runs:
        raise InputError(f"{name_or_run!r}: neither a run folder (with {CONFIG_FILE}) nor an experiment "
                         f"with runs under {storage.uri()}/")
    return storage, name_or_run, runs[-1]
