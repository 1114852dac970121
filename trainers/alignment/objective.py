"""Image-sentence scores and the max-margin structured loss (eqs. 8 and 9)."""

from __future__ import annotations

import torch


def fragment_scores(images: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
    """v_iᵀ s_t for every image (N, M, h) and sentence (K, T, h): (N, K, M, T)."""
    return torch.einsum("nmh,kth->nkmt", images, sentences)


def image_sentence_scores(images: torch.Tensor, sentences: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """S_kl = Σ_t max_i v_iᵀ s_t (eq. 8): every word counts with its best region. (N, K)."""
    best_region = fragment_scores(images, sentences).max(dim=2).values  # (N, K, T)
    real = torch.arange(sentences.shape[1], device=lengths.device)[None, :] < lengths[:, None]  # (K, T)
    return (best_region * real[None]).sum(dim=2)  # (N, K)


def ranking_loss(scores: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. (9) over a batch whose k-th image and k-th sentence belong together, as the mean of its terms.

    scores (B, B) hold S_kl for image k and sentence l. Each true pair must beat every other sentence
    of its image (rows) and every other image of its sentence (columns) by `margin`. The terms
    l = k are left out: they are the constant `margin` and carry no gradient. Averaging the
    2B(B - 1) others instead of summing them keeps the gradients, and so the learning rate and the
    gradient clipping, independent of the batch size; a loss of `margin` is where training starts.
    """
    batch = scores.shape[0]
    true = scores.diagonal()  # (B,)
    other_sentences = torch.relu(scores - true[:, None] + margin)  # (B, B): S_kl - S_kk
    other_images = torch.relu(scores - true[None, :] + margin)  # (B, B): S_lk - S_kk, column k
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=scores.device)
    return ((other_sentences + other_images) * off_diagonal).sum() / (2 * batch * (batch - 1))
