"""MLflow as its users expect it: what a trial run holds, the standard fields, the best model as an
MLflow model, the registry's champion, cost beside every score, MLFLOW_TRACKING_URI.

The store is real and so are the trainings: test_export's two tiny trainings (seeds 0 and 1, β 0
and 1, the session's `recorded`), recorded the way the `orch run` driver records them, cost meter
included. The end-to-end
check through a real `mlflow server` is test_mlflow_ui.py (integration).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.tracking.cost import COST_METRICS, TrialMeter, totals, trial_cost
from tests.orchestrator.conftest import invoke_orch, write_yaml
from tests.orchestrator.commands.test_export import recorded  # noqa: F401 - the session's store of two tiny trainings

NAME = "tiny-grid"


def _runs(recorded) -> dict[str, list]:
    client = MlflowClient(recorded.uri)
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id], max_results=100)
    kinds: dict[str, list] = {}
    for run in runs:
        kinds.setdefault(run.data.tags.get("orch.kind"), []).append(run)
    return kinds


def test_a_trial_run_holds_what_it_trained_with_and_its_variants_hold_the_decode_keys(recorded):
    kinds = _runs(recorded)
    for trial in kinds["trial"]:
        assert not [key for key in trial.data.params if key.startswith("decode.")]
        assert trial.data.params["train.seed"] in ("0", "1") and "val/CIDEr" in trial.data.metrics
        assert trial.data.tags["orch.reference_variant"] == "d01"  # the config's β 0 is the first variant
        assert "decode variant d01" in trial.data.tags["mlflow.note.content"]
    betas = sorted(variant.data.params["decode.length_penalty"] for variant in kinds["variant"])
    assert betas == ["0.0", "0.0", "1.0", "1.0"]


def test_runs_carry_mlflows_own_source_user_dataset_and_description(recorded, prepared_dir):
    import json

    from orchestrator.tracking.provenance import git_commit

    kinds = _runs(recorded)
    trial = kinds["trial"][0]
    assert trial.data.tags["mlflow.user"] and trial.data.tags["mlflow.source.type"] == "LOCAL"
    commit = git_commit()
    if commit != "unknown":
        assert trial.data.tags["mlflow.source.git.commit"] == commit.removesuffix("+dirty")
    (dataset,) = trial.inputs.dataset_inputs
    assert dataset.dataset.name == "synthetic" and len(dataset.dataset.digest) == 16
    assert json.loads(dataset.dataset.source) == {"uri": str(prepared_dir.resolve())}
    assert {tag.key: tag.value for tag in dataset.tags} == {"mlflow.data.context": "train"}


def test_the_parent_describes_the_plan_in_markdown():
    from orchestrator.tracking.provenance import plan_markdown

    plan = {"name": "coursework", "n_trainings": 2, "n_evaluations": 4, "samples_per_cell": 1,
            "varying_keys": ["model.decoder"], "decode_keys": ["decode.length_penalty"],
            "reference_decode": {"variant": "d01", "params": {}},
            "cells": [{"id": "c1", "overrides": {"model.decoder": "lstm"}},
                      {"id": "c2", "overrides": {"model.decoder": "gru"}}],
            "decode_variants": [{"id": "d01", "params": {"decode.length_penalty": 0.0}},
                                {"id": "d02", "params": {"decode.length_penalty": 1.0}}],
            "search_space": {}}
    text = plan_markdown(plan)
    assert "2 trainings x 2 decode variants = 4 evaluations" in text
    assert "| c2 | gru |" in text and "| d02 | 1.0 |" in text and "variant d01" in text


def test_each_training_is_one_logged_model_named_after_it_with_its_params_and_scores(recorded, tmp_path):
    """The Models page ranks the trainings: one logged model each, its params those of its trial run, its val
    scores at its best epoch and its own decode's test scores linked to it and to the dataset."""
    import mlflow.artifacts
    import yaml

    client = MlflowClient(recorded.uri)
    kinds = _runs(recorded)
    for trial in kinds["trial"]:
        (output,) = client.get_run(trial.info.run_id).outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert (model.name, model.model_type, model.source_run_id) == (trial.data.tags["orch.trial"], "captioner",
                                                                        trial.info.run_id)
        assert model.params == trial.data.params and output.step == trial.data.metrics["best_epoch"]
        scores = {metric.key: metric for metric in model.metrics}
        assert scores["val/CIDEr"].step == trial.data.metrics["best_epoch"]
        assert scores["val/CIDEr"].value == {m.step: m.value for m in client.get_metric_history(
            trial.info.run_id, "val/CIDEr")}[scores["val/CIDEr"].step]
        (own,) = [run for run in kinds["variant"] if run.data.tags["mlflow.parentRunId"] == trial.info.run_id
                  and run.data.tags["orch.variant"] == trial.data.tags["orch.reference_variant"]]
        assert scores["test_CIDEr"].value == own.data.metrics["test_CIDEr"] and scores["test_CIDEr"].run_id == own.info.run_id
        assert {metric.dataset_name for metric in model.metrics} == {"synthetic"}
        mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/MLmodel",
                                                      dst_path=str(tmp_path / model.model_id), tracking_uri=recorded.uri)
        mlmodel = yaml.safe_load(Path(mlmodel).read_text())
        assert (mlmodel["run_id"], mlmodel["model_id"]) == (trial.info.run_id, model.model_id)


def test_runs_carry_the_params_that_produced_their_metrics_resolved(recorded):
    kinds = _runs(recorded)
    for run in kinds["trial"] + kinds["variant"]:
        params = run.data.params
        assert not [key for key in params if key.startswith("alignment.")]  # a captioner's runs
        assert (params["train.device"], params["train.amp"]) == ("cpu", "none")  # what ran, not `auto`
    for variant in kinds["variant"]:
        assert variant.data.params["decode.strategy"] == "beam" and "decode.temperature" not in variant.data.params


def test_a_run_table_sorted_by_a_test_score_counts_each_ablation_cell_once(recorded):
    kinds = _runs(recorded)
    holders = [run for runs in kinds.values() for run in runs if "test_CIDEr" in run.data.metrics]
    assert sorted(holders, key=id) == sorted(kinds["variant"], key=id) and len(holders) == 4


def test_each_variant_run_spans_its_evaluation_and_names_the_model_it_evaluated(recorded):
    client = MlflowClient(recorded.uri)
    kinds = _runs(recorded)
    for trial in kinds["trial"]:
        (output,) = client.get_run(trial.info.run_id).outputs.model_outputs
        for variant in [run for run in kinds["variant"] if run.data.tags["mlflow.parentRunId"] == trial.info.run_id]:
            info = variant.info
            assert trial.info.start_time < info.start_time <= info.end_time <= trial.info.end_time
            assert info.end_time - info.start_time < (trial.info.end_time - trial.info.start_time) / 2
            inputs = client.get_run(info.run_id).inputs
            assert [item.model_id for item in inputs.model_inputs] == [output.model_id]
            (dataset,) = inputs.dataset_inputs
            assert dataset.dataset.name == "synthetic"
            assert f"the logged model {trial.data.tags['orch.trial']}" in variant.data.tags["mlflow.note.content"]


def test_each_training_s_logged_model_captions_a_path_and_base64(recorded, synth_dir):
    import base64

    import mlflow.pyfunc
    import pandas as pd

    client = MlflowClient(recorded.uri)
    trial = _runs(recorded)["trial"][0]
    (output,) = client.get_run(trial.info.run_id).outputs.model_outputs
    loaded = mlflow.pyfunc.load_model(client.get_logged_model(output.model_id).artifact_location)
    assert [spec.name for spec in loaded.metadata.get_input_schema().inputs] == ["image"]
    image = sorted((synth_dir / "images").glob("*.png"))[0]
    captions = loaded.predict(pd.DataFrame({"image": [str(image), base64.b64encode(image.read_bytes()).decode()]}))
    assert captions["caption"][0] and captions["caption"][0] == captions["caption"][1]
    assert list(captions["error"]) == ["", ""]


def test_the_experiment_opens_in_the_model_training_view_described_with_every_curve_stored(recorded):
    import json

    experiment = MlflowClient(recorded.uri).get_experiment_by_name(NAME)
    tags = experiment.tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
    assert "a logged model per training" in tags["mlflow.note.content"] and tags["orch.select_by"] == "val/CIDEr"
    assert json.loads(tags["mlflow.sharedViewState.orch"])["runsHiddenMode"] == "SHOW_ALL"


def test_orch_ui_runs_one_worker_no_job_runners_and_prints_the_view_of_every_curve(recorded, monkeypatch):
    import subprocess

    started = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: started.append((command, env)) or 0)
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    result = invoke_orch("ui", "--storage", recorded.storage, "--port", "5123")
    assert result.exit_code == 0, result.output
    ((command, env),) = started
    assert command[command.index("--workers") + 1] == "1" and command[command.index("--port") + 1] == "5123"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    experiment = MlflowClient(recorded.uri).get_experiment_by_name(NAME).experiment_id
    assert (f"http://127.0.0.1:5123/#/experiments/{experiment}/runs?workflowType=machine_learning"
            "&viewStateShareKey=orch&compareRunsMode=CHART") in result.output
    assert invoke_orch("ui", "--storage", recorded.storage, "--workers", "3").exit_code == 0
    assert started[-1][0][started[-1][0].index("--workers") + 1] == "3"


def test_cost_is_logged_per_trial_and_summed_on_the_parent(recorded):
    kinds = _runs(recorded)
    for trial in kinds["trial"]:
        metrics = trial.data.metrics
        assert set(COST_METRICS) <= set(metrics) and trial.data.tags["orch.cost_device"] == "cpu"
        assert 0 < metrics["cost_overhead_s"] < metrics["cost_wall_s"]
        assert metrics["cost_device_hours"] == pytest.approx(metrics["cost_wall_s"] / 3600, rel=1e-6)  # one CPU
        assert metrics["cost_peak_memory_mb"] > 50  # torch alone holds more
        assert metrics["system/cpu_utilization_percentage"] >= 0
    (parent,) = kinds["parent"]
    assert parent.data.metrics["cost_wall_s"] == pytest.approx(sum(t.data.metrics["cost_wall_s"] for t in kinds["trial"]))


def test_status_shows_the_cost_columns(recorded, monkeypatch):
    import json

    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: every column whole
    result = invoke_orch("status", NAME, "--storage", recorded.storage)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if " id " in line and "status" in line)
    assert all(column in header for column in ("wall", "dev-h", "overhead", "peak MB"))
    cells = json.loads(invoke_orch("status", NAME, "--storage", recorded.storage, "--json").output)[NAME]["cells"]
    assert all(set(COST_METRICS) <= set(cell["cost"]) for cell in cells)


def test_the_report_has_a_cost_section_and_is_logged_to_the_parent_run(recorded, tmp_path):
    from tests.orchestrator.commands.test_run import artifact_paths

    result = invoke_orch("report", NAME, "--storage", recorded.storage, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report" / "report.md").read_text()
    section = text.split("## Cost", 1)[1]
    assert "CPU-hours" in section and "**total (2 trainings)**" in section
    (parent,) = _runs(recorded)["parent"]
    logged = artifact_paths(MlflowClient(recorded.uri), parent.info.run_id, "report")
    assert {"report/report.md", "report/report.json"} <= logged and any(p.endswith(".png") for p in logged)


def test_register_marks_the_winner_champion_and_tags_every_version(recorded, tmp_path):
    result = invoke_orch("export", NAME, "--storage", recorded.storage, "--out", tmp_path, "--top-k", "2", "--register")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    # One line per export and the scale line: no warnings, no progress bars.
    assert len(lines) == 3 and "alias champion" in lines[0] and lines[2].startswith("scores: "), result.output
    client = MlflowClient(recorded.uri)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.tags["rank"] == "1" and champion.tags["metric"] == "val/CIDEr"
    latest = max(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))
    assert latest.tags["rank"] == "2" and int(champion.version) == int(latest.version) - 1  # the alias names rank 1
    for version in (champion, latest):
        assert {"cell", "trial", "variant", "beta", "value"} <= set(version.tags)
        assert f"version {version.version}" in result.output


def test_mlflow_tracking_uri_is_honoured_below_the_config(tmp_path, monkeypatch, tiny_experiment):
    from orchestrator.experiment.loader import load_config
    from orchestrator.settings import RunSettings

    def store_uri(config, storage):  # what the read commands use: a config's store, else --storage's
        return RunSettings.for_reading(load_config(config) if config else None, storage).tracking_uri

    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    plain = write_yaml(tmp_path / "plain.yaml", tiny_experiment("plain", tmp_path / "results"))
    named = write_yaml(tmp_path / "named.yaml", tiny_experiment("named", tmp_path / "results",
                                                                tracking={"uri": "http://127.0.0.1:5999"}))
    assert store_uri(None, "results") == elsewhere
    assert load_config(plain).tracking.uri == elsewhere
    assert store_uri(named, "results") == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store_uri(None, str(tmp_path / "results")) == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    result = invoke_orch("status", "--storage", tmp_path / "results")
    assert result.exit_code == 2 and "no MLflow store" in result.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    result = invoke_orch("status", "--storage", tmp_path / "results")
    assert result.exit_code == 2 and "elsewhere.db" in result.output  # the variable's store, not the folder's


def test_a_trials_cost_adds_queueing_start_up_and_checkpoint_io_and_a_resumed_trial_adds_to_its_past():
    started = time.time() - 100.0
    report = {"meter_began": started + 10.0, "meter_startup_s": 5.0, "meter_checkpoint_s": 2.0, "meter_devices": 4.0,
              "meter_peak_host_mb": 900.0}
    cost = trial_cost(report, started)
    assert 100.0 <= cost["cost_wall_s"] <= time.time() - started  # the clock between the two reads, however loaded
    assert cost["cost_overhead_s"] == pytest.approx(17.0)
    assert cost["cost_device_hours"] == pytest.approx(4 * cost["cost_wall_s"] / 3600)
    assert cost["cost_peak_memory_mb"] == 900.0
    resumed = trial_cost(report, started, before={"cost_wall_s": 50.0, "cost_device_hours": 1.0,
                                                  "cost_overhead_s": 3.0, "cost_peak_memory_mb": 1200.0})
    assert 150.0 <= resumed["cost_wall_s"] <= 50.0 + time.time() - started
    assert resumed["cost_peak_memory_mb"] == 1200.0
    on_gpu = trial_cost({**report, "meter_peak_device_mb": 3000.0}, started)
    assert on_gpu["cost_peak_memory_mb"] == 3000.0 and on_gpu["cost_peak_host_memory_mb"] == 900.0
    assert totals([cost, resumed])["cost_overhead_s"] == pytest.approx(37.0)
    assert totals([cost, resumed])["cost_peak_memory_mb"] == 1200.0


def test_the_meter_sees_memory_grow_and_the_machines_load():
    import psutil

    meter = TrialMeter(gpus=0.0, cpus=2.0, every_s=0.05)
    try:
        # This process alone, before: the meter adds its children, whose exits must not hide the growth.
        own_before_mb = psutil.Process().memory_info().rss / 2**20
        meter.fields({"epoch_time_s": 0.0})
        held = bytearray(300 * 1024 * 1024)  # 300 MB, touched so it is resident
        held[::4096] = b"x" * len(held[::4096])
        time.sleep(0.2)
        second = meter.fields({"epoch_time_s": 0.0, "checkpoint_time_s": 0.5})
    finally:
        meter.close()
    assert second["meter_peak_host_mb"] > own_before_mb + 250
    assert second["meter_checkpoint_s"] == pytest.approx(0.5) and second["meter_devices"] == 2.0
    assert second["meter_device"] == "cpu" and "system/cpu_utilization_percentage" in second
    del held


def test_a_gpu_trial_without_nvml_bindings_says_why_it_has_no_gpu_metrics(monkeypatch):
    """MLflow's GPU monitor needs nvidia-ml-py, the `gpu` extra (which the image installs): without it a GPU
    trial's run is tagged with the reason, instead of its system/gpu_* metrics silently missing."""
    import sys
    import tomllib

    from orchestrator.tracking import cost
    from tests.orchestrator.conftest import REPO_ROOT

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)  # as where the bindings are not installed
    monitors, missing = cost._system_monitors(on_gpu=True)
    assert len(monitors) == 1 and missing == "nvidia-ml-py is not installed: pip install 'orch[gpu]'"
    assert cost.meter_tags({"meter_device": "gpu", "meter_gpu_metrics_missing": missing}) == {
        "orch.cost_device": "gpu", "orch.gpu_metrics": missing}
    assert cost._system_monitors(on_gpu=False)[1] == "" and "orch.gpu_metrics" not in cost.meter_tags(
        {"meter_device": "cpu", "meter_gpu_metrics_missing": ""})
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("nvidia-ml-py") for requirement in extras["gpu"])


def test_data_a_training_prepares_itself_is_logged_as_its_dataset_once_it_exists(tmp_path, monkeypatch):
    """The quickstart's synthetic data is made by the training: the parent and the trial still get it."""
    import yaml

    from tests.conftest import tiny_trainer_dict

    monkeypatch.chdir(tmp_path)
    config = tiny_trainer_dict(tmp_path / "data" / "prepared", train={"epochs": 1, "batch_size": 16, "lr": 3e-3,
                                                                       "seed": 0})
    config["data"]["synthetic"] = {"n": 40, "size": 32, "seed": 0, "min_word_freq": 1}
    config["ray"] = {"storage": str(tmp_path / "results")}
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(config))
    result = invoke_orch("train", "auto.yaml")
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    for kind in ("parent", "trial"):
        (run,) = [run for run in runs if run.data.tags["orch.kind"] == kind]
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "synthetic" and len(dataset.dataset.digest) == 16, kind


def test_a_tracking_server_that_does_not_answer_is_one_line_for_the_reading_commands(tmp_path, monkeypatch):
    from tests.orchestrator.conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for command in (["status", NAME], ["report", NAME, "--out", tmp_path], ["export", NAME, "--out", tmp_path]):
        result = invoke_orch(*command)
        assert result.exit_code == 2, result.output
        assert f"error: {uri}: the MLflow server does not answer" in result.output and "Traceback" not in result.output
