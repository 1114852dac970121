"""The report's statistics: Student's t p-values (closed form) and the paired test across seeds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.stats import mean_std, paired_t_test, t_two_sided_p

# Two-sided 5% critical values of Student's t from any printed table.
CRITICAL_5_PERCENT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df, t", CRITICAL_5_PERCENT.items())
def test_the_printed_critical_values_give_p_of_five_percent(df, t):
    assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)


@given(st.floats(0, 50), st.floats(0, 50), st.integers(1, 60))
def test_p_is_a_probability_that_falls_as_t_grows(t1, t2, df):
    low, high = sorted((t1, t2))
    assert 0.0 <= t_two_sided_p(high, df) <= t_two_sided_p(low, df) + 1e-12  # 1 - A(t) rounds near p = 0
    assert t_two_sided_p(low, df) <= 1.0
    assert t_two_sided_p(-high, df) == t_two_sided_p(high, df)


def test_t_of_zero_is_no_evidence_and_infinite_t_is_certainty():
    assert t_two_sided_p(0.0, 4) == 1.0
    assert t_two_sided_p(math.inf, 2) == 0.0


def test_mean_std_uses_the_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_a_consistent_gap_across_seeds_is_significant_and_a_noisy_one_is_not():
    consistent = paired_t_test([0.60, 0.62, 0.61], [0.50, 0.51, 0.52])
    noisy = paired_t_test([0.60, 0.50, 0.58], [0.52, 0.57, 0.55])
    assert consistent.p < 0.05 and consistent.mean_difference == pytest.approx(0.10)
    assert noisy.p > 0.5


def test_identical_differences_have_no_spread():
    assert paired_t_test([2.0, 3.0], [1.0, 2.0]).p == 0.0
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p == 1.0


def test_a_paired_test_needs_two_pairs():
    with pytest.raises(ValueError):
        paired_t_test([1.0], [2.0])
