"""`orch train`: one configuration in-process, its summary, its files and its MLflow runs."""

from __future__ import annotations

import json

import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.experiment.loader import load_config
from orchestrator.commands.train import train_refusal
from tests.conftest import tiny_trainer_dict
from tests.orchestrator.commands.test_run import best_checkpoint_files


def test_orch_train_prints_test_metrics_and_tracks_the_run(prepared_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_trainer_dict(prepared_dir, eval={"metrics": ["Bleu", "ROUGE_L", "CIDEr"]})
    config["ray"] = {"storage": str(tmp_path / "results")}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(config))

    result = CliRunner().invoke(app, ["train", "one.yaml", "--json", "--set", "train.epochs=1"])

    assert result.exit_code == 0, result.output
    (progress,) = [line for line in result.output.splitlines() if line.startswith("t000: epoch")]
    assert progress.startswith("t000: epoch 1/1 ") and "elapsed " in progress and "ETA 0s" in progress
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("test_Bleu_1", "test_Bleu_4", "test_ROUGE_L", "test_CIDEr", "mean_caption_length",
                "distinct_captions", "predictions"):
        assert key in summary, key
    predictions = json.loads(open(summary["predictions"]).read())
    assert {"image_id", "caption"} <= set(predictions[0])

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    kinds = sorted(run.data.tags["orch.kind"] for run in runs)
    assert kinds == ["parent", "trial", "variant"]
    assert all(run.info.status == "FINISHED" for run in runs)
    trial = next(run for run in runs if run.data.tags["orch.kind"] == "trial")
    assert trial.data.params["model.decoder"] == "lstm" and trial.data.params["train.epochs"] == "1"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "val/CIDEr")] == [1]
    assert best_checkpoint_files(client, trial.info.run_id) == {"best_model.pt", "meta.json"}


def test_orch_train_refuses_an_ablation_grid(prepared_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_trainer_dict(prepared_dir)
    config["ablation"] = {"model.decoder": ["lstm", "gru"]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(config))

    result = CliRunner().invoke(app, ["train", "grid.yaml"])

    assert result.exit_code == 2
    assert "orch run" in result.output
    assert not (tmp_path / "results").exists()


def test_the_refusal_says_how_to_train_one_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text("name: grid\nablation: {model.decoder: [lstm, gru], train.seed: [0, 1]}\n"
                                        "search: {space: {train.lr: {loguniform: [1.0e-5, 1.0e-3]}}}\n")

    refused = CliRunner().invoke(app, ["train", "grid.yaml", "--set", "train.epochs=1"])

    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert ("'grid' has an ablation grid and a search, which `orch train` does not run: run it with `orch run`, or "
            "train one configuration with --set 'ablation={}' --set search=null plus a --set of each value you "
            "want (--set model.decoder=VALUE --set train.seed=VALUE ...)") in said
    assert not (tmp_path / "results").exists()

    # What it says works: the grid and the search are gone, and the pinned value is the one trained.
    one = load_config(tmp_path / "grid.yaml", ["ablation={}", "search=null", "model.decoder=gru"])
    assert train_refusal(one) is None and one.trainer_config().model.decoder == "gru"
