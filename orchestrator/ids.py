"""The one name of each training and each decode variant, wherever a user reads it.

Progress lines, the `orch run`/`orch status` tables, MLflow run names, export folders and the
report all say `c002` for the training of grid cell c002 (`c002-95f7f_00001` for one search sample
of it) and `c002-d03` for its decode variant d03: the same string everywhere, and safe in a file
name. MLflow run names add the factors' values after the id, each labelled as in the progress
lines (`c002 decoder=gru max_rate=0.25`), short enough for the run table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def training_id(cell: str, trial: str) -> str:
    """`c002` for a grid training (its trial key is its cell), `c002-<Ray trial id>` for a search
    sample, the trial key alone for a run without cells (`orch train`: t000)."""
    return trial if not cell or trial == cell else f"{cell}-{trial}"


def variant_id(training: str, variant: str) -> str:
    """`c002-d03`: decode variant d03 of training c002."""
    return f"{training}-{variant}"


def run_name(id_: str, values: Mapping[str, Any]) -> str:
    """`c004 decoder=lstm max_rate=0.25`: the id, then the factors that tell it apart, so MLflow's run
    table shows the id whole and as many labelled values as fit."""
    return " ".join([id_, labelled(values)]) if values else id_


def labelled(values: Mapping[str, Any]) -> str:
    """`decoder=gru max_rate=0.25`: dotted keys by their last part, each with its short value."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={short_value(value)}" for key, value in values.items())


def short_value(value: Any) -> str:
    """A value as written (0.0, 1.5, lstm), a long float in 4 significant digits (0.0003118)."""
    text = str(value)
    return f"{value:.4g}" if isinstance(value, float) and len(text) > 6 else text
