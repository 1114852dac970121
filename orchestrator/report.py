"""`orch report NAME`: the ablation report of an experiment, in Markdown with the PNGs it embeds.

Built from what MLflow holds of the experiment's latest invocation (or a named one). An ablation
cell is one value of every grid key but the seed (`train.seed`); its test-split scores are
summarised as mean ± std over seeds. A factor's table averages over the other factors within
each seed first, so its spread is still seed-to-seed. Per factor, one sentence says whether the
gap between its best and worst level exceeds seed noise (a paired t-test across seeds), and plots
show CIDEr against the scheduled-sampling rate, CIDEr and caption length against β, and the
validation learning curves. Alongside: `report.json`, the same tables as data.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from orchestrator.plots import Panel, factor_lines, learning_curves
from orchestrator.results import Results, open_results, pick_best
from orchestrator.stats import mean_std, paired_t_test
from orchestrator.status import TRUNCATION_LIMIT, truncation_note
from trainers.errors import InputError

METRICS = (("Bleu_1", "BLEU-1"), ("Bleu_2", "BLEU-2"), ("Bleu_3", "BLEU-3"), ("Bleu_4", "BLEU-4"),
           ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr"), ("mean_caption_length", "length"))
UNSCALED = {"mean_caption_length"}  # the other scores are shown x100, as papers print them
HEADLINE = "CIDEr"
SEED_KEY = "train.seed"
ENCODER, DECODER = "model.encoder", "model.decoder"
SS_RATE, BETA = "train.scheduled_sampling.max_rate", "decode.length_penalty"
PAIRS = ((ENCODER, DECODER),)  # two-factor tables, when both vary
SIGNIFICANCE = 0.05
NAMES = {ENCODER: "encoder", DECODER: "decoder", SS_RATE: "ss rate", BETA: "β", "model.attention": "attention"}
NOTES = {  # facts that help explain a difference; the data says whether it is one
    ENCODER: "ResNet-101's conv5 grid has 2048 channels to VGG-16's 512, and ResNet-101 has the lower ImageNet error.",
    DECODER: "A GRU has 3 gates to the LSTM's 4 (about 3/4 of the recurrent weights) and no separate cell state.",
    SS_RATE: "Scheduled sampling feeds the model its own tokens in training, narrowing the gap to test time "
             "(exposure bias), at the price of noisier targets.",
    BETA: "β = 0 ranks captions by raw log-probability, which favours short ones; larger β favours longer captions.",
}
ANCHOR_SOURCE = "Show, Attend and Tell, soft attention (Xu et al. 2015)"
ANCHORS = {
    "flickr8k": {"Bleu_1": 67.0, "Bleu_2": 44.8, "Bleu_3": 29.9, "Bleu_4": 19.5, "METEOR": 18.93},
    "coco": {"Bleu_1": 70.7, "Bleu_2": 49.2, "Bleu_3": 34.4, "Bleu_4": 24.3, "METEOR": 23.90},
}


@dataclass(frozen=True)
class Outcome:
    """One finished evaluation: an ablation cell's values at one seed, and its test scores."""

    levels: dict[str, str]  # factor key -> value, as MLflow holds it
    seed: str
    scores: dict[str, float]  # test metrics without the "test_" prefix, as printed (x100)


@dataclass
class Group:
    """One row of a table: the levels of its keys, and each metric over seeds."""

    levels: tuple[str, ...]
    per_seed: dict[str, dict[str, float]]  # metric -> seed -> value (averaged over the other factors)

    def stats(self, metric: str) -> Optional[tuple[float, float, int]]:
        values = list(self.per_seed.get(metric, {}).values())
        return (*mean_std(values), len(values)) if values else None


def write_report(name: str, uri: str, out: Path, invocation: Optional[str] = None) -> Path:
    """Write out/report.md (+ PNGs, report.json) for the experiment `name`; returns the Markdown file."""
    results = open_results(name, uri, invocation)
    finished = results.finished()
    if not finished:
        statuses = ", ".join(sorted({row.status for row in results.rows})) or "no trials"
        raise InputError(f"experiment {name!r} ({results.invocation}) has no finished evaluation to report "
                         f"yet ({statuses}): see `orch status {name}`")
    factors = [key for key in results.grid_keys() if key != SEED_KEY and key not in results.search_keys]
    outcomes = [_outcome(row, factors) for row in sorted(finished, key=_row_order)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = _dataset(finished[0].params.get("data.prepared", ""))
    verdicts = [v for v in (verdict(outcomes, key, cell_keys=factors) for key in factors) if v is not None]
    figures = _figures(results, factors, outcomes, out)
    path = out / "report.md"
    path.write_text("\n".join(_sections(results, factors, outcomes, dataset, verdicts, figures)) + "\n")
    (out / "report.json").write_text(json.dumps(_as_data(results, factors, outcomes, dataset, verdicts), indent=1))
    log_to_parent(results, out)
    return path


def log_to_parent(results: Results, out: Path) -> None:
    """The report (Markdown, PNGs, JSON) under `report/` of the invocation's parent run, so the MLflow UI holds it."""
    if results.parent_run_id is not None:
        results.tracker.log_folder(results.parent_run_id, out, "report")


# ------------------------------------------------------------------------------------ the data
def _row_order(row) -> tuple:
    return row.params.get("orch.cell", row.trial_name), row.variant


def _outcome(row, factors: list[str]) -> Outcome:
    scores = {}
    for metric, _ in METRICS:
        value = row.metrics.get(f"test_{metric}")
        if value is not None and math.isfinite(value):
            scores[metric] = value if metric in UNSCALED else 100.0 * value
    return Outcome({key: row.params.get(key, "") for key in factors}, row.params.get(SEED_KEY, "0"), scores)


def level_order(values: list[str]) -> list[str]:
    """Distinct values, numerically when they are numbers, else in the order they first appear."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def group_by(outcomes: list[Outcome], keys: list[str]) -> list[Group]:
    """Groups of outcomes sharing the values of `keys`; within a seed the other factors are averaged."""
    collected: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for outcome in outcomes:
        levels = tuple(outcome.levels[key] for key in keys)
        for metric, value in outcome.scores.items():
            collected[levels][metric][outcome.seed].append(value)
    orders = [level_order([o.levels[key] for o in outcomes]) for key in keys]
    ordered = sorted(collected, key=lambda levels: [order.index(v) for order, v in zip(orders, levels)])
    return [Group(levels, {metric: {seed: statistics.fmean(values) for seed, values in seeds.items()}
                           for metric, seeds in collected[levels].items()})
            for levels in ordered]


@dataclass
class Verdict:
    key: str
    best: str
    worst: str
    best_mean: float
    worst_mean: float
    seeds: int  # seeds both levels were evaluated with
    t: Optional[float] = None
    p: Optional[float] = None
    seed_spread: Optional[float] = None  # median std over seeds of the metric within a full cell

    @property
    def exceeds_noise(self) -> Optional[bool]:
        return None if self.p is None else self.p < SIGNIFICANCE

    def sentence(self, metric: str) -> str:
        gap = self.best_mean - self.worst_mean
        head = (f"**{_name(self.key)}** (`{self.key}`): {self.best} gives the best mean {metric} ({self.best_mean:.1f}), "
                f"{self.worst} the worst ({self.worst_mean:.1f})")
        if self.p is None:
            return (f"{head}; with one seed per cell, whether this gap of {gap:.1f} exceeds seed noise cannot be told "
                    f"(add `{SEED_KEY}: [0, 1, 2]` to the ablation).")
        said = "exceeds seed noise" if self.exceeds_noise else "is within seed noise"
        spread = f"; seed-to-seed std within a cell is {self.seed_spread:.1f}" if self.seed_spread is not None else ""
        t = "∞" if math.isinf(self.t) else f"{self.t:.2f}"
        return (f"{head}: the gap of {gap:.1f} {said} (paired t-test across {self.seeds} seeds, t = {t}, "
                f"p = {self.p:.3f}{spread}).")


def verdict(outcomes: list[Outcome], key: str, metric: str = HEADLINE,
            cell_keys: Optional[list[str]] = None) -> Optional[Verdict]:
    """Best vs worst level of `key` by mean `metric`, paired by seed; None when it has one level or no `metric`."""
    groups = [g for g in group_by(outcomes, [key]) if g.per_seed.get(metric)]
    if len(groups) < 2:
        return None
    means = {g.levels[0]: g.stats(metric)[0] for g in groups}
    best = max(means, key=means.get)
    worst = min((level for level in means if level != best), key=means.get)
    by_level = {g.levels[0]: g.per_seed[metric] for g in groups}
    seeds = sorted(set(by_level[best]) & set(by_level[worst]))
    result = Verdict(key, best, worst, means[best], means[worst], len(seeds))
    if len(seeds) >= 2:
        test = paired_t_test([by_level[best][s] for s in seeds], [by_level[worst][s] for s in seeds])
        result.t, result.p = test.t, test.p
        spreads = [g.stats(metric)[1] for g in group_by(outcomes, cell_keys or [key]) if (g.stats(metric) or (0, 0, 0))[2] > 1]
        result.seed_spread = statistics.median(spreads) if spreads else None
    return result


def _dataset(prepared: str) -> str:
    """The dataset's name from the prepared folder's manifest, else guessed from its path ('' if unknown)."""
    from trainers.data.prepared import read_manifest

    try:
        return read_manifest(Path(prepared)).dataset.lower()
    except InputError:
        lowered = prepared.lower()
        return next((name for name in ANCHORS if name in lowered), "")


# ----------------------------------------------------------------------------------- figures
def _figures(results: Results, factors: list[str], outcomes: list[Outcome], out: Path) -> dict[str, Path]:
    figures = {}
    has_headline = any(HEADLINE in o.scores for o in outcomes)
    series_key = DECODER if DECODER in factors else None
    if has_headline and SS_RATE in factors:
        figures["ss_rate"] = factor_lines(out / "cider_vs_ss_rate.png", "CIDEr vs scheduled-sampling rate",
                                          "scheduled sampling max_rate", [_panel(outcomes, SS_RATE, series_key, HEADLINE)])
    if has_headline and BETA in factors:
        figures["beta"] = factor_lines(out / "cider_and_length_vs_beta.png", "CIDEr and caption length vs β",
                                       "length penalty β", [_panel(outcomes, BETA, series_key, HEADLINE),
                                                            _panel(outcomes, BETA, series_key, "mean_caption_length")])
    curves = _learning_curves(results, [key for key in factors if not key.startswith("decode.")])
    if curves:
        figures["learning"] = learning_curves(out / "learning_curves.png", "Validation CIDEr per epoch (mean ± std over seeds)",
                                              "val CIDEr x100 (best decode variant)", curves)
    return figures


def _panel(outcomes: list[Outcome], x_key: str, series_key: Optional[str], metric: str) -> Panel:
    keys = [series_key, x_key] if series_key else [x_key]
    series: dict[str, list] = defaultdict(list)
    for group in group_by(outcomes, keys):
        stats = group.stats(metric)
        if stats is not None:
            label = f"{_name(series_key)} {group.levels[0]}" if series_key else "all cells"
            series[label].append((float(group.levels[-1]), stats[0], stats[1]))
    label = "mean caption length (words)" if metric == "mean_caption_length" else f"{dict(METRICS)[metric]} x100"
    return Panel(f"test {label}, mean ± std over seeds", dict(series))


def _learning_curves(results: Results, keys: list[str]) -> dict[str, list]:
    """Per training cell: val CIDEr per epoch of its finished trials, mean ± std over seeds."""
    per_cell: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for trial_id, run in sorted(results.trials.items(), key=lambda item: item[1].data.params.get("orch.cell", item[0])):
        if run.info.status != "FINISHED":
            continue
        label = ", ".join(f"{_name(k)}={run.data.params.get(k, '')}" for k in keys) or "all trials"
        for metric in results.tracker.client.get_metric_history(run.info.run_id, f"val_{HEADLINE}"):
            per_cell[label][metric.step].append(100.0 * metric.value)
    return {label: [(epoch, *mean_std(values)) for epoch, values in sorted(epochs.items())]
            for label, epochs in per_cell.items()}


# ---------------------------------------------------------------------------------- Markdown
def _sections(results: Results, factors: list[str], outcomes: list[Outcome], dataset: str,
              verdicts: list[Verdict], figures: dict[str, Path]) -> list[str]:
    seeds = sorted({o.seed for o in outcomes}, key=float)
    planned = (results.plan or {}).get("n_trainings", len(results.trials))
    done = sum(run.info.status == "FINISHED" for run in results.trials.values())
    lines = [
        f"# Ablation report: {results.experiment}",
        "",
        f"- Invocation `{results.invocation}` in `{results.uri}`; written "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"- Data: {dataset or 'unknown'} (`{_first_param(results, 'data.prepared')}`); scores on the test split.",
        f"- {done} of {planned} trainings finished; {len(outcomes)} evaluation{'s' * (len(outcomes) != 1)}; "
        f"seeds ({SEED_KEY}): {', '.join(seeds)}.",
        "- BLEU, METEOR, ROUGE-L and CIDEr are x100, as papers print them; length is mean words per caption. "
        "Each entry is the mean ± std over seeds (the std of one seed is not shown).",
    ]
    if results.search_keys:
        lines.append(f"- Search over {', '.join(results.search_keys)}: a cell's scores are the mean over its search "
                     "samples; the best samples are listed below.")
    lines += _anchor_section(dataset, outcomes, factors)
    if verdicts:
        lines += ["", "## Does each factor matter?", ""]
        for v in verdicts:
            lines.append(f"- {v.sentence(HEADLINE)}" + (f" {NOTES[v.key]}" if v.key in NOTES else ""))
    lines += ["", "## Every ablation cell", "", *_table(outcomes, factors)]
    if results.search_keys:
        lines += _search_section(results)
    for pair in PAIRS:
        if all(key in factors for key in pair) and len(factors) > len(pair):
            lines += ["", f"## {' × '.join(_name(k) for k in pair)} (averaged over the other factors)", "",
                      *_table(outcomes, list(pair))]
    if len(factors) > 1:
        for key in factors:
            lines += ["", f"## {_name(key)} (`{key}`), averaged over the other factors", "", *_table(outcomes, [key])]
    titles = {"ss_rate": "CIDEr vs scheduled-sampling rate", "beta": "CIDEr and caption length vs β",
              "learning": "Learning curves"}
    for key, path in figures.items():
        lines += ["", f"## {titles[key]}", "", f"![{titles[key]}]({path.name})"]
    lines += _truncated(results)
    lines += cost_section(results)
    lines += _unfinished(results)
    return lines


def cost_section(results: Results) -> list[str]:
    """What each trial cost beside what it scored (orchestrator.cost), and the ablation's total."""
    from orchestrator.cost import TAG_COST_DEVICE, totals

    trials = sorted((run for run in results.trials.values() if "cost_wall_s" in run.data.metrics),
                    key=lambda run: run.info.run_name or "")
    if not trials:
        return []
    devices = {run.data.tags.get(TAG_COST_DEVICE, "cpu") for run in trials}
    unit = "GPU-hours" if devices == {"gpu"} else "CPU-hours" if devices == {"cpu"} else "device-hours (GPU or CPU)"
    lines = ["", "## Cost", "",
             f"Per training: wall time from Ray Tune starting it to its end; {unit} (wall time x the devices "
             "allocated to it); overhead, the part of the wall time lost to orchestration (queueing, start-up before "
             "the first epoch, checkpoint I/O); peak memory of the process that trained it (on a GPU, the device's).",
             "", f"| training | status | wall (s) | {unit} | overhead (s) | overhead (% of wall) | peak memory (MB) |",
             "|---|---|---|---|---|---|---|"]

    def row(label: str, status: str, cost: dict) -> str:
        share = 100.0 * cost["cost_overhead_s"] / cost["cost_wall_s"] if cost["cost_wall_s"] else 0.0
        return (f"| {label} | {status} | {cost['cost_wall_s']:.0f} | {cost['cost_device_hours']:.3f} | "
                f"{cost['cost_overhead_s']:.0f} | {share:.0f} | {cost['cost_peak_memory_mb']:.0f} |")

    metrics = [{key: run.data.metrics.get(key, 0.0) for key in ("cost_wall_s", "cost_device_hours", "cost_overhead_s",
                                                                "cost_peak_memory_mb")} for run in trials]
    lines += [row(run.info.run_name or trial, run.info.status, cost) for run, cost, trial in
              zip(trials, metrics, [run.data.tags.get("orch.trial", "") for run in trials])]
    lines.append(row(f"**total ({len(trials)} trainings)**", "", totals(metrics)))
    lines += ["", "The total's times and device-hours add the trainings' (trainings that ran side by side overlap "
                  "in wall-clock time); its peak memory is the largest one."]
    return lines


def _truncated(results: Results) -> list[str]:
    """Cells whose test captions often stop at decode.max_len: their scores measure the cut too."""
    notes = [(row.id, truncation_note(row.metrics, "test"))
             for row in results.finished()]
    notes = [(cell, note) for cell, note in notes if note]
    if not notes:
        return []
    return ["", "## Captions cut at decode.max_len", "",
            f"Over {TRUNCATION_LIMIT:.0%} of these cells' test captions stop at decode.max_len without <end>, so "
            "their scores measure the cut as well as the model: raise decode.max_len.", "",
            *[f"- {cell}: {note}" for cell, note in notes]]


def _search_section(results: Results, shown: int = 10) -> list[str]:
    """The best search samples by val CIDEr at their best epoch, with the values the search drew."""
    keys = results.search_keys
    header = ["trial", *(_name(k) for k in keys), "val CIDEr", "test CIDEr", "test BLEU-4", "best epoch"]
    lines = ["", f"## Best search samples (by val {HEADLINE} at their best epoch)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pick in pick_best(results, HEADLINE)[:shown]:
        metrics = pick.variant.metrics
        values = [_short(pick.variant.params.get(k, "")) for k in keys]
        test = [f"{100 * metrics[m]:.1f}" if m in metrics else "–" for m in (f"test_{HEADLINE}", "test_Bleu_4")]
        lines.append("| " + " | ".join([pick.variant.training, *values, f"{100 * pick.score:.1f}", *test, str(pick.best_epoch)]) + " |")
    return lines


def _short(value: str) -> str:
    """A drawn number in 4 significant digits (0.000312 rather than 0.00031178...); other values as they are."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _first_param(results: Results, key: str) -> str:
    return next((row.params[key] for row in results.rows if key in row.params), "")


def _table(outcomes: list[Outcome], keys: list[str]) -> list[str]:
    shown = [(metric, label) for metric, label in METRICS if any(metric in o.scores for o in outcomes)]
    header = [*(_name(k) for k in keys), "seeds", *(label for _, label in shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in group_by(outcomes, keys):
        cells = [_cell(group.stats(metric)) for metric, _ in shown]
        n = max((group.stats(metric) or (0, 0, 0))[2] for metric, _ in shown)
        lines.append("| " + " | ".join([*group.levels, str(n), *cells]) + " |")
    return lines


def _cell(stats: Optional[tuple[float, float, int]]) -> str:
    if stats is None:
        return "–"
    mean, std, n = stats
    return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


def _anchor_section(dataset: str, outcomes: list[Outcome], factors: list[str]) -> list[str]:
    anchor = ANCHORS.get(dataset)
    if anchor is None:
        return []
    best = max(group_by(outcomes, factors), key=lambda g: (g.stats(HEADLINE) or (-math.inf,))[0])
    described = ", ".join(f"{_name(k)} {v}" for k, v in zip(factors, best.levels)) or "the only cell"
    header = ["", *(dict(METRICS)[m] for m in anchor)]
    return ["", f"## Published anchors ({dataset})", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            f"| {ANCHOR_SOURCE} | " + " | ".join(f"{v:.1f}" for v in anchor.values()) + " |",
            f"| this experiment, best cell by {HEADLINE} ({described}) | "
            + " | ".join(_cell(best.stats(m)) for m in anchor) + " |",
            "", "The paper's numbers are one model on the Karpathy test split, METEOR from its 2014 release; "
                "metric versions and preprocessing alone can move them by a point or two."]


def _unfinished(results: Results) -> list[str]:
    others = [run for run in results.trials.values() if run.info.status != "FINISHED"]
    if not others:
        return []
    lines = ["", "## Trainings that did not finish (left out above)", ""]
    for run in sorted(others, key=lambda r: r.info.run_name or ""):
        reason = run.data.tags.get("orch.failure_reason", "")
        lines.append(f"- {run.info.run_name}: {run.info.status}" + (f" ({reason[:200]})" if reason else ""))
    return lines


def _name(key: Optional[str]) -> str:
    return NAMES.get(key, key.rsplit(".", 1)[-1]) if key else ""


def _as_data(results: Results, factors: list[str], outcomes: list[Outcome], dataset: str,
             verdicts: list[Verdict]) -> dict:
    def rows(keys: list[str]) -> list[dict]:
        return [{"levels": dict(zip(keys, g.levels)),
                 "metrics": {m: dict(zip(("mean", "std", "seeds"), g.stats(m))) for m, _ in METRICS if g.stats(m)}}
                for g in group_by(outcomes, keys)]

    return {"experiment": results.experiment, "invocation": results.invocation, "dataset": dataset,
            "factors": factors, "scale": "x100 except mean_caption_length",
            "cells": rows(factors), "per_factor": {key: rows([key]) for key in factors},
            "verdicts": {v.key: {"best": v.best, "worst": v.worst, "seeds": v.seeds, "t": v.t, "p": v.p,
                                 "exceeds_seed_noise": v.exceeds_noise} for v in verdicts}}
