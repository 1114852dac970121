"""Retrieval metrics on hand-made similarity matrices."""

from __future__ import annotations

import numpy as np
import pytest

from trainers.alignment.retrieval import chance_recall, retrieval_metrics


def test_a_perfect_matrix_finds_everything_first():
    sentence_image = np.repeat(np.arange(4), 2)  # two sentences per image
    scores = (sentence_image[None, :] == np.arange(4)[:, None]).astype(float)  # (4, 8)
    metrics = retrieval_metrics(scores, sentence_image)
    assert metrics["i2t_R1"] == metrics["t2i_R1"] == 100.0
    assert metrics["i2t_medr"] == metrics["t2i_medr"] == 1.0
    assert metrics["rsum"] == 600.0


def test_ranks_on_a_hand_made_matrix():
    sentence_image = np.array([0, 0, 1, 2])
    scores = np.array([[0.1, 0.9, 0.8, 0.2],    # image 0: its sentence 1 comes first
                       [0.7, 0.6, 0.5, 0.4],    # image 1: its sentence 2 comes third
                       [0.3, 0.2, 0.1, 0.0]])   # image 2: its sentence 3 comes last
    metrics = retrieval_metrics(scores, sentence_image)
    assert metrics["i2t_R1"] == pytest.approx(100 / 3)
    assert metrics["i2t_medr"] == 3.0  # ranks 1, 3, 4 (sentence 0 is image 0's, not counted against it)
    # sentences -> images: s0 rank 3 (0.1 under 0.7, 0.3), s1 1, s2 2 (0.5 under 0.8), s3 3
    assert metrics["t2i_R1"] == 25.0
    assert metrics["t2i_medr"] == 2.5
    assert metrics["t2i_R5"] == metrics["i2t_R5"] == 100.0


def test_ties_count_against_the_model():
    sentence_image = np.repeat(np.arange(20), 5)
    metrics = retrieval_metrics(np.zeros((20, 100)), sentence_image)
    assert metrics["i2t_R10"] == metrics["t2i_R10"] == 0.0
    assert metrics["t2i_medr"] == 20.0


def test_chance_recall():
    assert chance_recall(1, 10) == pytest.approx(10.0)
    assert chance_recall(5, 10, right=5) == pytest.approx(100 * (1 - 1 / 252))
    assert chance_recall(10, 5) == 100.0
