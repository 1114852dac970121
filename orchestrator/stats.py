"""The little statistics a report needs: mean ± std over seeds, and a paired t-test across seeds.

No SciPy: Student's t distribution with an integer number of degrees of freedom (all a paired
test over n seeds needs) has a closed form (Abramowitz & Stegun 26.7.3 and 26.7.4).
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


@dataclass(frozen=True)
class PairedTest:
    n: int  # pairs (seeds)
    mean_difference: float  # mean of a - b
    t: float
    p: float  # two-sided


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of a against b (same length >= 2, paired by position: by seed)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired test needs two equally long samples of at least 2, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(differences)
    n = len(differences)
    if std == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (std / math.sqrt(n))
    return PairedTest(n, mean, t, t_two_sided_p(t, n - 1))
