"""Where an experiment's results live (`ray.storage`): a local folder, a mount every node shares,
or a bucket (`s3://bucket/prefix`, `gs://bucket/prefix`) reached through pyarrow's filesystems.

Ray Tune writes trials and checkpoints there itself, given `RunConfig(storage_path=...,
storage_filesystem=...)`; the driver writes `orch.yaml` and `plan.json` beside them with the helpers
here, and `orch resume` finds them again the same way, wherever they are.

Credentials never appear in the setting: pyarrow reads them from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for MinIO; GOOGLE_APPLICATION_CREDENTIALS) or the instance
role. Options pyarrow accepts as a query stay with the setting, e.g.
`s3://orch/results?endpoint_override=minio:9000&scheme=http`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow
import pyarrow.fs

from trainers.errors import InputError

CONFIG_FILE = "orch.yaml"  # the resolved config of one invocation: what `orch resume` re-reads
PLAN_FILE = "plan.json"
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


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

    def for_ray(self, relative: str = "") -> tuple[str, pyarrow.fs.FileSystem]:
        """(storage_path, storage_filesystem) for Ray Tune's RunConfig and Tuner.restore."""
        return self.path(relative), self.filesystem

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
        """A local copy of one file (in `folder`), for readers that need a path."""
        target = Path(folder) / posixpath.basename(relative)
        target.write_text(self.read_text(relative))
        return target


def resolve(setting: str) -> Storage:
    """`ray.storage` as written (a folder, file://, s3://, gs://, hdfs://...) -> Storage.

    A local folder is made absolute against the current directory: trials run elsewhere.
    Raises InputError naming `ray.storage` for a setting pyarrow cannot open.
    """
    scheme = urlsplit(setting).scheme
    if scheme in ("", "file"):
        folder = Path(setting.removeprefix("file://") if scheme == "file" else setting).expanduser().resolve()
        return Storage(str(folder), pyarrow.fs.LocalFileSystem(), str(folder))
    if scheme not in REMOTE_SCHEMES:
        raise InputError(f"ray.storage: {setting!r} is neither a folder nor a storage URI "
                         f"({', '.join(s + '://' for s in ('file',) + REMOTE_SCHEMES)})")
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(setting)
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise InputError(f"ray.storage: cannot open {setting!r}: {error}") from None
    if not root.strip("/"):
        raise InputError(f"ray.storage: {setting!r} names no bucket: write {scheme}://bucket/prefix")
    return Storage(setting, filesystem, root.rstrip("/"))


def _moved(storage: Storage, root: str) -> Storage:
    """The same filesystem and options, another folder on it."""
    if storage.is_local:
        return Storage(root, storage.filesystem, root)
    parts = urlsplit(storage.setting)
    query = f"?{parts.query}" if parts.query else ""
    return Storage(f"{parts.scheme}://{root}{query}", storage.filesystem, root)


# ---------------------------------------------------------------------------- one invocation's files
def save_invocation(storage: Storage, name: str, invocation: str, resolved_yaml: str, plan_json: str) -> None:
    """Write the resolved config and the plan where `orch resume` looks for them."""
    storage.write_text(f"{name}/{invocation}/{CONFIG_FILE}", resolved_yaml)
    storage.write_text(f"{name}/{invocation}/{PLAN_FILE}", plan_json)


def invocations(storage: Storage, name: str) -> list[str]:
    """The runs of experiment `name` that hold a config (`run-YYYYmmdd-HHMMSS`), oldest first."""
    return [folder for folder in storage.folders(name)
            if folder.startswith("run-") and storage.is_file(f"{name}/{folder}/{CONFIG_FILE}")]


def find_invocation(name_or_run: str, storage_setting: str) -> tuple[Storage, str, str]:
    """What `orch resume NAME_OR_RUN` means: (storage, name, invocation).

    NAME_OR_RUN is a run folder or URI (holding orch.yaml), or an experiment name whose newest run
    under `storage_setting` is meant.
    """
    given = resolve(name_or_run) if "://" in name_or_run or Path(name_or_run).is_dir() else None
    if given is not None and given.is_file(CONFIG_FILE):
        experiment = posixpath.dirname(given.root)
        return _moved(given, posixpath.dirname(experiment)), posixpath.basename(experiment), \
            posixpath.basename(given.root)
    storage = resolve(storage_setting)
    runs = invocations(storage, name_or_run)
    if not runs:
        raise InputError(f"{name_or_run!r}: neither a run folder (with {CONFIG_FILE}) nor an experiment "
                         f"with runs under {storage.uri()}/")
    return storage, name_or_run, runs[-1]
