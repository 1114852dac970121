"""A command's settings, resolved once at the edge and handed down (docs/architecture.md, "Settings").

`orch run`, `orch resume` and `orch train` build `RunSettings.resolve(config, ...)`; the read
commands (`orch status`, `report`, `export`, `ui`) build `RunSettings.for_reading(...)`. Everything
below them reads the storage, the invocation, the driver's folder and journal, the Ray address and
the setting that named it, the tracking URI and experiment, and the metric that ranks trainings
from here, and never from the loose config keys again: what the plan prints is what runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping, Optional

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.lease import new_invocation
from orchestrator.locations import default_tracking_uri, driver_folder
from orchestrator.storage import Storage, resolve
from orchestrator.tracking.journal import JOURNAL_FILE
from trainers.config import selection_metric

LOCAL_RAY = "local"  # ray.init's address for "start a new local Ray, whatever else runs on this machine"


@dataclass(frozen=True)
class RunSettings:
    config: Optional[ExperimentConfig]  # None for a read command given no config file
    storage_setting: str  # `ray.storage` (or `--storage`) as it resolves: a folder or a URI
    tracking_uri: str
    experiment: Optional[str]  # the MLflow experiment; None: a read command's, given by its NAME argument
    invocation: Optional[str] = None  # run-YYYYmmdd-HHMMSS-mmm-xxxxxx or train-..., the folder under <storage>/<name>/
    ray_address: str = LOCAL_RAY  # "local" (a fresh Ray for this run), "auto", host:port or ray://host:port
    ray_source: str = ""  # the setting that named the address: --address, ray.address or RAY_ADDRESS
    metric: str = "val_CIDEr"  # the reported metric that ranks trainings (val_CIDEr, val_loss, ...)
    mode: str = "max"  # its direction
    resuming: bool = False

    @classmethod
    def resolve(cls, config: ExperimentConfig, *, address: Optional[str] = None, invocation: Optional[str] = None,
                storage: Optional[Storage] = None, command: str = "run",
                environ: Mapping[str, str] = os.environ) -> "RunSettings":
        """A run's settings. `invocation` given: a resume of it, on the `storage` it was found on; else a
        new one named after `command` (`run-...` for `orch run`, `train-...` for `orch train`)."""
        ray_address, source = ray_address_of(config, address, environ)
        metric, mode = selection_metric(config.eval.select_by)
        settings = cls(config, storage.setting if storage is not None else config.ray.storage, config.tracking.uri,
                       config.tracking.experiment, invocation or new_invocation(command),
                       ray_address, source, metric, mode, resuming=invocation is not None)
        if storage is not None:
            settings.__dict__["storage"] = storage  # already resolved: the cached_property's value
        return settings

    @classmethod
    def for_reading(cls, config: Optional[ExperimentConfig], storage_setting: str) -> "RunSettings":
        """A read command's store: a config's tracking.uri (and its storage), else MLFLOW_TRACKING_URI,
        else the embedded store under `storage_setting` (`--storage`). A bucket holds no sqlite store:
        its tracking.uri comes with --config."""
        if config is not None:
            from orchestrator.locations import share_endpoint_with_mlflow

            share_endpoint_with_mlflow(config.ray.storage)  # the artifacts of a serverless store live there
            metric, mode = selection_metric(config.eval.select_by)
            return cls(config, config.ray.storage, config.tracking.uri, config.tracking.experiment, metric=metric,
                       mode=mode)
        uri = default_tracking_uri(storage_setting, "--storage", "pass --config with the experiment's YAML "
                                                                 "(its tracking.uri)")
        return cls(None, storage_setting, uri, None)

    @cached_property
    def storage(self) -> Storage:
        return resolve(self.storage_setting, "ray.storage" if self.config is not None else "--storage")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def folder(self) -> str:
        """The invocation's folder, relative to the storage."""
        return f"{self.config.name}/{self.invocation}"

    @property
    def driver_root(self) -> Path:
        """This machine's folder for the storage: the storage itself when local, else one of the
        driver's own (orchestrator.locations.driver_folder)."""
        return driver_folder(self.storage_setting, "ray.storage" if self.config is not None else "--storage")

    @property
    def driver_folder(self) -> Path:
        """The invocation's folder on this machine: the run folder itself on a local storage."""
        return self.driver_root / self.folder

    @property
    def journal(self) -> Path:
        """The run's journal of tracking writes the server did not take, on this machine's disk."""
        return self.driver_folder / JOURNAL_FILE

    @property
    def run_key(self) -> str:
        """The `orch.invocation` tag of its MLflow runs."""
        return self.folder

    def describe_ray(self) -> str:
        if self.ray_address == LOCAL_RAY:
            return "a new local Ray for this run (ray.address: null)"
        return f"joining {self.ray_address} ({self.ray_source})"


def ray_address_of(config: ExperimentConfig, address: Optional[str],
                   environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The address ray.init gets and the setting that named it.

    `ray.address: null` means a new local Ray for this run: ray.init(address="local"), never
    ray.init(address=None), which joins the cluster Ray's `ray_current_cluster` file names (a dead one
    after a killed `ray start --head` hangs the run; a live one runs the ablation on it unasked).
    Joining is `auto`, an address, `--address`, or RAY_ADDRESS exported on purpose (Slurm, RayJob)."""
    if address:
        return address, "--address"
    if config.ray.address:
        return config.ray.address, "ray.address"
    if environ.get("RAY_ADDRESS"):
        return environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return LOCAL_RAY, ""
