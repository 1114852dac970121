"""`orch status` and the store lookups `orch ui` needs: read-only views of what MLflow holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.console import Console

from orchestrator import terminal
from orchestrator.status import cell_rows, cell_table, latest_invocation, rows_as_json, sort_rows
from orchestrator.storage import default_tracking_uri, driver_folder, share_endpoint_with_mlflow
from orchestrator.tracking import Tracker, replay_journals, store_errors
from trainers.errors import InputError


def store_uri(config: Optional[Path], storage: str) -> str:
    """The tracking URI of a config file, else MLFLOW_TRACKING_URI, else the embedded default store
    under the `storage` folder (storage.default_tracking_uri decides the last two).

    A bucket holds no sqlite store: name the tracking.uri with --config. With a config, MLflow is also
    pointed at the endpoint of its ray.storage, where the artifacts of a serverless store live."""
    if config is not None:
        from orchestrator.config import load_config

        loaded = load_config(config)
        share_endpoint_with_mlflow(loaded.ray.storage)
        return loaded.tracking.uri
    return default_tracking_uri(storage, "--storage", "pass --config with the experiment's YAML (its tracking.uri)")


def _config_storage(config: Path) -> str:
    from orchestrator.config import load_config

    return load_config(config).ray.storage


def experiment_names(uri: str) -> list[str]:
    from mlflow import MlflowClient

    with store_errors(uri):
        return [e.name for e in MlflowClient(tracking_uri=uri).search_experiments() if e.name != "Default"]


def show_status(name: Optional[str], config: Optional[Path], storage: str, as_json: bool, console: Console) -> None:
    uri = store_uri(config, storage)
    if not uri.startswith(("http://", "https://")) and uri.startswith("sqlite:///") \
            and not Path(uri[len("sqlite:///"):]).exists():
        raise InputError(f"no MLflow store at {uri}: run `orch run` first, or pass --storage / --config")
    names = [name] if name else experiment_names(uri)
    report = {}
    for experiment in names:
        if name and experiment not in experiment_names(uri):
            raise InputError(f"no experiment named {experiment!r} in {uri} "
                             f"(known: {', '.join(experiment_names(uri)) or 'none'})")
        # Runs whose server went away: their journaled writes first, in order.
        folder = driver_folder(storage, "--storage") if config is None else \
            driver_folder(_config_storage(config), "ray.storage")
        replayed = replay_journals(uri, experiment, folder / experiment, say=console.print)
        if replayed and not as_json:
            console.print(f"replayed {replayed} journaled tracking write(s) of {experiment}")
        tracker = Tracker(uri, experiment)
        repaired = tracker.repair_orphans()
        invocation = latest_invocation(tracker)
        rows = cell_rows(tracker, invocation) if invocation else []
        select_by = rows[0].params.get("eval.select_by", "CIDEr") if rows else "CIDEr"  # as the run ranked them
        rows = sort_rows(rows, select_by)
        report[experiment] = {"invocation": invocation, "repaired": repaired, "cells": rows_as_json(rows)}
        if not as_json:
            if repaired:
                console.print(f"marked {len(repaired)} run(s) left RUNNING by a dead driver as KILLED")
            terminal.console().print(cell_table(rows, select_by, f"{experiment} ({invocation or 'no runs'})"))
    if as_json:
        print(json.dumps(report, default=str))
