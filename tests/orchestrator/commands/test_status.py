"""What `orch status` shows: one id per cell, captions cut at decode.max_len, every column in a log."""

from __future__ import annotations

import os
import subprocess
import sys

from rich.console import Console

from orchestrator.ids import run_name, training_id, variant_id
from orchestrator.tracking.reader import CellRow
from orchestrator.reporting.tables import cell_table, truncation_note
from orchestrator.tracking.writer import Tracker
from orchestrator.tracking.recorder import TrialRecorder
from tests.orchestrator.conftest import REPO_ROOT, sqlite_uri
from orchestrator.storage import resolve


def _row(cell: str, cut: float) -> CellRow:
    return CellRow(trial=cell, trial_name=cell, variant="d01", status="FINISHED", params={"orch.cell": cell},
                   metrics={"val_CIDEr": 0.5, "test_CIDEr": 0.4, "test_truncated_fraction": cut})


def _shown(rows: list[CellRow]) -> str:
    console = Console(width=200, record=True)
    console.print(cell_table(rows, "CIDEr", "t"))
    return console.export_text()


def test_the_rate_column_is_the_ramps_top_and_says_so():
    """The grid's train.scheduled_sampling.max_rate is `ss_max`: MLflow's `ss_rate` is each epoch's rate."""
    rows = [_row("c001", 0.0), _row("c002", 0.0)]
    for row, rate in zip(rows, ("0.0", "0.25")):
        row.varying = {"train.scheduled_sampling.max_rate": rate}
    header = next(line for line in _shown(rows).splitlines() if line.lstrip().startswith("id"))
    assert header.split()[:2] == ["id", "ss_max"]


def test_over_five_percent_cut_at_max_len_is_said():
    assert truncation_note({"val_truncated_fraction": 0.05}, "val") == ""
    assert truncation_note({"val_truncated_fraction": 0.2}, "val") == "20% of val captions cut at decode.max_len"
    assert truncation_note({}, "test") == ""


def test_status_gets_a_cut_column_only_when_some_cell_is_cut():
    shown = _shown([_row("c001", 0.0), _row("c002", 0.25)])
    assert "cut" in shown and "25%" in shown and "raise decode.max_len" in shown
    assert "cut" not in _shown([_row("c001", 0.0), _row("c002", 0.04)])


def test_piped_status_keeps_every_column_of_a_long_row(tmp_path):
    """`orch status | tee log` (no terminal): the row arrives whole on one line, status included,
    instead of rich's 80 columns that drop the status column and wrap mid-sentence."""
    tracker = Tracker(sqlite_uri(tmp_path), "wide", artifact_root=resolve(str(tmp_path)))
    parent = tracker.parent_run("wide/run-1", "orch run run-1")
    for cell, decoder in (("c001", "lstm"), ("c002", "gru")):
        params = {"orch.cell": cell, "model.decoder": decoder, "data.prepared": f"/data/a/long/path/{cell}/prepared",
                  "train.scheduled_sampling.max_rate": "0.25"}
        recorder = TrialRecorder(tracker, parent, "wide/run-1", cell, cell, params, {"d01": {"decode.beam_size": 3}})
        recorder.record({"epoch": 1, "val_CIDEr": 0.5})
        recorder.end("FAILED", "RuntimeError: CUDA out of memory while decoding the test split")
    tracker.end(parent, "FAILED")
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    shown = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", "wide", "--storage", str(tmp_path)],
                           capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=True).stdout
    rows = [line for line in shown.splitlines() if line.lstrip().startswith("c00")]
    assert len(rows) == 2 and max(len(row) for row in rows) > 80
    for row in rows:
        assert row.split()[0] in ("c001", "c002") and "/data/a/long/path/c00" in row  # failed before its variants ran
        assert row.rstrip().endswith("FAILED: RuntimeError: CUDA out of memory while decoding the test split")
    assert "scores: pycocoevalcap scale" in shown


def test_ids_and_run_names_say_the_training_then_its_labelled_values():
    assert training_id("c002", "c002") == "c002"  # a grid training: its cell
    assert training_id("c002", "95f7f_00001") == "c002-95f7f_00001"  # a search sample of it
    assert training_id("", "t000") == "t000"  # `orch train`
    assert variant_id("c002", "d03") == "c002-d03"
    assert run_name("c004", {"model.decoder": "lstm", "train.lr": 0.000311784, "decode.length_penalty": 1.5}) == \
        "c004 decoder=lstm lr=0.0003118 length_penalty=1.5"
    assert run_name("t000", {}) == "t000"
