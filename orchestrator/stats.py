"""The little statistics a report needs: mean and 95 % confidence interval over seeds, a paired
t-test with its effect size (Cohen's d_z), and Holm's correction for testing several factors.

No SciPy: Student's t distribution with an integer number of degrees of freedom (all a paired
test over n seeds needs) has a closed form (Abramowitz & Stegun 26.7.3 and 26.7.4); its quantile
is found by bisection on that closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of one value is 0."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 1:  # A(t|ν) = 2/π (θ + sinθ cosθ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + ...))
        term, series = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 3) // 2 + 1):
            term *= cos2 * (2 * k) / (2 * k + 1)
            series += term
        inside = (2 / math.pi) * (theta + math.sin(theta) * math.cos(theta) * series)
    else:  # A(t|ν) = sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...)
        term, series = 1.0, 1.0
        for k in range(1, (df - 2) // 2 + 1):
            term *= cos2 * (2 * k - 1) / (2 * k)
            series += term
        inside = math.sin(theta) * series
    return min(1.0, max(0.0, 1.0 - inside))


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The t with P(|T| >= t) = 1 - confidence for `df` degrees of freedom (12.706 for df = 1 at 95 %)."""
    alpha = 1.0 - confidence
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > alpha:  # p falls as t grows: bracket, then halve the bracket
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df) > alpha else (low, middle)
    return (low + high) / 2


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
    """Paired t-test of a against b (same length >= 2, paired by position: by seed and the other factors)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired test needs two equally long samples of at least 2, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(differences)
    n = len(differences)
    if std == 0.0:
        d_z = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        d_z = mean / std
    t = d_z * math.sqrt(n)
    return PairedTest(n, mean, t, t_two_sided_p(t, n - 1), d_z)
