"""`orch resume NAME_OR_RUN`: an interrupted `orch run` (or `orch train`) continued.

The invocation a run folder or URI names, or an experiment's newest under `--storage`, continues
with the config it was started with, on the storage it was found on. It reads only orch.yaml (YAML,
safe loader), MLflow and checkpoints' meta.json: nothing Ray pickled (orchestrator.cluster.studies).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import yaml
from rich.console import Console

from orchestrator.credentials import is_masked, masked
from orchestrator.experiment.loader import load_config
from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.locations import TRACKING_URI_VARIABLE, local_folder
from orchestrator.settings import RunSettings
from orchestrator.storage import CONFIG_FILE, Storage, find_invocation
from trainers.errors import InputError


def resume(name_or_run: str, storage_setting: str, console: Console) -> int:
    """`orch resume`: the invocation a run folder or URI names, or experiment `name`'s newest under
    `storage_setting`, continued with the config it was started with, on the storage it was found on.

    Reads only orch.yaml (YAML, safe loader), MLflow and checkpoints' meta.json: nothing Ray pickled."""
    storage, name, invocation = find_invocation(name_or_run, storage_setting)
    config = saved_config(storage, name, invocation)
    settings = RunSettings.resolve(config, invocation=invocation, storage=storage)
    if invocation.startswith("train-"):  # a killed `orch train`: continued in this process, no Ray
        from orchestrator.commands.train import train_one

        train_one(settings, console)
        return 0
    from orchestrator.cluster.launcher import run_plan
    from orchestrator.experiment.plan import make_plan

    console.print(f"resuming {storage.uri(f'{name}/{invocation}')}", highlight=False)
    return run_plan(settings, make_plan(config), console)


def saved_config(storage: Storage, name: str, invocation: str) -> ExperimentConfig:
    """The config an invocation was started with, on the storage it was found on: `ray.storage` is where
    it is now, and a tracking store that was the storage's embedded default follows it there (a
    results folder that moved keeps its MLflow store)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = storage.local(f"{name}/{invocation}/{CONFIG_FILE}", Path(scratch))
        try:
            written = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            written = None  # load_config names what is wrong with it, and where
        written = written if isinstance(written, dict) else {}
        overrides = [f"ray.storage={json.dumps(storage.setting)}"]
        saved_storage = (written.get("ray") or {}).get("storage")
        saved_uri = (written.get("tracking") or {}).get("uri")
        if saved_storage and saved_uri == embedded_store(saved_storage):
            overrides.append("tracking.uri=null")
        elif isinstance(saved_uri, str) and is_masked(saved_uri):
            overrides.append(f"tracking.uri={json.dumps(with_password(saved_uri))}")
        return load_config(path, overrides, saved=True,
                           trials=not invocation.startswith("train-"))  # a killed `orch train` reserved nothing


def with_password(saved_uri: str) -> str:
    """A tracking.uri orch.yaml holds with its password masked (orchestrator.credentials), whole again:
    MLFLOW_TRACKING_URI gives the same URI with its password."""
    given = os.environ.get(TRACKING_URI_VARIABLE, "")
    if given and masked(given) == saved_uri:
        return given
    raise InputError(f"tracking.uri: orch.yaml holds {saved_uri}, its password masked: export "
                     f"{TRACKING_URI_VARIABLE} with the whole URI and resume again")


def embedded_store(storage_setting: str) -> Optional[str]:
    """The sqlite store a local storage holds when no tracking.uri is given; None for a bucket."""
    folder = local_folder(storage_setting)
    return f"sqlite:///{folder / 'mlflow.db'}" if folder is not None else None
