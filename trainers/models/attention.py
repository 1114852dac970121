"""Attention over the encoder grid: (features (B, P, C), hidden (B, H)) -> context, alpha (B, P).

Each module splits its work in two: `prepare(features)` does the per-image part once per caption
(projecting the grid), `forward(features, hidden, prepared)` the per-step part. Training and beam
search call `prepare` once and reuse it at every step; `forward` computes it itself when omitted.
`context_dim` is the width of the context vector the decoder receives.

`hidden` may hold K consecutive rows per image (beam search's beams): hidden (B*K, H) with
features (B, P, C) gives context (B*K, D) and alpha (B*K, P), so the grid is never copied per beam.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainers.models.registry import Registry

ATTENTIONS: Registry = Registry("attention", "model.attention")


@ATTENTIONS.register("soft")
class SoftAttention(nn.Module):
    """Show, Attend and Tell's additive attention: softmax_p(w · relu(W_e f_p + W_d h))."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.context_dim = feature_dim
        self.encoder_att = nn.Linear(feature_dim, attention_dim)
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder_att(features)  # (B, P, A)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor,
                prepared: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        prepared = self.prepare(features) if prepared is None else prepared  # (B, P, A)
        batch, pixels, width = prepared.shape
        att_h = self.decoder_att(hidden).view(batch, -1, 1, width)  # (B, K, 1, A)
        weight = self.full_att.weight.view(width)  # (A,)
        scores = torch.cat([torch.matmul(self.energies(prepared[i:i + n], att_h[i:i + n]), weight)
                            for i, n in image_chunks(prepared, att_h.shape[1])])  # (B, K, P)
        alpha = (scores + self.full_att.bias).softmax(dim=2)  # (B, K, P)
        context = torch.bmm(alpha, features)  # (B, K, C)
        return context.view(-1, self.context_dim), alpha.view(-1, pixels)

    @staticmethod
    def energies(prepared: torch.Tensor, att_h: torch.Tensor) -> torch.Tensor:
        """relu(W_e f + W_d h) for n images: prepared (n, P, A), att_h (n, K, 1, A) -> (n, K, P, A)."""
        return (prepared.unsqueeze(1) + att_h).relu_()


CHUNK_ELEMENTS = 1 << 20  # energies per chunk on a CPU: 4 MB, which stays in cache


def image_chunks(prepared: torch.Tensor, rows_per_image: int) -> list[tuple[int, int]]:
    """(first image, images) chunks for the (B, K, P, A) energies. On a CPU a few images at a time:
    beam search's energies are tens of MB per step, and going through memory three times (add, ReLU,
    score) cost a batched search a fifth of its time. A GPU takes them whole."""
    batch, pixels, width = prepared.shape
    size = batch if prepared.is_cuda else max(1, CHUNK_ELEMENTS // (rows_per_image * pixels * width))
    return [(first, size) for first in range(0, batch, size)]


@ATTENTIONS.register("dot")
class DotAttention(nn.Module):
    """The EECS assignment's scaled dot-product attention over a projected grid.

    The grid is projected once to A = W f (B, P, attention_dim), which serves as keys and values;
    the query is a projection of the hidden state; weights = softmax(A q / sqrt(attention_dim)).
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.context_dim = attention_dim
        self.project = nn.Linear(feature_dim, attention_dim)
        self.query = nn.Linear(hidden_dim, attention_dim)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features)  # (B, P, A)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor,
                prepared: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        prepared = self.prepare(features) if prepared is None else prepared  # (B, P, A)
        batch, pixels, _ = prepared.shape
        query = self.query(hidden).view(batch, -1, self.context_dim)  # (B, K, A)
        alpha = (torch.bmm(query, prepared.transpose(1, 2)) * self.scale).softmax(dim=2)  # (B, K, P)
        context = torch.bmm(alpha, prepared)  # (B, K, A)
        return context.view(-1, self.context_dim), alpha.view(-1, pixels)


@ATTENTIONS.register("mean")
class MeanContext(nn.Module):
    """No learned attention, but the mean encoding is fed to the decoder at every step.

    `model.attention: none` is the tutorial's "without attention" (the image only starts the
    state); this is the variant that keeps the image in view with uniform weights.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.context_dim = feature_dim

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=1)  # (B, C)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor,
                prepared: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.prepare(features) if prepared is None else prepared  # (B, C)
        rows_per_image = hidden.shape[0] // mean.shape[0]
        context = mean.repeat_interleave(rows_per_image, dim=0)  # (B*K, C)
        return context, uniform_weights(features, hidden.shape[0])


def uniform_weights(features: torch.Tensor, rows: int) -> torch.Tensor:
    """Attention weights (rows, P) of 1/P each: what a decoder that learns no attention shows."""
    return features.new_full((rows, features.shape[1]), 1.0 / features.shape[1])


def attention_regularisation(alphas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Doubly stochastic attention (Xu et al. 2015) as the Show-Attend-Tell tutorial computes it.

    alphas (B, T, P), mask (B, T) true at real (non-pad) steps -> the mean over images and pixels of
    (1 - sum_t alpha_tp)^2, the sum over t running over real steps only. The mean over P is the
    tutorial's `((1 - alphas.sum(dim=1)) ** 2).mean()`, so `alpha_c` = the paper's λ times P. Rows
    without a real step (those that pad a batch to a fixed size, trainers.compiled) are left out of
    the mean; with none, it is that mean bit for bit.
    """
    attended = (alphas * mask.unsqueeze(2).to(alphas.dtype)).sum(dim=1)  # (B, P)
    captioned = mask.any(dim=1)  # (B,)
    squared = ((1.0 - attended) ** 2) * captioned.unsqueeze(1).to(attended.dtype)  # (B, P)
    return squared.sum() / (captioned.sum() * attended.shape[1])
