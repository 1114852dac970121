"""`orch report NAME`: the ablation report of an experiment, in Markdown with the PNGs it embeds.

Built from what MLflow holds of the experiment's latest invocation (or a named one). An ablation
cell is one value of every grid key but the seed (`train.seed`); its test-split scores are
summarised as the mean and its 95 % confidence interval over seeds, on pycocoevalcap's raw scale
(what MLflow stores). A factor's table averages over the other factors within each seed first, so
its spread is still seed-to-seed. Every factor gets a verdict and a plot: its best level, the gap
to each other level, and with several seeds a paired t-test per gap (paired by seed and by the
other training factors' levels), Holm-corrected over all the report's comparisons, with Cohen's
d_z. A search adds its best samples, their parallel coordinates, and Optuna's parameter
importances. Alongside: `report.json`, the same tables as data. All of it is also logged to the
invocation's parent run under `report/`.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from matplotlib.figure import Figure

from orchestrator.reporting.plots import Dimension, Panel, factor_figure, learning_curves, parallel_coordinates, save
from orchestrator.tracking.reader import Pick, Results, open_results, pick_best, quiet_downloads
from orchestrator.experiment.schema import SearchDimension
from orchestrator.reporting.stats import mean_ci
from orchestrator.reporting.tables import TRUNCATION_LIMIT, truncation_note
from orchestrator.reporting.verdicts import (SIGNIFICANCE, Comparison, Outcome, Summary, Verdict, group_by,
                                             is_numeric, level_order, seed_count, verdicts)
from orchestrator.tracking.names import TAG_DETERMINISTIC, mlflow_metric
from trainers.errors import InputError

METRICS = (("Bleu_1", "BLEU-1"), ("Bleu_2", "BLEU-2"), ("Bleu_3", "BLEU-3"), ("Bleu_4", "BLEU-4"),
           ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr"), ("mean_caption_length", "length"))
SCALES = {"CIDEr": "0–10", "mean_caption_length": "words"}  # the others lie in 0–1
LENGTH = "mean_caption_length"
HEADLINE = "CIDEr"  # what the report leads with when the run was not ranked by a caption score (neg_loss)
SEED_KEY = "train.seed"
ENCODER, DECODER = "model.encoder", "model.decoder"
SS_RATE, BETA = "train.scheduled_sampling.max_rate", "decode.length_penalty"
PAIRS = ((ENCODER, DECODER),)  # two-factor tables, when both vary
NAMES = {ENCODER: "encoder", DECODER: "decoder", SS_RATE: "ss rate", BETA: "β", "model.attention": "attention"}
NOTES = {  # facts that help explain a difference; the data says whether it is one
    ENCODER: "ResNet-101's conv5 grid has 2048 channels to VGG-16's 512, and ResNet-101 has the lower ImageNet error.",
    DECODER: "A GRU has 3 gates to the LSTM's 4 (about 3/4 of the recurrent weights) and no separate cell state.",
    SS_RATE: "Scheduled sampling feeds the model its own tokens in training, narrowing the gap to test time "
             "(exposure bias), at the price of noisier targets.",
    BETA: "β = 0 ranks captions by raw log-probability, which favours short ones; larger β favours longer captions.",
}
ANCHOR_SOURCE = "Show, Attend and Tell, soft attention (Xu et al. 2015)"
ANCHORS = {  # the paper's Table 1, on the raw scale (it prints them x100)
    "flickr8k": {"Bleu_1": 0.670, "Bleu_2": 0.448, "Bleu_3": 0.299, "Bleu_4": 0.195, "METEOR": 0.1893},
    "coco": {"Bleu_1": 0.707, "Bleu_2": 0.492, "Bleu_3": 0.344, "Bleu_4": 0.243, "METEOR": 0.2390},
}
SEEDS_HINT = f"add `{SEED_KEY}: [0, 1, 2]` to the ablation"
IMPORTANCE_TRAININGS = 10  # fewer finished trainings than this, and the importances come with a caution


@dataclass
class Collected:
    """What the report says, before it is written: the runs, the factors, every outcome and verdict."""

    results: Results
    factors: list[str]
    outcomes: list[Outcome]
    dataset: str
    verdicts: list[Verdict]
    headline: str  # the metric the run ranked by (eval.select_by), which the verdicts and plots lead with


def collect(name: str, uri: str, invocation: Optional[str] = None) -> Collected:
    """Read the experiment `name` from MLflow and work out its tables' data and verdicts."""
    results = open_results(name, uri, invocation)
    finished = results.finished()
    if not finished:
        statuses = ", ".join(sorted({row.status for row in results.rows})) or "no trials"
        raise InputError(f"experiment {name!r} ({results.invocation}) has no finished evaluation to report "
                         f"yet ({statuses}): see `orch status {name}`")
    factors = [key for key in results.grid_keys() if key != SEED_KEY and key not in results.search_keys]
    outcomes = [_outcome(row, factors) for row in sorted(finished, key=_row_order)]
    headline = headline_metric(finished[0].params.get("eval.select_by", HEADLINE))
    return Collected(results, factors, outcomes, _dataset(finished[0].params.get("data.prepared", "")),
                     verdicts(outcomes, factors, headline), headline)


def headline_metric(select_by: str) -> str:
    """The score a report leads with: the one the run ranked its checkpoints by (`eval.select_by`), or
    HEADLINE when it ranked by the loss."""
    return select_by if select_by in dict(METRICS) and select_by != LENGTH else HEADLINE


def write_report(name: str, uri: str, out: Path, invocation: Optional[str] = None) -> Path:
    """Write out/report.md (+ PNGs, report.json) for the experiment `name`, and log them to its parent run;
    returns the Markdown file."""
    collected = collect(name, uri, invocation)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = {key: save(figure, out / file) for key, (file, figure) in figures(collected).items()}
    path = out / "report.md"
    path.write_text("\n".join(_sections(collected, saved)) + "\n")
    (out / "report.json").write_text(json.dumps(_as_data(collected), indent=1))
    _log_to_parent(collected.results, [path, out / "report.json", *saved.values()])
    return path


def _log_to_parent(results: Results, files: list[Path]) -> None:
    """The report's files on the invocation's parent run, under report/, so the MLflow UI holds them.
    File by file: `--out` may name a folder that holds more than the report."""
    if results.parent_run_id is None:
        return
    with quiet_downloads():  # the same switch silences MLflow's upload progress bar
        for file in files:
            results.tracker.log_file(results.parent_run_id, file, "report")


# ------------------------------------------------------------------------------------ the data
def _row_order(row) -> tuple:
    return row.params.get("orch.cell", row.trial_name), row.variant


def _outcome(row, factors: list[str]) -> Outcome:
    scores = {}
    for metric, _ in METRICS:
        value = row.metrics.get(f"test_{metric}")
        if value is not None and math.isfinite(value):
            scores[metric] = value
    return Outcome({key: row.params.get(key, "") for key in factors}, row.params.get(SEED_KEY, "0"), scores)


def _dataset(prepared: str) -> str:
    """The dataset's name from the prepared folder's manifest, else guessed from its path ('' if unknown)."""
    from trainers.data.prepared import read_manifest

    try:
        return read_manifest(Path(prepared)).dataset.lower()
    except InputError:
        lowered = prepared.lower()
        return next((name for name in ANCHORS if name in lowered), "")


def _spread_words(seeds: int) -> str:
    return f"mean ± 95 % CI over {seeds} seeds" if seeds > 1 else "one seed, no error bars"


# ----------------------------------------------------------------------------------- figures
def figures(collected: Collected) -> dict[str, tuple[str, Figure]]:
    """key -> (PNG file name, figure): one per factor (by its key), the learning curves, a search's samples."""
    made = {}
    for key in collected.factors:
        figure = _factor_figure(collected.outcomes, key, collected.headline, averaged=len(collected.factors) > 1)
        if figure is not None:
            made[key] = (f"factor_{re.sub(r'[^A-Za-z0-9]+', '_', key)}.png", figure)
    curves = _learning_curves(collected.results, _training_factors(collected), collected.headline)
    if curves:
        runs = max(count for _, count in curves.values())
        spread = f"mean ± 95 % CI over {runs} trainings per cell" if runs > 1 else "one training per cell"
        made["learning"] = ("learning_curves.png", learning_curves(
            f"Validation {collected.headline} per epoch, reference decode\n{spread}", _header(collected.headline, "val "),
            {label: points for label, (points, _) in curves.items()}))
    picks = _search_picks(collected.results, collected.headline)
    if len(picks) >= 2:
        made["search"] = ("search_parallel_coordinates.png", _search_figure(collected, picks))
    return made


def _factor_figure(outcomes: list[Outcome], key: str, headline: str, averaged: bool) -> Optional[Figure]:
    """The headline metric (and caption length) by the levels of `key`; `averaged`: other factors were averaged out."""
    groups = group_by(outcomes, [key])
    metrics = [metric for metric in (headline, LENGTH) if all(g.stats(metric) for g in groups)]
    if len(groups) < 2 or not metrics:
        return None
    levels = [g.levels[0] for g in groups]
    seeds = seed_count(outcomes)
    panels = []
    for metric in metrics:
        stats = [g.stats(metric) for g in groups]
        panels.append(Panel(_header(metric, "test "), levels, [s.mean for s in stats],
                            [s.ci for s in stats] if seeds > 1 else None))
    shown = " and ".join(dict(METRICS)[m] if m != LENGTH else "caption length" for m in metrics)
    title = f"Test {shown} by {_name(key)} ({key})\n{_spread_words(seeds)}" + (", other factors averaged" * averaged)
    return factor_figure(title, _name(key), panels, is_numeric(levels))


def _learning_curves(results: Results, keys: list[str], headline: str) -> dict[str, tuple[list, int]]:
    """Per training cell: the val headline metric per epoch of its finished trials, mean and 95 % CI half-width."""
    per_cell: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for trial_id, run in sorted(results.trials.items(), key=lambda item: item[1].data.params.get("orch.cell", item[0])):
        if run.info.status != "FINISHED":
            continue
        label = ", ".join(f"{_name(k)}={run.data.params.get(k, '')}" for k in keys) or "all trials"
        for metric in results.tracker.client.get_metric_history(run.info.run_id, mlflow_metric(f"val_{headline}")):
            per_cell[label][metric.step].append(metric.value)
    return {label: ([(epoch, *mean_ci(values)) for epoch, values in sorted(epochs.items())],
                    max(len(values) for values in epochs.values()))
            for label, epochs in per_cell.items()}


def _search_picks(results: Results, headline: str) -> list[Pick]:
    return pick_best(results, headline) if results.search_keys else []


def _search_figure(collected: Collected, picks: list[Pick]) -> Figure:
    """Parallel coordinates of the searched keys and the training factors, one line per search sample."""
    space = collected.results.plan["search_space"]
    keys = [*collected.results.search_keys, *_training_factors(collected)]
    dimensions = [Dimension(_name(k), [pick.variant.params.get(k, "") for pick in picks],
                            log="loguniform" in space.get(k, {})) for k in keys]
    scores = [pick.score for pick in picks]
    headline = collected.headline
    dimensions.append(Dimension(f"val {headline}", scores))
    title = (f"Search samples: {len(picks)} trainings by their values, best (val {headline} "
             f"{_score(headline, scores[0])}) in red")
    return parallel_coordinates(title, dimensions, scores, _header(headline, "val "))


def _training_factors(collected: Collected) -> list[str]:
    return [k for k in collected.factors if not k.startswith("decode.")]


def importances(collected: Collected, picks: list[Pick]) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched key and training factor for the val headline metric, summing to 1:
    an in-memory study of the finished trainings, most important first."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    distributions = {key: SearchDimension.model_validate(spec).optuna_distribution()
                     for key, spec in collected.results.plan["search_space"].items()}
    for key in _training_factors(collected):
        distributions[key] = optuna.distributions.CategoricalDistribution(
            level_order([pick.variant.params.get(key, "") for pick in picks]))
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(
        params={key: _param_value(pick.variant.params.get(key, ""), d) for key, d in distributions.items()},
        distributions=distributions, value=pick.score) for pick in picks])
    return get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))


def _param_value(logged: str, distribution):
    """A param as MLflow holds it (a string), in the type its distribution draws."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return next(choice for choice in distribution.choices if str(choice) == logged)
    return int(float(logged)) if isinstance(distribution, IntDistribution) else float(logged)


# ---------------------------------------------------------------------------------- Markdown
def _sections(collected: Collected, saved: dict[str, Path]) -> list[str]:
    results, factors, outcomes = collected.results, collected.factors, collected.outcomes
    seeds = sorted({o.seed for o in outcomes}, key=float)
    planned = (results.plan or {}).get("n_trainings", len(results.trials))
    done = sum(run.info.status == "FINISHED" for run in results.trials.values())
    lines = [
        f"# Ablation report: {results.experiment}",
        "",
        f"- Invocation `{results.invocation}` in `{results.uri}`; written "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"- Data: {collected.dataset or 'unknown'} (`{_first_param(results, 'data.prepared')}`); scores on the test split.",
        f"- {done} of {planned} trainings finished; {len(outcomes)} evaluation{'s' * (len(outcomes) != 1)}; "
        f"seeds ({SEED_KEY}): {', '.join(seeds)}.",
        "- Scores on pycocoevalcap's raw scale, as MLflow stores them: BLEU, METEOR and ROUGE-L in 0–1, CIDEr in "
        "0–10; length is mean words per caption. Each entry is the mean ± the half-width of its 95 % confidence "
        "interval over seeds (Student t); with one seed, the value alone.",
    ]
    if results.search_keys:
        lines.append(f"- Search over {', '.join(results.search_keys)}: a cell's scores are the mean over its search "
                     "samples; the best samples are listed below.")
    lines += _anchor_section(collected)
    lines += _verdict_section(collected.verdicts)
    lines += _determinism_section(results)
    lines += ["", "## Every ablation cell", "", *_table(outcomes, factors)]
    if results.search_keys:
        lines += _search_section(collected, saved.get("search"))
    for pair in PAIRS:
        if all(key in factors for key in pair) and len(factors) > len(pair):
            lines += ["", f"## {' × '.join(_name(k) for k in pair)} (averaged over the other factors)", "",
                      *_table(outcomes, list(pair))]
    for key in factors:
        lines += _factor_section(collected, key, saved.get(key))
    if "learning" in saved:
        lines += ["", "## Learning curves", "", "Each training's validation score per epoch, decoded with its own "
                  "decode section (the reference decode, which picks its checkpoint).", "",
                  f"![Learning curves]({saved['learning'].name})"]
    lines += _truncated(results)
    lines += cost_section(results)
    lines += _unfinished(results)
    return lines


def cost_section(results: Results) -> list[str]:
    """What each trial cost beside what it scored (orchestrator.tracking.cost), and the ablation's total."""
    from orchestrator.tracking.cost import TAG_COST_DEVICE, totals

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


def sentence(verdict: Verdict) -> str:
    """A factor's verdict in one sentence."""
    head = (f"**{_name(verdict.key)}** (`{verdict.key}`): {verdict.best} gives the best mean {verdict.metric} "
            f"({_score(verdict.metric, verdict.best_mean)}), ")
    clauses = "; ".join(clause(c, verdict.metric, verdict.one_seed) for c in verdict.comparisons)
    if verdict.one_seed:
        return f"{head}{clauses}. One seed: whether this exceeds seed noise cannot be told ({SEEDS_HINT})."
    return f"{head}{clauses}."


def clause(comparison: Comparison, metric: str, one_seed: bool) -> str:
    """One comparison in words: the gap, and whether it exceeds seed noise."""
    said = f"{_score(metric, comparison.gap)} above {comparison.level}"
    if comparison.test is None:
        seeds = comparison.seeds
        return said if one_seed else f"{said} (untested: {seeds} seed{'s' * (seeds != 1)} evaluated both)"
    d_z = "∞" if math.isinf(comparison.test.d_z) else f"{comparison.test.d_z:.2f}"
    noise = "exceeds seed noise" if comparison.exceeds_noise else "within seed noise"
    return (f"{said} ({noise}: paired t-test over {comparison.pairs} pairs across {comparison.seeds} seeds, "
            f"d_z = {d_z}, Holm p {_p(comparison.p_holm)})")


def _determinism_section(results: Results) -> list[str]:
    """Whether the verdicts above can be checked by running again: each training's own account of its
    arithmetic (trainers.determinism, the `orch.deterministic` tag)."""
    said = {trial: run.data.tags.get(TAG_DETERMINISTIC, "") for trial, run in sorted(results.trials.items())}
    unsure = {trial: why for trial, why in said.items() if not why.startswith("yes")}
    if not unsure:
        how = next(iter(said.values()), "").removeprefix("yes: ")
        return ["", f"Deterministic: yes. Every training ran with reproducible arithmetic ({how}): the same config "
                    "and seed give these numbers again, so the spread over seeds is the noise."]
    reasons = sorted({why.removeprefix("no: ") or "not recorded (a run of an older orch)" for why in unsure.values()})
    return ["", f"Deterministic: no, for {len(unsure)} of {len(said)} trainings ({'; '.join(reasons)}): running "
                "them again gives other numbers in the last digits, which the seed-to-seed spread includes "
                "(docs/running.md#determinism)."]


def _verdict_section(found: list[Verdict]) -> list[str]:
    if not found:
        return []
    tests = sum(c.test is not None for v in found for c in v.comparisons)
    lines = ["", "## Does each factor matter?", ""]
    if tests:
        lines += [f"Each gap is the best level's mean minus the other level's. A paired t-test compares them block by "
                  f"block (a block is one seed and one level of each other training factor; a training's decode "
                  f"variants share its block); its p-values are Holm-corrected over the {tests} comparison"
                  f"{'s' * (tests != 1)} below, and a gap exceeds seed noise at corrected p < {SIGNIFICANCE}. "
                  "d_z is the mean paired difference in units of its standard deviation (Cohen's d_z).", ""]
    for v in found:
        lines.append(f"- {sentence(v)}" + (f" {NOTES[v.key]}" if v.key in NOTES else ""))
    return lines


def _factor_section(collected: Collected, key: str, figure: Optional[Path]) -> list[str]:
    """A factor's table (when other factors are averaged out) and its plot."""
    lines = []
    if len(collected.factors) > 1:
        lines += ["", f"## {_name(key)} (`{key}`), averaged over the other factors", "",
                  *_table(collected.outcomes, [key])]
    elif figure is not None:
        lines += ["", f"## {_name(key)} (`{key}`)"]
    if figure is not None:
        lines += ["", f"![{_name(key)}]({figure.name})"]
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


def _search_section(collected: Collected, figure: Optional[Path], shown: int = 10) -> list[str]:
    """The best search samples first by the val headline metric at their best epoch, their parallel
    coordinates, and the parameters' importance."""
    results, headline = collected.results, collected.headline
    keys = results.search_keys
    picks = _search_picks(results, headline)
    header = ["trial", *(_name(k) for k in keys), _header(headline, "val "), _header(headline, "test "),
              _header("Bleu_4", "test "), "best epoch"]
    lines = ["", f"## Best search samples first (by val {headline} at their best epoch)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pick in picks[:shown]:
        metrics = pick.variant.metrics
        values = [_short(pick.variant.params.get(k, "")) for k in keys]
        test = [_score(m, metrics[f"test_{m}"]) if f"test_{m}" in metrics else "–" for m in (headline, "Bleu_4")]
        lines.append("| " + " | ".join([pick.variant.training, *values, _score(headline, pick.score), *test,
                                         str(pick.best_epoch)]) + " |")
    if figure is not None:
        lines += ["", f"![Search samples]({figure.name})"]
    if len({pick.score for pick in picks}) >= 2:
        ranked = importances(collected, picks)
        few = (f" {len(picks)} trainings are few for fANOVA's random forest: read these as a hint."
               if len(picks) < IMPORTANCE_TRAININGS else "")
        lines += ["", f"Parameter importance for val {headline} (Optuna's fANOVA over the {len(picks)} finished "
                      f"trainings; sums to 1, higher matters more).{few}", "",
                  "| key | importance |", "|---|---|",
                  *[f"| `{key}` | {value:.2f} |" for key, value in ranked.items()]]
    return lines


def _short(value: str) -> str:
    """A drawn number in 4 significant digits (0.000312 rather than 0.00031178...); other values as they are."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _first_param(results: Results, key: str) -> str:
    return next((row.params[key] for row in results.rows if key in row.params), "")


def _header(metric: str, prefix: str = "") -> str:
    """A metric's column or axis label, with its scale: 'CIDEr (0–10)', 'length (words)'."""
    return f"{prefix}{dict(METRICS)[metric]} ({SCALES.get(metric, '0–1')})"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _score(metric: str, value: float) -> str:
    return f"{value:.1f}" if metric == LENGTH else f"{value:.3f}"


def _table(outcomes: list[Outcome], keys: list[str]) -> list[str]:
    shown = [metric for metric, _ in METRICS if any(metric in o.scores for o in outcomes)]
    header = [*(_name(k) for k in keys), "seeds", *(_header(metric) for metric in shown)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in group_by(outcomes, keys):
        cells = [_cell(metric, group.stats(metric)) for metric in shown]
        n = max((group.stats(metric).seeds if group.stats(metric) else 0) for metric in shown)
        lines.append("| " + " | ".join([*group.levels, str(n), *cells]) + " |")
    return lines


def _cell(metric: str, summary: Optional[Summary]) -> str:
    if summary is None:
        return "–"
    mean = _score(metric, summary.mean)
    return f"{mean} ± {_score(metric, summary.ci)}" if summary.seeds > 1 else mean


def _anchor_section(collected: Collected) -> list[str]:
    anchor = ANCHORS.get(collected.dataset)
    if anchor is None:
        return []
    best = max(group_by(collected.outcomes, collected.factors), key=lambda g: g.stats(collected.headline).mean
               if g.stats(collected.headline) else -math.inf)
    described = ", ".join(f"{_name(k)} {v}" for k, v in zip(collected.factors, best.levels)) or "the only cell"
    header = ["", *(_header(m) for m in anchor)]
    return ["", f"## Published anchors ({collected.dataset})", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            f"| {ANCHOR_SOURCE} | " + " | ".join(_score(m, v) for m, v in anchor.items()) + " |",
            f"| this experiment, best cell by {collected.headline} ({described}) | "
            + " | ".join(_cell(m, best.stats(m)) for m in anchor) + " |",
            "", "The paper's numbers are one model on the Karpathy test split (it prints them x100), METEOR from its "
                "2014 release; metric versions and preprocessing alone can move them by 0.01 or 0.02."]


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


def _as_data(collected: Collected) -> dict:
    def rows(keys: list[str]) -> list[dict]:
        return [{"levels": dict(zip(keys, g.levels)),
                 "metrics": {m: {"mean": s.mean, "std": s.std, "ci95": s.ci, "seeds": s.seeds}
                             for m, _ in METRICS if (s := g.stats(m)) is not None}}
                for g in group_by(collected.outcomes, keys)]

    def comparison(c: Comparison) -> dict:
        test = c.test
        return {"level": c.level, "mean": c.mean, "gap": c.gap, "pairs": c.pairs, "seeds": c.seeds,
                "t": test and test.t, "p": test and test.p, "p_holm": c.p_holm,
                "d_z": test and test.d_z, "exceeds_seed_noise": c.exceeds_noise}

    factors = collected.factors
    return {"experiment": collected.results.experiment, "invocation": collected.results.invocation,
            "dataset": collected.dataset, "factors": factors,
            "scale": "raw pycocoevalcap: BLEU, METEOR, ROUGE_L in 0-1, CIDEr in 0-10; mean_caption_length in words",
            "cells": rows(factors), "per_factor": {key: rows([key]) for key in factors},
            "verdicts": {v.key: {"metric": v.metric, "best": v.best, "best_mean": v.best_mean,
                                 "comparisons": [comparison(c) for c in v.comparisons]} for v in collected.verdicts}}
