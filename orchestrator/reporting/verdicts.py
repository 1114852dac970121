"""What an ablation's outcomes say: each finished evaluation as an outcome, the outcomes grouped by
factor levels (averaged over the other factors within each seed first, so a group's spread is still
seed-to-seed), and each factor's verdict: its best level, the gap to each other level, and with
several seeds a paired t-test per gap, Holm-corrected over every comparison of the report."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from orchestrator.reporting.stats import PairedTest, holm, mean_ci, mean_std, paired_t_test

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Outcome:
    """One finished evaluation: an ablation cell's values at one seed, and its test scores."""

    levels: dict[str, str]  # factor key -> value, as MLflow holds it
    seed: str
    scores: dict[str, float]  # test metrics without the "test_" prefix, raw scale


@dataclass(frozen=True)
class Summary:
    """A metric over seeds: mean, sample std, the half-width of the 95 % confidence interval, seeds."""

    mean: float
    std: float
    ci: float
    seeds: int


@dataclass
class Group:
    """One row of a table: the levels of its keys, and each metric over seeds."""

    levels: tuple[str, ...]
    per_seed: dict[str, dict[str, float]]  # metric -> seed -> value (averaged over the other factors)

    def stats(self, metric: str) -> Optional[Summary]:
        values = list(self.per_seed.get(metric, {}).values())
        if not values:
            return None
        (mean, ci), (_, std) = mean_ci(values), mean_std(values)
        return Summary(mean, std, ci, len(values))


def level_order(values: list[str]) -> list[str]:
    """Distinct values, numerically when they are numbers, else in the order they first appear."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def is_numeric(levels: list[str]) -> bool:
    try:
        [float(level) for level in levels]
    except ValueError:
        return False
    return True


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
class Comparison:
    """The best level of a factor against one other level; `test` is None unless 2+ seeds evaluated both."""

    level: str
    mean: float
    gap: float  # best mean minus this level's mean
    pairs: int
    seeds: int
    test: Optional[PairedTest] = None
    p_holm: Optional[float] = None

    @property
    def exceeds_noise(self) -> Optional[bool]:
        return None if self.p_holm is None else self.p_holm < SIGNIFICANCE


@dataclass
class Verdict:
    """One factor: its best level by mean `metric`, and that level against each other level."""

    key: str
    metric: str
    best: str
    best_mean: float
    one_seed: bool  # the whole experiment has one seed
    comparisons: list[Comparison] = field(default_factory=list)


def verdicts(outcomes: list[Outcome], factors: list[str], metric: str) -> list[Verdict]:
    """A verdict per factor with two or more levels, its tests Holm-corrected together."""
    found = [v for v in (_verdict(outcomes, key, factors, metric) for key in factors) if v is not None]
    tested = [c for v in found for c in v.comparisons if c.test is not None]
    for comparison, adjusted in zip(tested, holm([c.test.p for c in tested])):
        comparison.p_holm = adjusted
    return found


def _verdict(outcomes: list[Outcome], key: str, factors: list[str], metric: str) -> Optional[Verdict]:
    """Best level of `key` by mean `metric` against every other level, best-placed first."""
    means = {g.levels[0]: g.stats(metric).mean for g in group_by(outcomes, [key]) if g.per_seed.get(metric)}
    if len(means) < 2:
        return None
    best = max(means, key=means.get)
    blocks = _blocks(outcomes, key, factors, metric)
    result = Verdict(key, metric, best, means[best], one_seed=seed_count(outcomes) == 1)
    for level in sorted((level for level in means if level != best), key=lambda level: -means[level]):
        shared = sorted(set(blocks[best]) & set(blocks[level]))
        seeds = len({block[0] for block in shared})
        comparison = Comparison(level, means[level], means[best] - means[level], len(shared), seeds)
        if seeds >= 2:
            comparison.test = paired_t_test([blocks[best][b] for b in shared], [blocks[level][b] for b in shared])
        result.comparisons.append(comparison)
    return result


def _blocks(outcomes: list[Outcome], key: str, factors: list[str], metric: str) -> dict[str, dict[tuple, float]]:
    """level -> block -> mean `metric`, a block being a seed and the levels of the training factors other
    than `key`. Decode variants of one training share its block: they are not independent samples."""
    others = [k for k in factors if k != key and not k.startswith("decode.")]
    values: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for outcome in outcomes:
        if metric in outcome.scores:
            block = (outcome.seed, *(outcome.levels[k] for k in others))
            values[outcome.levels[key]][block].append(outcome.scores[metric])
    return {level: {block: statistics.fmean(v) for block, v in blocks.items()} for level, blocks in values.items()}


def seed_count(outcomes: list[Outcome]) -> int:
    """How many distinct seeds the outcomes hold."""
    return len({outcome.seed for outcome in outcomes})
