"""Words to regions: the DP finds the MRF's best assignment, β sets how long the snippets are."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.alignment.mrf import Snippet, align_words, snippets

# Whole-number scores and β in quarters keep every energy exact, so optima compare exactly.
unaries = st.integers(1, 5).flatmap(lambda words: st.integers(1, 4).flatmap(
    lambda regions: st.lists(st.lists(st.integers(-4, 4), min_size=regions, max_size=regions),
                             min_size=words, max_size=words))).map(lambda rows: np.array(rows, dtype=float))
betas = st.integers(0, 16).map(lambda quarters: quarters / 4)


def energy(unary: np.ndarray, assignment, beta: float) -> float:
    """E(a) = Σ_j ψ_U(a_j) + β Σ_j 1[a_j = a_{j+1}]."""
    return (sum(unary[j, a] for j, a in enumerate(assignment))
            + beta * sum(a == b for a, b in zip(assignment, assignment[1:])))


@settings(max_examples=100, deadline=None)
@given(unaries, betas)
def test_the_dp_finds_the_best_assignment_of_brute_force(unary, beta):
    words, regions = unary.shape
    best = max(energy(unary, a, beta) for a in itertools.product(range(regions), repeat=words))
    assignment = align_words(unary, beta)
    assert len(assignment) == words and all(0 <= a < regions for a in assignment)
    assert energy(unary, assignment, beta) == best


@settings(max_examples=60, deadline=None)
@given(unaries)
def test_beta_zero_aligns_each_word_to_its_best_region(unary):
    assignment = align_words(unary, 0.0)
    assert [unary[j, a] for j, a in enumerate(assignment)] == list(unary.max(axis=1))


@settings(max_examples=60, deadline=None)
@given(unaries, betas, betas)
def test_a_larger_beta_never_gives_more_snippets(unary, beta, other):
    low, high = sorted((beta, other))
    assert len(snippets(align_words(unary, high))) <= len(snippets(align_words(unary, low)))


def test_snippets_lengthen_as_beta_grows_on_a_sentence():
    # "a red circle and a blue cross": region 0 holds the circle, region 1 the cross, 2 the whole image.
    unary = np.array([[0.2, 0.1, 0.3],   # a
                      [1.0, 0.0, 0.4],   # red
                      [1.2, 0.1, 0.5],   # circle
                      [0.1, 0.2, 0.3],   # and
                      [0.1, 0.3, 0.4],   # a
                      [0.0, 1.1, 0.4],   # blue
                      [0.1, 0.9, 0.5]])  # cross
    lengths = []
    for beta in (0.0, 0.25, 0.5, 4.0):
        pieces = snippets(align_words(unary, beta))
        lengths.append(len(unary) / len(pieces))
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    assert snippets(align_words(unary, 0.25)) == [Snippet(0, 3, 0), Snippet(3, 7, 1)]
    assert snippets(align_words(unary, 4.0)) == [Snippet(0, 7, 2)]


def test_snippets_are_the_runs_of_one_region():
    assert snippets([2, 2, 0, 1, 1, 1]) == [Snippet(0, 2, 2), Snippet(2, 3, 0), Snippet(3, 6, 1)]
    assert snippets([]) == []
