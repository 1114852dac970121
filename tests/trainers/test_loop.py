"""The training recipe as a user meets it: reproducible, resumable, cached, guarded."""

from __future__ import annotations

import math

import pytest

from tests.conftest import tiny_trainer_dict
from trainers.checkpoint import load_checkpoint
from trainers.config import TrainerConfig
from trainers.errors import TrainingDiverged
from trainers.loop import CaptionRecipe, run_training


def _config(prepared, **sections) -> TrainerConfig:
    return TrainerConfig.model_validate(tiny_trainer_dict(prepared, **sections))


def _history(run_dir) -> list[dict]:
    state = load_checkpoint(run_dir / "checkpoint").training_state()
    return [{k: v for k, v in epoch.items() if k != "epoch_time_s"} for epoch in state["history"]]


def test_same_seed_gives_the_same_metrics(prepared_dir, tmp_path):
    config = _config(prepared_dir)
    first = run_training(config, tmp_path / "a")
    second = run_training(config, tmp_path / "b")
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    assert first.metrics["test_CIDEr"] == second.metrics["test_CIDEr"]


def test_every_epoch_reports_metrics_and_the_last_one_test_metrics(prepared_dir, tmp_path):
    results = []
    final = run_training(_config(prepared_dir), tmp_path, on_epoch=results.append)
    assert [r.epoch for r in results] == [1, 2]
    assert all({"train_loss", "val_loss", "val_CIDEr", "val_Bleu_4"} <= set(r.metrics) for r in results)
    assert [r.final for r in results] == [False, True]
    assert final.stop_reason == "completed all epochs"
    assert {"test_CIDEr", "test_Bleu_4", "test_mean_caption_length"} <= set(final.metrics)
    predictions = final.predictions["d01"]
    assert predictions.is_file() and predictions.read_text().startswith("[")


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(prepared_dir, tmp_path):
    straight = _config(prepared_dir, train={"epochs": 2})
    run_training(straight, tmp_path / "straight")

    run_training(_config(prepared_dir, train={"epochs": 1}), tmp_path / "first")
    run_training(straight, tmp_path / "resumed", resume_from=tmp_path / "first" / "checkpoint")

    expected, resumed = _history(tmp_path / "straight"), _history(tmp_path / "resumed")
    assert len(resumed) == 2
    for a, b in zip(expected, resumed):
        for key in ("train_loss", "val_loss", "val_CIDEr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_training_on_the_feature_cache_matches_the_frozen_encoder(prepared_dir, tmp_path):
    cached = run_training(_config(prepared_dir, data={"feature_cache": True, "cache_dir": str(tmp_path / "cache")}),
                          tmp_path / "cached")
    direct = run_training(_config(prepared_dir, data={"feature_cache": False}), tmp_path / "direct")
    assert any((tmp_path / "cache").rglob("complete.json"))
    for a, b in zip(_history(tmp_path / "cached"), _history(tmp_path / "direct")):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-2)  # float16 features
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=2e-2)
    assert cached.metrics["test_mean_caption_length"] > 0 and direct.metrics["test_mean_caption_length"] > 0


def test_early_stopping_ends_a_run_that_stopped_improving(prepared_dir, tmp_path):
    config = _config(prepared_dir, train={"epochs": 6, "lr": 1e-12, "early_stopping": 1})
    final = run_training(config, tmp_path)
    assert final.epoch == 2
    assert final.stop_reason.startswith("early stopping")
    assert "test_CIDEr" in final.metrics


@pytest.mark.parametrize("loss", [math.nan, math.inf, 25.0])
def test_divergence_guard_names_the_reason(prepared_dir, tmp_path, loss):
    recipe = CaptionRecipe(_config(prepared_dir), tmp_path)
    recipe.start_loss = 1.0
    with pytest.raises(TrainingDiverged, match="diverged"):
        recipe._guard_divergence(loss, epoch=3, batch=7)


def test_checkpoint_holds_config_vocabulary_and_best_weights(prepared_dir, tmp_path):
    run_training(_config(prepared_dir), tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoint")
    assert checkpoint.meta["config"]["model"]["decoder"] == "lstm"
    assert checkpoint.meta["vocab"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert 1 <= checkpoint.meta["best_epoch"] <= 2
    assert "decoder.fc.weight" in checkpoint.best_model()
