"""Smoke mode (`orch run --smoke`, `orch train --smoke`): any experiment, shrunk to run on a CPU in minutes.

Before spending GPU-hours on a grid, run the same file on synthetic data: every ablation cell,
every decode variant, the search and the scheduler stay as written, only the sizes shrink. The
smoke profile is a fixed set of overrides applied after the file (and its bases) and before the
user's own `--set`, which still win:

- data: 120 synthetic 32 px images, generated and prepared once under data/smoke/prepared;
- model: randomly initialised encoder (`weights: none`, nothing is downloaded), a 2x2 grid,
  16-wide decoder; regnet_x_400mf unless the grid itself varies `model.encoder` (a key the grid or
  the search sets keeps the trials' values);
- train: 2 epochs of batch 16 on the CPU; eval: 8 val images per epoch; search: 2 samples per cell;
- a local Ray, no GPU, and a sqlite store under ray.storage, in an experiment named `<name>-smoke`
  so smoke runs never mix with real ones in MLflow or in `orch report`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.experiment.loader import load_config
from orchestrator.experiment.keys import overlaps

SMOKE_PREPARED = "data/smoke/prepared"
SMOKE_SEARCH_SAMPLES = 2
SMOKE_SETTINGS: dict[str, Any] = {
    "data.prepared": SMOKE_PREPARED,
    "data.synthetic": {"n": 120, "size": 32, "seed": 0, "min_word_freq": 1},
    "data.image_size": 32,
    "data.num_workers": 0,
    "data.cache_dir": None,
    "model.encoder": "regnet_x_400mf",  # small checkpoints; an ablation of model.encoder keeps its own
    "model.weights": "none",
    "model.encoded_size": 2,
    "model.embed_dim": 16,
    "model.hidden_dim": 16,
    "model.attention_dim": 16,
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.max_batches_per_epoch": None,
    "train.device": "cpu",
    "train.amp": "none",
    "decode.max_len": 16,
    "eval.val_images": 8,
    "eval.sample_captions": 2,
    "scheduler.grace_period": 1,
    "scheduler.max_t": None,
    "resources.cpu": 1,
    "resources.gpu": 0,
    "ray.address": None,
    "ray.max_failures": 0,
    "ray.keep_checkpoints": 1,
    "tracking.uri": None,
}


def smoke_overrides(config: ExperimentConfig) -> list[str]:
    """The smoke profile of `config` as `--set` overrides (values written as JSON, which YAML reads),
    less the keys its grid or search sets: those keep the values the trials are about."""
    settings = {**SMOKE_SETTINGS, "name": f"{config.name}-smoke",
                "tracking.experiment": f"{config.tracking.experiment}-smoke"}
    if config.search is not None:
        settings["search.num_samples"] = min(config.search.num_samples, SMOKE_SEARCH_SAMPLES)
    factors = [*config.ablation, *(config.search.space if config.search is not None else {})]
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()
            if not any(overlaps(key, factor) for factor in factors)]


def load_smoke_config(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                      trials: bool = True) -> ExperimentConfig:
    """The experiment at `path` in its smoke profile; the user's `overrides` apply last. `trials`: as
    load_config's (False for `orch train`)."""
    full = load_config(path, overrides, check_files=False, trials=trials)  # the smoke profile replaces model.weights
    return load_config(path, [*smoke_overrides(full), *overrides], trials=trials)
