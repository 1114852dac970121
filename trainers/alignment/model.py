"""The alignment model: image fragments and sentence fragments in one h-dimensional space.

    v_i = W_m CNN(I_b) + b_m                               (1)  image fragments
    x_t = W_w 1_t                                          (2)  word vectors
    e_t = f(W_e x_t + b_e)                                 (3)
    h_t^f = f(e_t + W_f h_{t-1}^f + b_f)                   (4)  forward states
    h_t^b = f(e_t + W_b h_{t+1}^b + b_b)                   (5)  backward states
    s_t = f(W_d (h_t^f + h_t^b) + b_d)                     (6)  sentence fragments

with f the ReLU (Karpathy & Fei-Fei 2015). The model also holds the region captioner (a decoder
of trainers.models, the paper's multimodal RNN with `model.decoder: mrnn`), trained after the
alignment on the region-snippet pairs it infers, so one state dict rebuilds both.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.config import TrainerConfig
from trainers.models import Decoder


class SentenceBRNN(nn.Module):
    """Words (B, T) -> sentence fragments s_t (B, T, h), zeros past each sentence's length."""

    def __init__(self, vocab_size: int, word_dim: int, hidden_dim: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, word_dim, padding_idx=0)  # W_w
        self.encode = nn.Linear(word_dim, hidden_dim)  # W_e, b_e
        self.forward_recurrence = nn.Linear(hidden_dim, hidden_dim)  # W_f, b_f
        self.backward_recurrence = nn.Linear(hidden_dim, hidden_dim)  # W_b, b_b
        self.output = nn.Linear(hidden_dim, hidden_dim)  # W_d, b_d

    def forward(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(words.shape[1], device=words.device)  # (T,)
        real = steps[None, :] < lengths[:, None]  # (B, T)
        e = torch.relu(self.encode(self.words(words)))  # (B, T, h)
        forward_states = self._recur(e, self.forward_recurrence)  # (B, T, h)
        # Reversing each sentence within its own length makes the backward pass start at its last word.
        reverse = torch.where(real, lengths[:, None] - 1 - steps[None, :], steps[None, :])  # (B, T)
        gather = reverse[:, :, None].expand_as(e)  # (B, T, h)
        backward_states = self._recur(e.gather(1, gather), self.backward_recurrence).gather(1, gather)  # (B, T, h)
        s = torch.relu(self.output(forward_states + backward_states))  # (B, T, h)
        return s * real[:, :, None]

    @staticmethod
    def _recur(e: torch.Tensor, recurrence: nn.Linear) -> torch.Tensor:
        h = e.new_zeros(e.shape[0], e.shape[2])  # (B, h)
        states = []
        for t in range(e.shape[1]):
            h = torch.relu(e[:, t] + recurrence(h))  # (B, h)
            states.append(h)
        return torch.stack(states, dim=1)  # (B, T, h)


class AlignmentModel(nn.Module):
    """Eq. (1) reads the CNN features standardised by the train split's channel means and deviations
    (`set_feature_statistics`): an affine change of W_m and b_m, so the same model, but one whose
    SGD steps are even across channels. CNN features are all positive around a large common part,
    which otherwise makes the first steps blow the scores up."""

    def __init__(self, cfg: TrainerConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        a = cfg.alignment
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.image = nn.Linear(feature_dim, a.embed_dim)  # W_m, b_m
        nn.init.normal_(self.image.weight, std=0.01)  # small scores at the start keep SGD stable
        nn.init.zeros_(self.image.bias)
        self.sentence = SentenceBRNN(vocab_size, a.word_dim, a.embed_dim)
        self.region_captioner = Decoder(cfg.model, feature_dim, vocab_size)

    def set_feature_statistics(self, features: torch.Tensor) -> None:
        """Standardise with the channel statistics of these CNN features (n, C)."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-6))

    def standardised(self, features: torch.Tensor) -> torch.Tensor:
        """CNN features (..., C) standardised by the train split's statistics: what eq. (1) and the
        region captioner read. (A random CNN's raw features share a large common part that would
        leave the captioner nearly blind to which region it is captioning.)"""
        return (features - self.feature_mean) / self.feature_std

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        """CNN features (..., M, C) -> image fragments v_i (..., M, h)."""
        return self.image(self.standardised(features))

    def embed_sentences(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Words (B, T) with lengths (B,) -> sentence fragments s_t (B, T, h)."""
        return self.sentence(words, lengths)

    def param_groups(self, lr: float, encoder_lr: float) -> list[dict]:
        """What the alignment epochs train (the CNN is frozen; the region captioner trains afterwards)."""
        return [{"params": [*self.image.parameters(), *self.sentence.parameters()], "lr": lr}]
