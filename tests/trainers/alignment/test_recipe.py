"""The alignment recipe under trainers.loop's contract: one EpochResult per epoch, a checkpoint, resume."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import tiny_trainer_dict
from trainers.checkpoint import load_checkpoint
from trainers.config import TrainerConfig
from trainers.training import run_training

RETRIEVAL = ["i2t_R1", "i2t_R5", "i2t_R10", "i2t_medr", "t2i_R1", "t2i_R5", "t2i_R10", "t2i_medr"]


def _config(prepared, **train) -> TrainerConfig:
    document = tiny_trainer_dict(prepared, model={"decoder": "mrnn", "attention": "none"},
                                 train={"optimizer": "adam", "batch_size": 16, **train})
    document["trainer"] = "alignment"
    document["alignment"] = {"word_dim": 8, "embed_dim": 16, "caption_epochs": 1}
    document["eval"] = {"sample_captions": 2}
    return TrainerConfig.model_validate(document)


def test_every_epoch_reports_retrieval_and_the_last_one_test_retrieval(prepared_dir, tmp_path):
    results = []
    final = run_training(_config(prepared_dir), tmp_path, on_epoch=results.append)
    assert [r.epoch for r in results] == [1, 2] and [r.final for r in results] == [False, True]
    assert all({f"val_{k}" for k in RETRIEVAL} <= set(r.metrics) for r in results)
    assert {f"test_{k}" for k in RETRIEVAL} <= set(final.metrics)
    assert {f"test_{k}" for k in RETRIEVAL} <= set(final.variant_metrics["d01"])
    assert final.metrics["test_chance_t2i_R1"] == pytest.approx(100 / 4)  # 4 test images
    assert {"test_snippet_accuracy", "test_region_caption_accuracy"} <= set(final.metrics)  # synthetic truth
    sample = results[0].samples[0]
    assert " ".join(s["words"] for s in sample["snippets"]) == sample["sentence"]
    alignments = json.loads(final.predictions["d01"].read_text())
    assert all(s["caption"] for a in alignments for s in a["snippets"])
    meta = load_checkpoint(final.checkpoint).meta
    assert meta["config"]["trainer"] == "alignment"
    assert meta["best_metrics"]["val_rsum"] == max(r.metrics["val_rsum"] for r in results)


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(prepared_dir, tmp_path):
    at_epoch_1 = tmp_path / "at_epoch_1"

    def keep_epoch_1(result) -> None:  # the checkpoint a run killed during epoch 2 leaves
        if result.epoch == 1:
            shutil.copytree(result.checkpoint, at_epoch_1)

    straight = run_training(_config(prepared_dir, epochs=2), tmp_path / "straight", on_epoch=keep_epoch_1)
    resumed = run_training(_config(prepared_dir, epochs=2), tmp_path / "resumed", resume_from=at_epoch_1)
    for key in ("train_loss", "val_loss", "val_rsum", "test_rsum"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], rel=1e-5, abs=1e-6), key


def test_the_papers_sgd_defaults_learn_instead_of_diverging(prepared_dir, tmp_path):
    # SGD with momentum 0.9, batches of 100, elementwise clipping at 5, at the default learning rate.
    # At 1e-2 the first steps blow the scores up: training diverges (a random ResNet's features) or
    # the ReLUs of the sentence fragments die and the loss sits at the margin (a random VGG's).
    document = tiny_trainer_dict(prepared_dir, model={"encoder": "vgg11", "decoder": "mrnn", "attention": "none"},
                                 train={"epochs": 8})
    for key in ("lr", "batch_size"):
        document["train"].pop(key)
    document.update(trainer="alignment", alignment={"word_dim": 16, "embed_dim": 32, "caption_epochs": 0},
                    eval={"sample_captions": 0})
    config = TrainerConfig.model_validate(document)
    assert (config.train.optimizer, config.train.batch_size, config.train.lr) == ("sgd", 100, 1.0e-3)
    final = run_training(config, tmp_path)
    assert final.metrics["train_loss"] < 0.6 * config.alignment.margin
