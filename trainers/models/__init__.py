"""Captioning models: a CNN encoder and a decoder shell, each picked by name from a registry.

    model = build_captioner(cfg.model, vocab_size)            # images -> logits
    model = Captioner.decoder_only(2048, cfg.model, vocab)    # cached features -> logits
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.config import ModelConfig
from trainers.models.attention import ATTENTIONS, attention_regularisation
from trainers.models.cores import DECODERS
from trainers.models.decoder import Decoder, Memory
from trainers.models.encoders import ENCODERS, Encoder, build_encoder, encoder_fingerprint

__all__ = ["ATTENTIONS", "DECODERS", "ENCODERS", "Captioner", "Decoder", "Encoder", "Memory",
           "attention_regularisation", "build_captioner", "build_encoder", "encoder_fingerprint"]


class Captioner(nn.Module):
    """An encoder (absent when training on cached features) and a decoder."""

    def __init__(self, encoder: Encoder | None, decoder: Decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @classmethod
    def decoder_only(cls, feature_dim: int, cfg: ModelConfig, vocab_size: int) -> "Captioner":
        return cls(None, Decoder(cfg, feature_dim, vocab_size))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> grid features (B, P, C)."""
        if self.encoder is None:
            raise RuntimeError("this captioner was built on cached features and has no encoder")
        return self.encoder(images)

    def forward(self, images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                **scheduled_sampling) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T-1, V) and alphas (B, T-1, P); see `Decoder.forward`."""
        return self.decoder(self.encode(images), captions, lengths, **scheduled_sampling)

    def param_groups(self, lr: float, encoder_lr: float) -> list[dict]:
        """Optimizer groups: the decoder at `lr`, the encoder's trainable blocks (if any) at `encoder_lr`."""
        groups = [{"params": list(self.decoder.parameters()), "lr": lr}]
        encoder_params = self.encoder.trainable_parameters() if self.encoder is not None else []
        if encoder_params:
            groups.append({"params": encoder_params, "lr": encoder_lr})
        return groups


def build_captioner(cfg: ModelConfig, vocab_size: int) -> Captioner:
    encoder = build_encoder(cfg)
    return Captioner(encoder, Decoder(cfg, encoder.out_channels, vocab_size))
