"""Every registered encoder x decoder x attention trains: a forward and backward pass on a tiny input.

The combinations come from the registries themselves (as timm's tests iterate list_models()), so a
newly registered component is tested without editing this file.
"""

import pytest
import torch

from trainers.config import ModelConfig
from trainers.models import ATTENTIONS, DECODERS, ENCODERS, Captioner, Decoder, build_encoder

VOCAB = 11
# `none` is no module: the decoder then learns no attention and the image only starts its state.
ATTENTION_CHOICES = ("none", *ATTENTIONS.names())
COMBINATIONS = [(decoder, attention) for decoder in DECODERS.names() for attention in ATTENTION_CHOICES
                if decoder != "mrnn" or attention == "none"]


def tiny_config(encoder="resnet18", decoder="lstm", attention="soft") -> ModelConfig:
    return ModelConfig(encoder=encoder, weights="none", fine_tune=True, encoded_size=2, decoder=decoder,
                       attention=attention, embed_dim=16, hidden_dim=16, attention_dim=16, dropout=0.1)


@pytest.fixture(scope="module")
def encoders():
    """Each encoder is built once for this module and freed after it."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = build_encoder(tiny_config(encoder=name))
        return built[name]

    return get


def test_the_coursework_backbones_are_registered():
    expected = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "regnet_x_400mf",
                "mobilenet_v3_large"} | {f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn")}
    assert expected <= set(ENCODERS.names())
    assert set(DECODERS.names()) == {"rnn", "lstm", "gru", "mrnn"}
    assert set(ATTENTIONS.names()) == {"soft", "dot", "mean"}


@pytest.mark.parametrize("decoder,attention", COMBINATIONS)
@pytest.mark.parametrize("encoder_name", ENCODERS.names())
def test_forward_and_backward_reach_every_part(encoders, encoder_name, decoder, attention):
    torch.manual_seed(0)
    encoder = encoders(encoder_name)
    encoder.zero_grad(set_to_none=True)
    model = Captioner(encoder, Decoder(tiny_config(encoder_name, decoder, attention), encoder.out_channels, VOCAB))
    model.train()
    images = torch.rand(2, 3, 32, 32)
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    lengths = torch.tensor([5, 3])

    logits, alphas = model(images, captions, lengths, ss_rate=0.5)
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), captions[:, 1:], ignore_index=0)
    loss.backward()

    assert logits.shape == (2, 4, VOCAB)
    assert alphas.shape == (2, 4, 4)  # encoded_size 2 -> 4 cells
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.decoder.parameters())
    first_conv = next(m for m in encoder.blocks[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
