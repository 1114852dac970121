"""The captioning loss: cross-entropy over real tokens plus, for learned attention, the doubly
stochastic attention regularisation (Xu et al. 2015, with the tutorial's mean over pixels).

Two entry points over one formula: `caption_loss` for the eager paths (`Decoder.forward`, rows
shrinking as captions end) and `fixed_shape_loss` for the compiled path (`Decoder.teacher_forced`,
every row at every step; trainers.compiled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.data.vocab import PAD_ID
from trainers.models.attention import attention_regularisation



def caption_loss(decoder, features, captions, lengths, *, ss_rate: float, ss_per: str,
                 alpha_c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, cross-entropy) of captions (B, T) given features (B, P, C); lengths (B,) on the host."""
    logits, alphas = decoder(features, captions, lengths, ss_rate=ss_rate, ss_per=ss_per)  # (B, T-1, V), (B, T-1, P)
    return loss_of(decoder, logits, alphas, captions[:, 1:], alpha_c)


def fixed_shape_loss(decoder, features, captions, ss_rate: torch.Tensor | None, *, ss_per: str,
                     alpha_c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`caption_loss` through `Decoder.teacher_forced`: rows that pad a batch (all pads) add nothing."""
    logits, alphas = decoder.teacher_forced(features, captions, ss_rate, ss_per)  # (B, T-1, V), (B, T-1, P)
    return loss_of(decoder, logits, alphas, captions[:, 1:], alpha_c)


def loss_of(decoder, logits: torch.Tensor, alphas: torch.Tensor, targets: torch.Tensor,
            alpha_c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T-1, V), alphas (B, T-1, P), targets (B, T-1) -> (loss, cross-entropy)."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=PAD_ID)
    loss = ce
    if alpha_c > 0 and decoder.learns_attention:
        loss = loss + alpha_c * attention_regularisation(alphas, targets != PAD_ID)
    return loss, ce
