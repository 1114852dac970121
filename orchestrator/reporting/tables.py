"""The table of every ablation cell (trial × decode variant), as `orch run` ends with it and
`orch status` shows it, from the rows MLflow holds (orchestrator.tracking.reader): what the user
sees is what MLflow holds, so the two never disagree."""

from __future__ import annotations

import math

from rich import box
from rich.table import Table

from orchestrator.tracking.reader import CellRow
from trainers.config import selection_metric
from trainers.metrics import SCORE_SCALE

SHOWN_METRICS = ("CIDEr", "Bleu_4", "mean_caption_length")  # the rest are in MLflow and `orch report`
# Above this fraction of a split's captions stopping at decode.max_len without <end>, scores measure the
# cut as much as the model: the epoch lines, `orch status` and the report say so.
TRUNCATION_LIMIT = 0.05


def truncation_note(metrics: dict, split: str) -> str:
    """'23 % of val captions cut at decode.max_len' when over TRUNCATION_LIMIT, else ''."""
    fraction = metrics.get(f"{split}_truncated_fraction", 0.0)
    return f"{fraction:.0%} of {split} captions cut at decode.max_len" if fraction > TRUNCATION_LIMIT else ""


# Column names; `ss_max` is train.scheduled_sampling.max_rate, the ramp's top (MLflow's `ss_rate` is each epoch's rate).
SHORT_NAMES = {"Bleu_4": "BLEU4", "ROUGE_L": "ROUGE", "mean_caption_length": "len", "length_penalty": "β",
               "max_rate": "ss_max"}


def sort_rows(rows: list[CellRow], select_by: str) -> list[CellRow]:
    """Best first by the selection metric; cells without it last."""
    metric, mode = selection_metric(select_by)
    sign = -1.0 if mode == "max" else 1.0

    def key(row: CellRow) -> float:
        value = row.metrics.get(metric, math.nan)
        return sign * value if not math.isnan(value) else math.inf
    return sorted(rows, key=key)


def cell_table(rows: list[CellRow], select_by: str, title: str) -> Table:
    """Id (training-variant), the params that vary, val metric, the test metrics present, status.

    Only the status column wraps, so a long failure reason never squeezes the numbers."""
    metric, _ = selection_metric(select_by)
    varying = list(rows[0].varying) if rows else []
    shown = [m for m in SHOWN_METRICS if any(f"test_{m}" in row.metrics for row in rows)]
    cut = any(truncation_note(row.metrics, "test") for row in rows)
    caption = SCORE_SCALE + (f"\ncut: test captions that stop at decode.max_len without <end>; over "
                             f"{TRUNCATION_LIMIT:.0%}, raise decode.max_len" if cut else "")
    table = Table(title=title, caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, min_width=len(SCORE_SCALE))  # the scale line never wraps
    for column in ["id", *[SHORT_NAMES.get(k.rsplit(".", 1)[-1], k.rsplit(".", 1)[-1]) for k in varying],
                   metric.replace("_", " ", 1), *[f"test {SHORT_NAMES.get(m, m)}" for m in shown]]:
        table.add_column(column, no_wrap=True)
    if cut:
        table.add_column("cut", no_wrap=True)
    costed = any(row.cost for row in rows)
    for column in COST_COLUMNS if costed else ():
        table.add_column(column[0], no_wrap=True, justify="right")
    table.add_column("status", overflow="fold", min_width=8)
    for row in rows:
        def fmt(name: str) -> str:
            value = row.metrics.get(name)
            return "-" if value is None else f"{value:.1f}" if name.endswith("length") else f"{value:.3f}"
        status = row.status if not row.reason or row.status == "FINISHED" else f"{row.status}: {row.reason[:80]}"
        fraction = row.metrics.get("test_truncated_fraction")
        cut_cell = ["-" if fraction is None else f"{fraction:.0%}"] if cut else []
        costs = [_cost_cell(row.cost, key, unit) for _, key, unit in COST_COLUMNS] if costed else []
        table.add_row(row.id, *[row.varying[k] for k in varying],
                      fmt(metric), *[fmt(f"test_{m}") for m in shown], *cut_cell, *costs, status)
    return table


COST_COLUMNS = (("wall", "cost_wall_s", "time"), ("dev-h", "cost_device_hours", "{:.3f}"),
                ("overhead", "cost_overhead_s", "time"), ("peak MB", "cost_peak_memory_mb", "{:.0f}"))


def _cost_cell(cost: dict[str, float], key: str, unit: str) -> str:
    """A trial's cost (the same on each of its variants' rows): seconds as 1h02m / 3m05s / 42s."""
    value = cost.get(key)
    if value is None:
        return "-"
    if unit != "time":
        return unit.format(value)
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def rows_as_json(rows: list[CellRow]) -> list[dict]:
    return [{"id": r.id, "trial": r.trial, "trial_name": r.trial_name, "variant": r.variant, "status": r.status,
             "reason": r.reason, "varying": r.varying, "metrics": r.metrics, "cost": r.cost} for r in rows]
