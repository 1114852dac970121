"""Image-sentence scores (eq. 8) and the max-margin loss (eq. 9)."""

from __future__ import annotations

import pytest
import torch

from trainers.alignment.objective import fragment_scores, image_sentence_scores, ranking_loss


def test_scores_have_one_value_per_image_and_sentence():
    images, sentences = torch.randn(3, 5, 8), torch.randn(4, 6, 8)  # (N, M, h), (K, T, h)
    assert fragment_scores(images, sentences).shape == (3, 4, 5, 6)
    assert image_sentence_scores(images, sentences, torch.tensor([6, 2, 1, 4])).shape == (3, 4)


def test_each_word_counts_with_its_best_region_and_padding_not_at_all():
    images, sentences = torch.randn(2, 3, 4), torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 3, 1])
    scores = image_sentence_scores(images, sentences, lengths)
    for k in range(2):
        for l in range(3):
            expected = sum(max(float(images[k, i] @ sentences[l, t]) for i in range(3)) for t in range(lengths[l]))
            assert float(scores[k, l]) == pytest.approx(expected, abs=1e-5)


def test_the_loss_averages_the_margin_violations_of_both_directions():
    scores = torch.tensor([[2.0, 0.5],
                           [1.5, 1.0]])
    # image 1 ranks sentence 0 above its own by 0.5 (+1 margin): 1.5; sentence 0 ranks image 1
    # within the margin of image 0: 0.5; sentence 1 ranks image 0 within the margin of image 1: 0.5.
    assert float(ranking_loss(scores, margin=1.0)) == pytest.approx((1.5 + 0.5 + 0.5) / 4)


def test_true_pairs_that_win_by_the_margin_cost_nothing():
    scores = torch.eye(4) * 3.0
    assert float(ranking_loss(scores, margin=1.0)) == 0.0
    assert float(ranking_loss(scores, margin=3.5)) > 0.0


def test_a_gradient_step_raises_true_pairs_above_the_others():
    scores = torch.zeros(3, 3, requires_grad=True)
    ranking_loss(scores, margin=1.0).backward()
    assert (scores.grad.diagonal() < 0).all()  # descending the loss raises S_kk
    off_diagonal = scores.grad[~torch.eye(3, dtype=torch.bool)]
    assert (off_diagonal > 0).all()
