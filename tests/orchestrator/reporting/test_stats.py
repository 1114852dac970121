"""The report's statistics: Student's t quantiles, confidence intervals, the paired test with its
effect size, and Holm's correction; equal to SciPy's, and to the printed tables."""

from __future__ import annotations

import math

import pytest

from scipy import stats

from orchestrator.reporting.stats import holm, mean_ci, mean_std, paired_t_test, t_critical

# Two-sided 5% critical values of Student's t from any printed table.
CRITICAL_5_PERCENT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}
CRITICAL_1_PERCENT = {1: 63.657, 2: 9.925, 5: 4.032, 10: 3.169, 30: 2.750}


PAIRS = [([0.60, 0.62, 0.61], [0.50, 0.51, 0.52]), ([0.60, 0.50, 0.58], [0.52, 0.57, 0.55]),
         ([3.227, 3.174, 3.192, 3.201, 3.188], [3.120, 3.190, 3.101, 3.150, 3.144]),
         ([1.0, 2.5], [0.5, 0.75]), ([0.2, 0.4, 0.1, 0.9, 0.3, 0.5, 0.7], [0.3, 0.1, 0.2, 0.5, 0.6, 0.2, 0.4])]


@pytest.mark.parametrize("a, b", PAIRS)
def test_the_paired_test_and_the_interval_are_scipys(a, b):
    """The report's figures are SciPy's to 1e-12: the statistic, the two-sided p, and the interval's half-width."""
    found, expected = paired_t_test(a, b), stats.ttest_rel(a, b)
    assert found.t == pytest.approx(expected.statistic, rel=1e-12, abs=1e-12)
    assert found.p == pytest.approx(expected.pvalue, rel=1e-12, abs=1e-12)
    differences = [x - y for x, y in zip(a, b)]
    low, high = stats.t.interval(0.95, len(a) - 1, loc=sum(differences) / len(a), scale=stats.sem(differences))
    assert mean_ci(differences)[1] == pytest.approx((high - low) / 2, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("df, t", CRITICAL_5_PERCENT.items())
def test_the_95_percent_quantile_is_the_printed_critical_value(df, t):
    assert t_critical(df) == pytest.approx(t, abs=1e-3)


@pytest.mark.parametrize("df, t", CRITICAL_1_PERCENT.items())
def test_the_99_percent_quantile_is_the_printed_critical_value(df, t):
    assert t_critical(df, confidence=0.99) == pytest.approx(t, abs=1e-3)


def test_the_confidence_interval_of_three_seeds_is_4_303_standard_errors():
    mean, half_width = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half_width == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert mean_ci([5.0]) == (5.0, 0.0)


def test_holm_multiplies_the_kth_smallest_p_by_m_minus_k_plus_1_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([0.02]) == [0.02]


def test_the_effect_size_is_the_mean_difference_over_the_differences_std():
    test = paired_t_test([1.1, 1.2, 1.3], [1.0, 1.0, 1.0])
    assert test.d_z == pytest.approx(2.0) and test.t == pytest.approx(2.0 * math.sqrt(3))
    assert paired_t_test([2.0, 3.0], [1.0, 2.0]).d_z == math.inf


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


def test_every_field_of_a_paired_test_is_what_the_report_prints():
    """n, the mean difference and d_z as well as t and p, on SciPy's path and on both no-spread paths."""
    from orchestrator.reporting.stats import PairedTest

    a, b = PAIRS[2]
    found = paired_t_test(a, b)
    differences = [x - y for x, y in zip(a, b)]
    assert found.n == 5 and found.mean_difference == pytest.approx(sum(differences) / 5, abs=1e-15)
    assert found.d_z == pytest.approx(found.mean_difference / stats.tstd(differences), rel=1e-12)
    assert paired_t_test([2.0, 3.0], [1.0, 2.0]) == PairedTest(2, 1.0, math.inf, 0.0, math.inf)
    assert paired_t_test([1.0, 2.0], [2.0, 3.0]) == PairedTest(2, -1.0, -math.inf, 0.0, -math.inf)
    assert paired_t_test([1.0, 2.0, 4.0], [1.0, 2.0, 4.0]) == PairedTest(3, 0.0, 0.0, 1.0, 0.0)


def test_a_paired_test_of_unequal_samples_says_their_lengths():
    with pytest.raises(ValueError, match="at least 2, got 3 and 2"):
        paired_t_test([1.0, 2.0, 3.0], [2.0, 3.0])


def test_the_interval_takes_its_confidence():
    assert mean_ci([1.0, 2.0, 3.0], confidence=0.99)[1] == pytest.approx(9.925 / math.sqrt(3), abs=1e-3)


def test_holm_never_adjusts_a_p_value_past_one():
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # 2 x 0.6 would be 1.2
