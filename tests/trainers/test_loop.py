"""The training recipe as a user meets it: reproducible, resumable, cached, guarded."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.conftest import tiny_trainer_dict
from trainers.checkpoint import load_checkpoint
from trainers.config import DecodeConfig, TrainerConfig
from trainers.evaluation import DecodeVariant
from trainers.errors import InputError, TrainingDiverged
from trainers.loop import CaptionRecipe
from trainers.training import run_training


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
    assert [(r.device, r.amp) for r in results] == [("cpu", "none")] * 2  # what ran: train.device and amp resolved


def test_scheduled_sampling_starts_in_the_epoch_its_start_epoch_names(prepared_dir, tmp_path):
    """Epochs count from 1 in the config as in every progress line: a constant rate from epoch 2 on."""
    results = []
    run_training(_config(prepared_dir, train={"epochs": 2, "batch_size": 16, "lr": 3e-3, "seed": 0,
                                              "scheduled_sampling": {"schedule": "constant", "max_rate": 0.5,
                                                                     "start_epoch": 2}}),
                 tmp_path, on_epoch=results.append)
    assert [r.metrics["ss_rate"] for r in results] == [0.0, 0.5]


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(prepared_dir, tmp_path):
    straight = _config(prepared_dir, train={"epochs": 2})
    at_epoch_1 = tmp_path / "at_epoch_1"

    def keep_epoch_1(result) -> None:  # the checkpoint a run killed during epoch 2 leaves
        if result.epoch == 1:
            shutil.copytree(result.checkpoint, at_epoch_1)

    run_training(straight, tmp_path / "straight", on_epoch=keep_epoch_1)
    run_training(straight, tmp_path / "resumed", resume_from=at_epoch_1)

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


def test_only_the_last_epochs_checkpoint_leaves_out_the_optimizer(prepared_dir, tmp_path):
    """Resuming never starts from the last epoch's checkpoint, so it keeps no Adam state (twice the
    trainable weights); one that is handed to a training anyway is refused in one line."""
    kept = {}

    def keys(result) -> None:
        kept[result.epoch] = set(load_checkpoint(result.checkpoint).training_state())

    run_training(_config(prepared_dir, train={"epochs": 2}), tmp_path / "run", on_epoch=keys)
    assert "optimizer" in kept[1] and "optimizer" not in kept[2]
    assert {"model", "history", "epoch", "rng"} <= kept[2]
    with pytest.raises(InputError, match="last epoch .* no optimizer state"):
        run_training(_config(prepared_dir, train={"epochs": 3}), tmp_path / "more",
                     resume_from=tmp_path / "run" / "checkpoint")


def test_checkpoint_holds_config_vocabulary_and_best_weights(prepared_dir, tmp_path):
    run_training(_config(prepared_dir), tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoint")
    assert checkpoint.meta["config"]["model"]["decoder"] == "lstm"
    assert checkpoint.meta["vocab"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert 1 <= checkpoint.meta["best_epoch"] <= 2
    assert "decoder.fc.weight" in checkpoint.best_model()


def _variants(*betas) -> list[DecodeVariant]:
    """d01, d02, ...: the tiny config's decode section (beam 2, max_len 12) with each β."""
    return [DecodeVariant(f"d{i:02d}", DecodeConfig(beam_size=2, max_len=12, length_penalty=beta))
            for i, beta in enumerate(betas, start=1)]


def test_decode_variants_never_change_what_is_trained(prepared_dir, tmp_path):
    """Adding β values (and a beam size) to the grid leaves the training and the shared variant's scores
    bit-identical: only the trial's own decode section selects checkpoints and steers the LR."""
    config = _config(prepared_dir, train={"lr_schedule": {"kind": "plateau", "patience": 0}})
    alone = run_training(config, tmp_path / "alone", variants=_variants(0.0))
    greedy = DecodeVariant("d04", DecodeConfig(beam_size=1, max_len=12))
    many = run_training(config, tmp_path / "many", variants=_variants(0.0, 0.5, 1.5) + [greedy])
    assert _history(tmp_path / "alone") == _history(tmp_path / "many")
    assert alone.variant_metrics["d01"] == many.variant_metrics["d01"]
    assert {k: v for k, v in alone.metrics.items() if k.startswith("test_")} == \
        {k: v for k, v in many.metrics.items() if k.startswith("test_")}
    assert alone.metrics["reference_variant"] == many.metrics["reference_variant"] == "d01"
    assert set(many.variant_metrics) == {"d01", "d02", "d03", "d04"}
    # d01 is the decode section: decoded again from the kept checkpoint, it scores what its best epoch did.
    best = _history(tmp_path / "alone")[alone.metrics["best_epoch"] - 1]
    assert alone.variant_metrics["d01"]["val_CIDEr"] == best["val_CIDEr"]


def test_every_variant_decodes_the_checkpoint_the_reference_selected(prepared_dir, tmp_path):
    """The reference (the decode section, here no variant's) picks the best epoch; each variant's val
    scores are then those of that one checkpoint, and the reference's equal the best epoch's."""
    config = _config(prepared_dir, decode={"beam_size": 3})
    final = run_training(config, tmp_path, variants=_variants(0.0, 1.0))
    assert final.metrics["reference_variant"] == "ref" and set(final.variant_metrics) == {"d01", "d02"}
    reference = json.loads((tmp_path / "predictions" / "test_ref.json").read_text())
    assert len(reference) == len(json.loads((tmp_path / "predictions" / "test_d01.json").read_text()))
    assert all("val_CIDEr" in m and "test_CIDEr" in m and "test_truncated_fraction" in m
               for m in final.variant_metrics.values())


def test_an_epoch_is_the_same_whether_the_loader_reads_the_cached_features_or_a_store_gathers_them(
        prepared_dir, tmp_path):
    """On a GPU a split's cache is held whole (on the GPU or in pinned memory) and gathered a batch at a
    time; here the CPU stands in for both places. The same batches, the same losses, bit for bit."""
    from trainers.features import FeatureStore

    losses = {}
    for where in ("mapped", "device", "host"):
        recipe = CaptionRecipe(_config(prepared_dir, train={"epochs": 1}), tmp_path / where)
        recipe.setup()
        recipe.stores = {split: FeatureStore(store.path, store.device, where=where)
                         for split, store in recipe.stores.items()}
        recipe.inputs = {split: store.loader_source() for split, store in recipe.stores.items()}
        losses[where] = (recipe.train_epoch(1), recipe.validation_loss())
    assert losses["device"] == losses["mapped"] == losses["host"]


@pytest.mark.parametrize("purpose", ["train", "val_pairs", "test"])
def test_every_batch_from_the_feature_cache_holds_each_rows_own_images_features(prepared_dir, tmp_path, purpose):
    """Row by row, what the recipe trains and evaluates on from the cache is the frozen encoder's output for
    that row's image (to float16), not a neighbour's: the losses alone would hardly move."""
    import torch

    from trainers.features import resize_batch

    recipe = CaptionRecipe(_config(prepared_dir, data={"feature_cache": True, "cache_dir": str(tmp_path / "cache")}),
                           tmp_path / "run")
    recipe.setup()
    assert recipe.stores, "the encoder is frozen: the recipe reads the feature cache"
    split = recipe.dataset.split("val" if purpose == "val_pairs" else purpose)
    recipe.model.encoder.eval()
    checked = 0
    for features, *_, rows in recipe._batches(purpose, epoch=1):
        with torch.no_grad():
            images = torch.from_numpy(split.images[rows.numpy()])  # (B, 3, S, S) uint8
            expected = recipe.model.encoder(resize_batch(images, 32)).half().float()  # (B, P, C)
            neighbours = torch.from_numpy(split.images[(rows.numpy() + 1) % len(split)])
            neighbours = recipe.model.encoder(resize_batch(neighbours, 32)).half().float()
        own_error = (features.float() - expected).abs().amax(dim=(1, 2))  # (B,)
        neighbour_gap = (neighbours - expected).abs().amax(dim=(1, 2))  # (B,)
        assert features.dtype == torch.float16 and features.shape == expected.shape
        assert (own_error <= 2e-3 * expected.abs().amax()).all()
        assert (own_error * 20 < neighbour_gap).all()
        checked += len(rows)
    assert checked >= len(split)
