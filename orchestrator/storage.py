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
(see orchestrator.tracking.store.artifact_location). MLflow reaches a bucket with boto3, which knows
nothing of pyarrow's query options: `orchestrator.locations.share_endpoint_with_mlflow` hands it an
`endpoint_override`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import pyarrow
import pyarrow.fs

from orchestrator.locations import local_folder
from trainers.errors import InputError

CONFIG_FILE = "orch.yaml"  # the resolved config of one invocation: what `orch resume` re-reads
PLAN_FILE = "plan.json"


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

    def delete(self, relative: str) -> None:
        """Remove one file; one already gone is no error."""
        try:
            self.filesystem.delete_file(self.path(relative))
        except FileNotFoundError:
            pass

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


# ---------------------------------------------------------------------------- one invocation's files
def save_invocation(storage: Storage, name: str, invocation: str, resolved_yaml: str, plan_json: str) -> None:
    """Write the resolved config and the plan where `orch resume` looks for them."""
    storage.write_text(f"{name}/{invocation}/{CONFIG_FILE}", resolved_yaml)
    storage.write_text(f"{name}/{invocation}/{PLAN_FILE}", plan_json)


def invocations(storage: Storage, name: str) -> list[str]:
    """The runs of experiment `name` that hold a config (`run-YYYYmmdd-HHMMSS-mmm-xxxxxx` of `orch run`,
    `train-...` of `orch train`; orchestrator.lease.new_invocation), oldest first."""
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
