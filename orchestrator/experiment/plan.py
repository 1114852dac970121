"""The plan of an experiment: which models to train and how each trained model is evaluated.

The ablation grid is the cartesian product of its lists. Keys under `decode.` never retrain: they
are split off into decode variants and every trained model is evaluated once per variant, so the
coursework grid (2 encoders x 2 decoders x 3 sampling rates x 4 β) trains 12 models and evaluates
48. Nor do they steer training: each training selects its checkpoint (and drives LR on plateau and
early stopping) by its own `decode:` section, the reference decode, and every variant decodes that
same checkpoint. A `search:` section makes Ray Tune draw `num_samples` trainings inside every grid cell.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from orchestrator.credentials import masked
from orchestrator.experiment.keys import flatten
from orchestrator.experiment.schema import ExperimentConfig
from trainers.config import REFERENCE_DECODE_ID

DECODE_PREFIX = "decode."


@dataclass(frozen=True)
class TrainingCell:
    """One training configuration of the grid: the values of the training keys that vary."""

    id: str  # "c001"
    overrides: dict[str, Any]  # dotted key -> value


@dataclass(frozen=True)
class DecodeCell:
    """One way of decoding every trained model: the decode side of the grid (a training evaluates it
    as a trainers.evaluation.DecodeVariant)."""

    id: str  # "d01"
    overrides: dict[str, Any]  # the decode keys that vary -> this variant's values
    params: dict[str, Any]  # the whole decode section, dotted: what the variant's run records


@dataclass(frozen=True)
class Plan:
    name: str
    cells: tuple[TrainingCell, ...]
    decode_variants: tuple[DecodeCell, ...]
    varying_keys: tuple[str, ...]  # the training keys of the grid (decode keys excluded)
    decode_keys: tuple[str, ...]  # the decode keys of the grid
    reference_decode: dict[str, Any]  # the config's own decode section, dotted: it steers every training
    reference_variant: str  # the variant equal to it, or "ref" (decoded besides the variants)
    samples_per_cell: int  # search samples drawn in each cell; 1 without a search
    search_space: dict[str, dict]  # dotted key -> {distribution: args}; empty without a search
    resources: dict[str, Any]  # per trial, and the concurrency that implies

    @property
    def n_trainings(self) -> int:
        return len(self.cells) * self.samples_per_cell

    @property
    def n_evaluations(self) -> int:
        return self.n_trainings * len(self.decode_variants)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only: logged as the parent run's plan artifact."""
        return {
            "name": self.name,
            "n_trainings": self.n_trainings,
            "n_evaluations": self.n_evaluations,
            "samples_per_cell": self.samples_per_cell,
            "varying_keys": list(self.varying_keys),
            "decode_keys": list(self.decode_keys),
            "reference_decode": {"variant": self.reference_variant, "params": self.reference_decode},
            "cells": [{"id": c.id, "overrides": c.overrides} for c in self.cells],
            "decode_variants": [{"id": d.id, "overrides": d.overrides, "params": d.params}
                                for d in self.decode_variants],
            "search_space": self.search_space,
            "resources": self.resources,
        }


def make_plan(config: ExperimentConfig) -> Plan:
    """Expand the ablation grid into training cells and decode variants (config is already validated)."""
    varying_keys = tuple(k for k in config.ablation if not k.startswith(DECODE_PREFIX))
    decode_keys = tuple(k for k in config.ablation if k.startswith(DECODE_PREFIX))
    trainings = _combinations(config.ablation, varying_keys)
    decodings = _combinations(config.ablation, decode_keys)
    cells = tuple(TrainingCell(_short_id("c", i, len(trainings), 3), overrides)
                  for i, overrides in enumerate(trainings, start=1))
    variants = tuple(
        DecodeCell(_short_id("d", i, len(decodings), 2), overrides,
                      flatten(config.trainer_config(overrides).decode.model_dump(mode="json"), prefix=DECODE_PREFIX))
        for i, overrides in enumerate(decodings, start=1))
    reference = flatten(config.trainer_config({}).decode.model_dump(mode="json"), prefix=DECODE_PREFIX)
    search = config.search
    return Plan(
        name=config.name,
        cells=cells,
        decode_variants=variants,
        varying_keys=varying_keys,
        decode_keys=decode_keys,
        reference_decode=reference,
        reference_variant=next((v.id for v in variants if v.params == reference), REFERENCE_DECODE_ID),
        samples_per_cell=search.num_samples if search else 1,
        search_space={k: d.model_dump(mode="json") for k, d in search.space.items()} if search else {},
        resources=_resources(config),
    )


def render_plan(plan: Plan, config: ExperimentConfig, ray: str) -> Group:
    """What `orch run CONFIG --dry-run` prints: every training, every decode variant, the counts,
    the search, the scheduler, what the resources per trial imply, and `ray`: the Ray the run will use
    (orchestrator.settings.RunSettings.describe_ray), so what the plan says is what runs."""
    per_cell = f" x {plan.samples_per_cell} search samples" if config.search else ""
    lines: list[Any] = [
        Text(f"Plan for {plan.name!r} (trainer {config.trainer})", style="bold"),
        Text(f"{_count(plan.n_trainings, 'training')} ({_count(len(plan.cells), 'grid cell')}{per_cell}); "
             f"{_count(plan.n_evaluations, 'evaluation')} ({_count(plan.n_trainings, 'training')} x "
             f"{_count(len(plan.decode_variants), 'decode variant')})"),
        _table("Trainings", "cell", plan.varying_keys, [(c.id, c.overrides) for c in plan.cells]),
        _table("Decode variants", "variant", plan.decode_keys or tuple(plan.decode_variants[0].params),
               [(d.id, d.overrides or d.params) for d in plan.decode_variants]),
        Text(f"reference decode: {_describe_reference(plan)}"),
        Text(f"search: {_describe_search(config)}"),
        Text(f"scheduler: {_describe_scheduler(config)}"),
        Text(f"resources: {_describe_resources(plan.resources)}"),
        Text(f"ray: {ray}"
             f"{' (autoscaling: its GPUs are not counted before the run)' if config.ray.autoscaling else ''}, "
             f"storage {config.ray.storage}, max_failures {config.ray.max_failures}; tracking: {masked(config.tracking.uri)}, "
             f"experiment {config.tracking.experiment!r}"),
    ]
    return Group(*lines)


def _combinations(grid: dict[str, list], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The cartesian product of the grid's lists for `keys`, last key varying fastest; [{}] for no keys."""
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _short_id(prefix: str, index: int, count: int, min_width: int) -> str:
    return f"{prefix}{index:0{max(min_width, len(str(count)))}d}"


def max_concurrent_trials(config: ExperimentConfig) -> int | None:
    """The most trials at once: the tighter of resources.max_concurrent and search.max_concurrent, or None
    (as many as the cluster holds). What the plan shows and what the launch gives Ray Tune."""
    caps = [n for n in (config.resources.max_concurrent, config.search and config.search.max_concurrent) if n]
    return min(caps) if caps else None


def _resources(config: ExperimentConfig) -> dict[str, Any]:
    """Per-trial reservation, trials sharing one GPU, and the tightest cap on concurrent trials."""
    gpu = config.resources.gpu
    return {
        "cpu_per_trial": config.resources.cpu,
        "gpu_per_trial": gpu,
        "trials_per_gpu": math.floor(1 / gpu + 1e-9) if 0 < gpu <= 1 else None,
        "max_concurrent": max_concurrent_trials(config),
    }


def _table(title: str, id_header: str, keys: tuple[str, ...], rows: list[tuple[str, dict]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(id_header)
    for key in keys or ("overrides",):
        table.add_column(key)
    for row_id, values in rows:
        table.add_row(row_id, *([_text(values[k]) for k in keys] or ["(the base config)"]))
    return table


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _describe_reference(plan: Plan) -> str:
    """The decode setting that steers every training, and which variant (if any) it is."""
    varying = plan.decode_keys or tuple(plan.reference_decode)
    shown = ", ".join(f"{key[len(DECODE_PREFIX):]} {_text(plan.reference_decode[key])}" for key in varying)
    which = (f"= variant {plan.reference_variant}" if plan.reference_variant != REFERENCE_DECODE_ID
             else "decoded as 'ref' besides the variants")
    return (f"{shown} ({which}); it alone selects each training's checkpoint and steers LR on plateau and "
            "early stopping; every variant decodes that checkpoint")


def _describe_search(config: ExperimentConfig) -> str:
    search = config.search
    if search is None:
        return "none (one training per grid cell)"
    goal = "maximise" if search.mode == "max" else "minimise"
    cap = f", at most {max_concurrent_trials(config)} at once" if search.max_concurrent else ""
    space = "; ".join(f"{key} ~ {d.kind} {_text(d.args)}" for key, d in search.space.items())
    return f"{search.algorithm}, {search.num_samples} samples per cell, {goal} {search.metric}{cap}; {space}"


def _describe_scheduler(config: ExperimentConfig) -> str:
    s = config.scheduler
    if s.kind == "fifo":
        return f"fifo (every trial trains to the end, up to {s.max_t} epochs)"
    return f"{s.kind} (grace_period {s.grace_period}, reduction_factor {s.reduction_factor:g}, max_t {s.max_t})"


def _describe_resources(resources: dict[str, Any]) -> str:
    """The per-trial reservation and the device it gives each trial (orchestrator.cluster.trainable)."""
    cpu, gpu = resources["cpu_per_trial"], resources["gpu_per_trial"]
    if gpu == 0:
        gpus = "no GPU (each trial trains on the CPU, CUDA hidden)"
    else:
        n = resources["trials_per_gpu"]
        gpus = f"gpu {gpu:g}/trial: up to {_count(n, 'trial')} per GPU (each trains on cuda)"
    cap = resources["max_concurrent"]
    at_once = f"at most {cap} trials at once" if cap else "as many at once as the cluster's CPUs and GPUs hold"
    return f"cpu {cpu:g}/trial, {gpus}; {at_once}"
