"""Recurrent cores the decoder shell swaps by `model.decoder` (ImageCaptioning.pytorch's cores).

A core's state is a tuple of (B, ·) tensors with the hidden state first, so one `reorder` serves
beam search for every core. `init_state` starts the state from the mean encoding through linear
layers, as Show, Attend and Tell does.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.models.registry import Registry

DECODERS: Registry = Registry("decoder", "model.decoder")

State = tuple[torch.Tensor, ...]


class Core(nn.Module):
    def hidden(self, state: State) -> torch.Tensor:
        return state[0]  # (B, H)

    @staticmethod
    def reorder(state: State, index) -> State:
        """Rows picked by `index` (a slice, or (B',) row indices: beam search follows each beam's origin)."""
        return tuple(part[index] for part in state)


class SingleStateCore(Core):
    """A recurrent cell whose whole state is h: its class is the one thing RNN and GRU cores change."""

    cell_type: type[nn.RNNCellBase]

    def __init__(self, input_dim: int, hidden_dim: int, feature_dim: int):
        super().__init__()
        self.cell = self.cell_type(input_dim, hidden_dim)
        self.init_h = nn.Linear(feature_dim, hidden_dim)

    def init_state(self, mean_features: torch.Tensor) -> State:
        return (self.init_h(mean_features),)  # (B, H)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h = self.cell(x, state[0])  # (B, H)
        return h, (h,)


@DECODERS.register("rnn")
class RNNCore(SingleStateCore):
    """Vanilla tanh RNN."""

    cell_type = nn.RNNCell


@DECODERS.register("lstm")
class LSTMCore(Core):
    def __init__(self, input_dim: int, hidden_dim: int, feature_dim: int):
        super().__init__()
        self.cell = nn.LSTMCell(input_dim, hidden_dim)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)

    def init_state(self, mean_features: torch.Tensor) -> State:
        return self.init_h(mean_features), self.init_c(mean_features)  # (B, H), (B, H)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = self.cell(x, state)  # (B, H), (B, H)
        return h, (h, c)


@DECODERS.register("gru")
class GRUCore(SingleStateCore):
    cell_type = nn.GRUCell


@DECODERS.register("mrnn")
class MultimodalRNNCore(Core):
    """Karpathy & Fei-Fei 2015's multimodal RNN, with the paper's ReLU.

    h_t = relu(W_hx x_t + W_hh h_{t-1} + [t = 1] b_v), b_v = W_hi · mean(features): the image is
    seen once. The state carries b_v until the first step consumes it (then zeros), so beam
    search reorders it like any other state.
    """

    def __init__(self, input_dim: int, hidden_dim: int, feature_dim: int):
        super().__init__()
        self.input = nn.Linear(input_dim, hidden_dim)
        self.recurrent = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.image = nn.Linear(feature_dim, hidden_dim)

    def init_state(self, mean_features: torch.Tensor) -> State:
        image_bias = self.image(mean_features)  # (B, H)
        return torch.zeros_like(image_bias), image_bias

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, image_bias = state
        h = torch.relu(self.input(x) + self.recurrent(h) + image_bias)  # (B, H)
        return h, (h, torch.zeros_like(image_bias))
