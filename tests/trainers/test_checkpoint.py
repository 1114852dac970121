"""Checkpoints leave the frozen encoder out, yet every reader gets the whole model back."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np

import pytest
import torch

from tests.conftest import tiny_trainer_dict
from trainers.checkpoint import (META, complete_state, frozen_encoder_file, load_checkpoint, restore_rng_state,
                                 trainable_state)
from trainers.config import TrainerConfig
from trainers.errors import InputError
from trainers.inference import load_model
from trainers.loop import CaptionRecipe
from trainers.training import run_training


def _train(prepared, run_dir, **model):
    config = TrainerConfig.model_validate(tiny_trainer_dict(prepared, model=model, train={"epochs": 1}))
    run_training(config, run_dir)
    return load_checkpoint(run_dir / "checkpoint")


@pytest.fixture(scope="module")
def frozen_run(prepared_dir, tmp_path_factory):
    """One short training with the tiny config's frozen random ResNet-18: (run folder, checkpoint)."""
    run_dir = tmp_path_factory.mktemp("frozen") / "run"
    return run_dir, _train(prepared_dir, run_dir)


def test_a_frozen_encoder_stays_out_of_the_checkpoint_and_comes_back_on_load(prepared_dir, frozen_run, tmp_path):
    _, checkpoint = frozen_run
    best, latest = checkpoint.best_model(), checkpoint.training_state()["model"]
    assert not [k for k in best if k.startswith("encoder.")]
    assert set(latest) == set(best)
    assert checkpoint.meta["frozen_encoder"]["weights"] == "none"
    model = load_model(checkpoint.folder)
    assert all(torch.equal(model.captioner.state_dict()[k], v) for k, v in best.items())
    recipe = CaptionRecipe(TrainerConfig.model_validate(checkpoint.meta["config"]), tmp_path)
    recipe.setup()  # the same config builds the same frozen encoder
    frozen = {k: v for k, v in recipe.model.state_dict().items() if k.startswith("encoder.")}
    assert all(torch.equal(model.captioner.state_dict()[k], v) for k, v in frozen.items())


def test_fine_tuned_blocks_are_kept_and_only_the_frozen_ones_left_out(prepared_dir, tmp_path):
    checkpoint = _train(prepared_dir, tmp_path, fine_tune=2)
    best = checkpoint.best_model()
    assert any(k.startswith("encoder.blocks.4.") for k in best)  # layer4, trained
    assert not any(k.startswith(("encoder.blocks.0.", "encoder.blocks.2.")) for k in best)
    assert checkpoint.meta["frozen_encoder"]["blocks"] == 3
    load_model(tmp_path / "checkpoint")  # loads strictly


def test_a_random_frozen_encoder_is_stored_once_per_run_and_used_when_the_init_differs(
        frozen_run, tmp_path, monkeypatch):
    run_dir, checkpoint = frozen_run
    stored = frozen_encoder_file(checkpoint.meta["frozen_encoder"])
    assert (run_dir / stored).is_file() and not (checkpoint.folder / stored).exists()
    trained = complete_state(checkpoint.best_model(), checkpoint.meta, checkpoint.folder)
    monkeypatch.setattr("trainers.models.encoders._INIT_SEED", 1)  # another torch drawing another init
    again = complete_state(checkpoint.best_model(), checkpoint.meta, checkpoint.folder)
    assert all(torch.equal(again[k], v) for k, v in trained.items())
    alone = tmp_path / "alone" / "checkpoint"
    shutil.copytree(checkpoint.folder, alone)
    with pytest.raises(InputError, match="does not match"):
        complete_state(checkpoint.best_model(), checkpoint.meta, alone)


def test_resuming_checks_the_frozen_encoder(prepared_dir, frozen_run, tmp_path):
    _, checkpoint = frozen_run
    other = tmp_path / "checkpoint"
    shutil.copytree(checkpoint.folder, other)
    meta = json.loads((other / META).read_text())
    meta["frozen_encoder"]["sha256"] = "0" * 64
    (other / META).write_text(json.dumps(meta))
    config = TrainerConfig.model_validate(tiny_trainer_dict(prepared_dir, train={"epochs": 2}))
    with pytest.raises(InputError, match="another frozen encoder"):
        CaptionRecipe(config, tmp_path / "resumed").setup(resume_from=other)


@pytest.mark.parametrize("name", ["training_state.pt", "best_model.pt", META])
def test_a_damaged_checkpoint_file_is_named_in_one_error(frozen_run, tmp_path, name):
    """A truncated file (a disk that failed, a copy cut short) says which file, not a torch traceback."""
    _, checkpoint = frozen_run
    other = tmp_path / "checkpoint"
    shutil.copytree(checkpoint.folder, other)
    data = (other / name).read_bytes()
    (other / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=f"{name}: .*damaged checkpoint"):
        damaged = load_checkpoint(other)
        damaged.training_state(), damaged.best_model()


def test_a_checkpoint_copied_short_is_passed_over_for_a_whole_one(frozen_run, tmp_path):
    """meta.json holds the weights' sizes (written last, after they are synced): a copy missing its last
    bytes (Ray persisting it to a full disk) is refused before torch reads it, and a resume takes the
    newest whole checkpoint instead."""
    from trainers.checkpoint import BEST_MODEL, FILE_SIZES, TRAINING_STATE, checkpoint_epoch, resume_point

    _, checkpoint = frozen_run
    assert checkpoint.meta[FILE_SIZES] == {name: (checkpoint.folder / name).stat().st_size
                                           for name in (TRAINING_STATE, BEST_MODEL)}
    whole, short = tmp_path / "whole", tmp_path / "short"
    shutil.copytree(checkpoint.folder, whole)
    shutil.copytree(checkpoint.folder, short)
    meta = json.loads((short / META).read_text())
    (short / META).write_text(json.dumps({**meta, "epoch": meta["epoch"] + 1}))  # the newer one
    data = (short / BEST_MODEL).read_bytes()
    (short / BEST_MODEL).write_bytes(data[:-1])
    with pytest.raises(InputError, match=f"{BEST_MODEL}: cut short \\({len(data) - 1} of {len(data)} bytes\\)"):
        load_checkpoint(short)
    assert checkpoint_epoch(short) == -1
    assert resume_point([short, whole], epochs=10) == whole


def test_best_weights_are_kept_on_the_cpu_without_the_frozen_encoder(prepared_dir, tmp_path):
    recipe = CaptionRecipe(TrainerConfig.model_validate(tiny_trainer_dict(prepared_dir)), tmp_path)
    recipe.setup()
    assert recipe.best_state.keys() == trainable_state(recipe.model).keys()
    assert not any(k.startswith("encoder.") for k in recipe.best_state)
    assert all(v.device.type == "cpu" for v in recipe.best_state.values())


def test_a_state_loaded_for_another_device_restores_the_generators_it_saved(frozen_run):
    """The device contract: a resume on a GPU loads the weights there, while RNG states, counters and
    history stay on the CPU, where torch's generators take them ("meta" stands in for the GPU)."""
    _, checkpoint = frozen_run
    state = checkpoint.training_state("meta")
    assert {t.device.type for t in state["model"].values()} == {"meta"}
    assert state["rng"]["torch"].device.type == "cpu" and isinstance(state["history"], list)

    restore_rng_state(state["rng"])
    drawn = torch.rand(4), np.random.rand(4), random.random()
    restore_rng_state(checkpoint.training_state()["rng"])
    again = torch.rand(4), np.random.rand(4), random.random()
    assert torch.equal(drawn[0], again[0]) and np.array_equal(drawn[1], again[1]) and drawn[2] == again[2]
