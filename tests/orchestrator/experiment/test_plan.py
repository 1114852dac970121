"""The plan: grid expansion, decode-time factors split off, counts, and what --dry-run prints."""

import io
import itertools
import json
import math
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.experiment.loader import load_config
from orchestrator.experiment.plan import make_plan, render_plan
from orchestrator.settings import RunSettings

COURSEWORK = """
    # orch run search_spaces/coursework.yaml
    name: coursework
    data:     {prepared: data/flickr8k, image_size: 256, num_workers: 4}
    model:    {encoder: resnet101, weights: imagenet, fine_tune: false, encoded_size: 14,
               decoder: lstm, attention: soft, embed_dim: 512, hidden_dim: 512,
               attention_dim: 512, dropout: 0.5}
    train:    {epochs: 20, batch_size: 80, lr: 4.0e-4, encoder_lr: 1.0e-4, grad_clip: 5.0,
               alpha_c: 1.0, seed: 0,
               scheduled_sampling: {schedule: linear, max_rate: 0.25, start_epoch: 1, ramp_epochs: 10}}
    decode:   {beam_size: 3, length_penalty: 0.0, max_len: 50}
    eval:     {metrics: [Bleu, METEOR, ROUGE_L, CIDEr], select_by: CIDEr}
    ablation:
      model.encoder: [resnet101, vgg16]
      model.decoder: [lstm, gru]
      train.scheduled_sampling.max_rate: [0.0, 0.1, 0.25]
      decode.length_penalty: [0.0, 0.5, 1.0, 1.5]
    search:   {algorithm: optuna, num_samples: 40, space: {train.lr: {loguniform: [1.0e-5, 1.0e-3]}}}
    scheduler: {kind: asha, grace_period: 2, reduction_factor: 3}
    resources: {cpu: 4, gpu: 0.5}
    tracking: {uri: sqlite:///mlflow.db}
    ray:      {address: null, storage: results, max_failures: 2}
"""


def coursework(tmp_path, overrides=()):
    path = tmp_path / "coursework.yaml"
    path.write_text(textwrap.dedent(COURSEWORK))
    return load_config(path, overrides)


def rendered(plan, config) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(render_plan(plan, config, RunSettings.resolve(config).describe_ray()))
    return console.file.getvalue()


def test_the_coursework_grid_trains_12_models_and_evaluates_48(tmp_path):
    plan = make_plan(coursework(tmp_path, ["search=null"]))
    assert (plan.n_trainings, plan.n_evaluations) == (12, 48)
    assert [c.id for c in plan.cells] == [f"c{i:03d}" for i in range(1, 13)]
    assert plan.varying_keys == ("model.encoder", "model.decoder", "train.scheduled_sampling.max_rate")
    assert plan.cells[0].overrides == {"model.encoder": "resnet101", "model.decoder": "lstm",
                                       "train.scheduled_sampling.max_rate": 0.0}
    assert [(d.id, d.overrides) for d in plan.decode_variants] == [
        ("d01", {"decode.length_penalty": 0.0}), ("d02", {"decode.length_penalty": 0.5}),
        ("d03", {"decode.length_penalty": 1.0}), ("d04", {"decode.length_penalty": 1.5})]
    assert plan.decode_variants[2].params["decode.beam_size"] == 3  # the rest of the decode section


def test_the_coursework_search_samples_every_cell(tmp_path):
    plan = make_plan(coursework(tmp_path))
    assert plan.samples_per_cell == 40 and len(plan.cells) == 12
    assert (plan.n_trainings, plan.n_evaluations) == (480, 1920)
    assert plan.search_space == {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}


def test_without_an_ablation_there_is_one_training_and_one_base_decode_variant():
    config = ExperimentConfig(decode={"beam_size": 5})
    plan = make_plan(config)
    assert [(c.id, c.overrides) for c in plan.cells] == [("c001", {})]
    assert len(plan.decode_variants) == 1 and plan.decode_variants[0].id == "d01"
    assert plan.decode_variants[0].params["decode.beam_size"] == 5
    assert (plan.n_trainings, plan.n_evaluations) == (1, 1)


def test_seed_as_a_grid_key_repeats_each_configuration():
    plan = make_plan(ExperimentConfig(ablation={"model.decoder": ["lstm", "gru"], "train.seed": [0, 1, 2]}))
    assert plan.n_trainings == 6
    for decoder in ("lstm", "gru"):
        seeds = [c.overrides["train.seed"] for c in plan.cells if c.overrides["model.decoder"] == decoder]
        assert sorted(seeds) == [0, 1, 2]


def test_to_dict_is_json_and_holds_the_counts(tmp_path):
    plan = make_plan(coursework(tmp_path))
    data = plan.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert (data["n_trainings"], data["n_evaluations"], len(data["cells"])) == (480, 1920, 12)
    assert data["resources"] == {"cpu_per_trial": 4.0, "gpu_per_trial": 0.5, "trials_per_gpu": 2,
                                 "max_concurrent": None}


def test_render_plan_shows_trials_variants_counts_search_scheduler_and_concurrency(tmp_path):
    config = coursework(tmp_path, ["resources.gpu=0.25", "search.max_concurrent=8"])
    text = rendered(make_plan(config), config)
    assert "480 trainings (12 grid cells x 40 search samples)" in text
    assert "1920 evaluations (480 trainings x 4 decode variants)" in text
    assert all(f"c{i:03d}" in text for i in range(1, 13)) and "d04" in text
    assert "vgg16" in text and "train.scheduled_sampling.max_rate" in text and "decode.length_penalty" in text
    assert "optuna, 40 samples per cell, maximise CIDEr" in text and "train.lr ~ loguniform" in text
    assert "asha (grace_period 2, reduction_factor 3, max_t 20)" in text
    assert "gpu 0.25/trial: up to 4 trials per GPU" in text and "at most 8 trials at once" in text


@pytest.mark.parametrize("overrides, cap", [
    ([], None),
    (["resources.max_concurrent=6"], 6),
    (["search.max_concurrent=8"], 8),
    (["resources.max_concurrent=2", "search.max_concurrent=8"], 2),
    (["resources.max_concurrent=8", "search.max_concurrent=3"], 3),
])
def test_the_launch_caps_concurrent_trials_as_the_plan_says(tmp_path, monkeypatch, overrides, cap):
    from ray import tune

    from orchestrator.settings import RunSettings
    from orchestrator.cluster.launcher import _tuner, studies_of
    from orchestrator.storage import resolve

    config = coursework(tmp_path, ["search.algorithm=random", *overrides])
    plan = make_plan(config)
    assert plan.resources["max_concurrent"] == cap
    assert (f"at most {cap} trials at once" if cap else "as many at once as the cluster") in rendered(plan, config)
    made = {}
    monkeypatch.setattr(tune, "Tuner", lambda trainable, **kwargs: made.update(kwargs))
    launch = RunSettings.resolve(config, storage=resolve(str(tmp_path / "results")))  # what the launcher reads
    _tuner(launch, studies_of(config, plan)[0], trainable=None, callbacks=[], stopper=None)
    assert made["tune_config"].max_concurrent_trials == cap


def test_render_plan_of_a_single_run():
    config = ExperimentConfig(name="one")
    text = rendered(make_plan(config), config)
    assert "1 training (1 grid cell); 1 evaluation" in text
    assert "(the base config)" in text and "search: none" in text and "no GPU" in text


# --- grid expansion, for any grid --------------------------------------------------------------------------

TRAINING_VALUES = {
    "train.seed": st.integers(0, 10**6),
    "train.lr": st.floats(1e-6, 1.0),
    "train.batch_size": st.integers(1, 512),
    "model.embed_dim": st.integers(1, 1024),
    "model.dropout": st.floats(0.0, 0.99),
    "model.decoder": st.sampled_from(["rnn", "lstm", "gru"]),
}
DECODE_VALUES = {
    "decode.beam_size": st.integers(1, 20),
    "decode.length_penalty": st.floats(0.0, 3.0),
    "decode.max_len": st.integers(1, 100),
}


@st.composite
def grids(draw):
    keys = draw(st.lists(st.sampled_from(sorted(TRAINING_VALUES | DECODE_VALUES)), unique=True, max_size=4))
    values = (TRAINING_VALUES | DECODE_VALUES)
    return {key: draw(st.lists(values[key], min_size=1, max_size=3, unique=True)) for key in keys}


def fingerprint(overrides: dict) -> str:
    return json.dumps(overrides, sort_keys=True)


@settings(max_examples=60, deadline=None)
@given(grid=grids(), num_samples=st.one_of(st.none(), st.integers(1, 50)))
def test_grid_expansion(grid, num_samples):
    search = {"num_samples": num_samples, "space": {"train.alpha_c": {"uniform": [0.5, 2.0]}}} if num_samples else None
    plan = make_plan(ExperimentConfig(ablation=grid, search=search))
    training_keys = [k for k in grid if not k.startswith("decode.")]
    decode_keys = [k for k in grid if k.startswith("decode.")]

    assert plan.n_trainings == math.prod(len(grid[k]) for k in training_keys) * (num_samples or 1)
    assert plan.n_evaluations == plan.n_trainings * math.prod(len(grid[k]) for k in decode_keys)
    # every training combination present exactly once, and decode keys never retrain
    expected = {fingerprint(dict(zip(training_keys, combo)))
                for combo in itertools.product(*(grid[k] for k in training_keys))}
    assert sorted(fingerprint(c.overrides) for c in plan.cells) == sorted(expected)
    assert all(set(c.overrides) == set(training_keys) for c in plan.cells)
    # every decode combination is one variant, holding the whole decode section
    expected_decodes = {fingerprint(dict(zip(decode_keys, combo)))
                        for combo in itertools.product(*(grid[k] for k in decode_keys))}
    assert sorted(fingerprint(d.overrides) for d in plan.decode_variants) == sorted(expected_decodes)
    assert all(d.params[k] == v for d in plan.decode_variants for k, v in d.overrides.items())
    ids = [c.id for c in plan.cells] + [d.id for d in plan.decode_variants]
    assert len(set(ids)) == len(ids)


SMALL = """
    name: small
    decode: {beam_size: 3, length_penalty: 0.5}
    ablation:
      model.decoder: [lstm, gru]
      decode.length_penalty: [0.0, 0.5]
    search: {algorithm: random, num_samples: 2, max_concurrent: 1, mode: min, metric: CIDEr,
             space: {train.lr: {loguniform: [1.0e-5, 1.0e-3]}}}
    resources: {cpu: 2, gpu: 1}
"""


def small(tmp_path, length_penalty=0.5):
    path = tmp_path / "small.yaml"
    path.write_text(textwrap.dedent(SMALL).replace("length_penalty: 0.5}", f"length_penalty: {length_penalty}}}"))
    return load_config(path)


def test_the_plan_artifact_names_every_cell_variant_and_the_reference_decode(tmp_path):
    """The parent run's plan.json, key by key: what a reader of MLflow gets."""
    plan = make_plan(small(tmp_path))
    saved = json.loads(json.dumps(plan.to_dict()))
    decode = {key: value for key, value in saved["reference_decode"]["params"].items()}
    assert decode["decode.beam_size"] == 3 and decode["decode.length_penalty"] == 0.5
    assert saved == {
        "name": "small", "n_trainings": 4, "n_evaluations": 8, "samples_per_cell": 2,
        "varying_keys": ["model.decoder"], "decode_keys": ["decode.length_penalty"],
        "reference_decode": {"variant": "d02", "params": decode},
        "cells": [{"id": "c001", "overrides": {"model.decoder": "lstm"}},
                  {"id": "c002", "overrides": {"model.decoder": "gru"}}],
        "decode_variants": [{"id": "d01", "overrides": {"decode.length_penalty": 0.0},
                             "params": {**decode, "decode.length_penalty": 0.0}},
                            {"id": "d02", "overrides": {"decode.length_penalty": 0.5}, "params": decode}],
        "search_space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}},
        "resources": plan.resources,
    }
    assert saved["resources"]["trials_per_gpu"] == 1  # a whole GPU per trial


def test_a_reference_decode_no_variant_equals_is_decoded_as_ref(tmp_path):
    config = small(tmp_path, length_penalty=2.0)
    plan = make_plan(config)
    assert plan.reference_variant == "ref"
    assert plan.reference_decode["decode.length_penalty"] == 2.0
    assert "decoded as 'ref' besides the variants" in " ".join(rendered(plan, config).split())


def test_the_dry_run_text_names_the_reference_decode_the_search_and_the_tables(tmp_path):
    config = small(tmp_path)
    text = " ".join(rendered(make_plan(config), config).split())
    assert text.startswith("Plan for 'small' (trainer captioner)")
    assert "Trainings" in text and "Decode variants" in text and "cell" in text and "variant" in text
    assert ("reference decode: length_penalty 0.5 (= variant d02); it alone selects each training's checkpoint and "
            "steers LR on plateau and early stopping; every variant decodes that checkpoint") in text
    assert "minimise CIDEr" in text and "at most 1 at once" in text and "train.lr ~ loguniform [1e-05, 0.001]" in text


PRINTOUTS = {  # what `orch run --dry-run` prints, whole, for two plans that take every branch of the printout
    "optuna_asha_packed_autoscaling": ["scheduler.kind=asha", "resources.gpu=0.25", "ray.autoscaling=true"],
    "grid_fifo_cpu_joined_reference_apart": ["search=null", "scheduler.kind=fifo", "resources.gpu=0",
                                             "ablation.decode.length_penalty=[0.5,1.5]", "eval.select_by=neg_loss",
                                             "ray.address=10.0.0.1:6379", "ablation.model.encoder=[resnet101]"],
    "base_config_two_decode_factors_two_search_keys": [
        "ablation={decode.length_penalty: [0.5, 1.0], decode.beam_size: [2, 5]}",
        "search.space={train.lr: {loguniform: [1.0e-5, 1.0e-3]}, train.encoder_lr: {loguniform: [1.0e-5, 1.0e-4]}}",
        "search.num_samples=2", "search.algorithm=random", "scheduler.kind=fifo"],
}


@pytest.mark.parametrize("name", sorted(PRINTOUTS))
def test_the_printed_plan_is_the_one_a_user_reads(tmp_path, monkeypatch, name):
    """Word for word (tests/orchestrator/experiment/printouts/): counts, tables, the reference decode,
    search, scheduler, resources and the Ray line. A change to the printout is made here on purpose."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the plans' own ray.address, not the shell's
    config = coursework(tmp_path, PRINTOUTS[name])
    console = Console(file=io.StringIO(), width=1000)
    console.print(render_plan(make_plan(config), config, RunSettings.resolve(config).describe_ray()))
    printed = "\n".join(line.rstrip() for line in console.file.getvalue().replace(str(tmp_path), "<tmp>").splitlines())
    expected = (Path(__file__).parent / "printouts" / f"{name}.txt").read_text()
    assert printed + "\n" == expected
