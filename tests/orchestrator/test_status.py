"""What `orch status` shows of captions cut at decode.max_len."""

from __future__ import annotations

from rich.console import Console

from orchestrator.status import CellRow, cell_table, truncation_note


def _row(cell: str, cut: float) -> CellRow:
    return CellRow(trial=cell, trial_name=cell, variant="d01", status="FINISHED", params={"orch.cell": cell},
                   metrics={"val_CIDEr": 0.5, "test_CIDEr": 0.4, "test_truncated_fraction": cut})


def _shown(rows: list[CellRow]) -> str:
    console = Console(width=200, record=True)
    console.print(cell_table(rows, "CIDEr", "t"))
    return console.export_text()


def test_over_five_percent_cut_at_max_len_is_said():
    assert truncation_note({"val_truncated_fraction": 0.05}, "val") == ""
    assert truncation_note({"val_truncated_fraction": 0.2}, "val") == "20% of val captions cut at decode.max_len"
    assert truncation_note({}, "test") == ""


def test_status_gets_a_cut_column_only_when_some_cell_is_cut():
    shown = _shown([_row("c001", 0.0), _row("c002", 0.25)])
    assert "cut" in shown and "25%" in shown and "raise decode.max_len" in shown
    assert "cut" not in _shown([_row("c001", 0.0), _row("c002", 0.04)])
