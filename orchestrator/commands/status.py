"""`orch status [NAME]`: every trial and decode variant of an experiment's latest run, as MLflow holds it.

Read-only, but for two repairs a user expects: the journaled writes of a run whose server went away
are replayed first, in order, and runs a dead driver left RUNNING are marked KILLED.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.console import Console

from orchestrator import terminal
from orchestrator.credentials import masked
from orchestrator.reporting.tables import cell_table, rows_as_json, sort_rows
from orchestrator.settings import RunSettings
from orchestrator.tracking.reader import cell_rows, experiment_names, latest_invocation
from orchestrator.tracking.writer import Tracker, replay_journals
from trainers.errors import InputError

SELECT_BY = "CIDEr"  # how a store's rows are ranked when none of them says (eval.select_by)


def show_status(name: Optional[str], settings: RunSettings, as_json: bool, console: Console) -> None:
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise InputError(f"no MLflow store at {uri}: run `orch run` first, or pass --storage / --config")
    known = experiment_names(uri)
    if name and name not in known:
        raise InputError(f"no experiment named {name!r} in {masked(uri)} (known: {', '.join(known) or 'none'})")
    report = {}
    for experiment in [name] if name else known:
        # Runs whose server went away: their journaled writes first, in order.
        replayed = replay_journals(uri, experiment, settings.driver_root / experiment, say=console.print)
        if replayed and not as_json:
            console.print(f"replayed {replayed} journaled tracking write(s) of {experiment}")
        tracker = Tracker(uri, experiment)
        repaired = tracker.repair_orphans()
        invocation = latest_invocation(tracker)
        rows = cell_rows(tracker, invocation) if invocation else []
        select_by = rows[0].params.get("eval.select_by", SELECT_BY) if rows else SELECT_BY  # as the run ranked them
        rows = sort_rows(rows, select_by)
        report[experiment] = {"invocation": invocation, "repaired": repaired, "cells": rows_as_json(rows)}
        if not as_json:
            if repaired:
                console.print(f"marked {len(repaired)} run(s) left RUNNING by a dead driver as KILLED")
            terminal.console().print(cell_table(rows, select_by, f"{experiment} ({invocation or 'no runs'})"))
    if as_json:
        print(json.dumps(report, default=str))
