"""Metric names in MLflow: a trial's validation CIDEr per epoch is the first chart its run page shows,
and orch reads back the names it logged."""

from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient

from orchestrator.tracking.reader import cell_rows
from orchestrator.tracking.writer import Tracker
from orchestrator.tracking.recorder import TrialRecorder
from orchestrator.tracking.names import mlflow_metric, orch_metric
from tests.orchestrator.conftest import sqlite_uri
from orchestrator.storage import resolve

# What a captioning trainer reports each epoch (the quickstart's trial, as it ran), variants' under `d01/`.
SCORES = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "METEOR", "ROUGE_L", "content_accuracy",
          "distinct_captions", "mean_caption_length", "position_accuracy", "truncated_fraction"]
TRIAL_REPORT = {"train_loss": 2.1, "val_loss": 2.4, "lr": 4e-4, "ss_rate": 0.1, "epoch_time_s": 30.0, "best_epoch": 2,
                **{f"val_{s}": 0.5 for s in SCORES}, **{f"test_{s}": 0.4 for s in SCORES},
                **{f"test_constant_caption_{s}": 0.1 for s in SCORES[:7]}}


def ui_chart_order(keys: list[str]) -> list[str]:
    """The order of a run's charts on MLflow 3's "Model metrics" tab, written out from what its UI
    does (mlflow/server/js, RunsChartsCardConfig, and a quickstart trial run seen in Chromium): a
    chart's section is its key up to the last `/`; named sections come first, sorted, then the
    unnamed "Model metrics" one; charts are sorted inside a section (by code point: CIDEr, METEOR,
    ROUGE_L, then content_accuracy); `system/…` keys are on the "System metrics" tab."""
    model = [key for key in keys if not key.startswith("system/")]
    section = {key: key.rsplit("/", 1)[0] if "/" in key else None for key in model}
    named = sorted({s for s in section.values() if s is not None})
    order = []
    for name in [*named, None]:
        order += sorted(key for key in model if section[key] == name)
    return order


def test_the_first_chart_of_a_trial_run_and_of_its_variant_runs_is_val_cider(tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path), "charts", artifact_root=resolve(str(tmp_path)))
    parent = tracker.parent_run("charts/run-1", "orch run run-1")
    recorder = TrialRecorder(tracker, parent, "charts/run-1", "c001", "c001 lstm", {"model.decoder": "lstm"},
                             {"d01": {"decode.length_penalty": 0.0}}, reference="d01")
    report = {**TRIAL_REPORT, **{f"d01/{k}": v for k, v in TRIAL_REPORT.items() if k.startswith(("val_", "test_"))}}
    for epoch in (1, 2):
        recorder.record({**report, "epoch": epoch})
    recorder.complete({**report, "epoch": 2}, checkpoint=None)  # the last epoch's report evaluates the variants
    client = MlflowClient(tracker.uri)
    trial = client.get_run(recorder.run_id)
    variant = client.get_run(recorder.variant_runs["d01"])

    trial_charts = ui_chart_order(list(trial.data.metrics))
    assert trial_charts[0] == "val/CIDEr"
    assert trial_charts[:4] == ["val/CIDEr", "val/METEOR", "val/ROUGE_L", "val/content_accuracy"]
    assert ui_chart_order(list(variant.data.metrics))[0] == "val/CIDEr"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "val/CIDEr")] == [1, 2]
    assert {"val/bleu/Bleu_4", "train_loss", "best_epoch"} <= set(trial.data.metrics)
    assert "test_Bleu_4" in variant.data.metrics and "test_Bleu_4" not in trial.data.metrics  # one run per cell holds it
    # what orch reads back is in the names it uses everywhere else (status, export, report)
    (row,) = cell_rows(tracker, "charts/run-1")
    assert row.metrics["val_CIDEr"] == 0.5 and row.metrics["val_Bleu_4"] == 0.5 and row.metrics["test_CIDEr"] == 0.4


def test_only_validation_scores_are_renamed():
    assert [mlflow_metric(k) for k in ("val_CIDEr", "val_Bleu_4", "val_loss", "val_rsum", "test_Bleu_4", "train_loss",
                                       "lr", "cost_wall_s")] == \
        ["val/CIDEr", "val/bleu/Bleu_4", "val/loss", "val/rsum", "test_Bleu_4", "train_loss", "lr", "cost_wall_s"]


@given(st.from_regex(r"\A(train|val|test)_[A-Za-z0-9_]{1,20}\Z|\A(lr|ss_rate|epoch|epoch_time_s|best_epoch)\Z"))
def test_orch_reads_back_every_name_it_logs(name):
    assert orch_metric(mlflow_metric(name)) == name
