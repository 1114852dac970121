"""The little statistics a report needs: mean and 95 % confidence interval over seeds, a paired
t-test with its effect size (Cohen's d_z), and Holm's correction for testing several factors.

Student's t comes from SciPy (`scipy.stats.t`, `scipy.stats.ttest_rel`); what orch adds is the
zero-variance case (identical differences: no test statistic, a sure effect) and Holm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of one value is 0."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The t with P(|T| >= t) = 1 - confidence for `df` degrees of freedom (12.706 for df = 1 at 95 %)."""
    return float(stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval; the half-width of one value is 0."""
    mean, std = mean_std(values)
    n = len(values)
    return mean, (t_critical(n - 1, confidence) * std / math.sqrt(n) if n > 1 else 0.0)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the given order: the k-th smallest of m is multiplied by
    m - k + 1 and never falls below the one before it, so `adjusted < alpha` keeps the family's error at alpha."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class PairedTest:
    n: int  # pairs
    mean_difference: float  # mean of a - b
    t: float
    p: float  # two-sided
    d_z: float  # Cohen's d_z: the mean difference in units of the differences' std


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of a against b (same length >= 2, paired by position: by seed and the other factors).

    Differences that are all equal have no spread to test against: SciPy answers NaN there; here the
    effect is sure (p = 0, infinite d_z) unless they are all zero (p = 1, no effect)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired test needs two equally long samples of at least 2, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(differences)
    n = len(differences)
    if std == 0.0:
        if mean == 0.0:
            return PairedTest(n, mean, 0.0, 1.0, 0.0)
        return PairedTest(n, mean, math.copysign(math.inf, mean), 0.0, math.copysign(math.inf, mean))
    result = stats.ttest_rel(a, b)
    return PairedTest(n, mean, float(result.statistic), float(result.pvalue), mean / std)
