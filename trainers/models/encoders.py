"""CNN encoders: a torchvision classification trunk turned into a grid of image features.

An encoder takes float images in [0, 1] of shape (B, 3, H, W), normalises them as its weights
expect, runs the convolutional trunk, pools it to `encoded_size`² cells and returns the grid as
(B, P, C) with P = encoded_size². ResNet-101 at encoded_size 14 gives (B, 196, 2048) and VGG-16
(B, 196, 512), as in Show, Attend and Tell.

Each registered name maps to a function that cuts the torchvision model into its trunk's
"blocks", in order; `fine_tune: N` makes the last N of them trainable:

- resnet*: stem, layer1, layer2, layer3, layer4 (5 blocks)
- vgg*: the five conv stages; the last max-pool is dropped, so the grid is conv5's (Xu et al.)
- regnet_x_400mf: stem, block1..block4 (5 blocks)
- mobilenet_v3_large: the 17 modules of `features`
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torchvision.models as tv
from torch import nn

from trainers.config import ENCODER_FAMILIES, IMAGENET_WEIGHTS, ModelConfig, weights_problem
from trainers.errors import InputError
from trainers.models.registry import Registry

ENCODERS: Registry = Registry("encoder", "model.encoder")

_INIT_SEED = 0  # `weights: none` is the same random trunk on every build, so its features can be cached


@ENCODERS.register(*ENCODER_FAMILIES["resnet"])
def _resnet_blocks(model: tv.ResNet) -> list[nn.Module]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


@ENCODERS.register(*ENCODER_FAMILIES["vgg"])
def _vgg_blocks(model: tv.VGG) -> list[nn.Module]:
    stages, current = [], []
    for layer in model.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
    stages[-1] = stages[-1][:-1]  # keep conv5 at full resolution
    return stages


@ENCODERS.register(*ENCODER_FAMILIES["regnet"])
def _regnet_blocks(model: tv.RegNet) -> list[nn.Module]:
    return [model.stem, *model.trunk_output]


@ENCODERS.register(*ENCODER_FAMILIES["mobilenet"])
def _mobilenet_blocks(model: tv.MobileNetV3) -> list[nn.Module]:
    return list(model.features)


class Encoder(nn.Module):
    """Normalise, run the trunk (frozen blocks first, without autograd), pool to a grid.

    `frozen_statistics`: the trainable blocks' BatchNorm layers keep their running statistics (their
    scale and shift still train). A pretrained trunk is fine-tuned so: a captioning batch holds few
    distinct images (5 captions each), too few to estimate ImageNet-scale statistics from.
    """

    def __init__(self, blocks: list[nn.Module], trainable_blocks: int, encoded_size: int,
                 mean: list[float], std: list[float], frozen_statistics: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.first_trainable = len(blocks) - trainable_blocks
        self.frozen_statistics = frozen_statistics
        self.pool = nn.AdaptiveAvgPool2d(encoded_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.out_channels = _last_conv(self.blocks).out_channels
        for block in self.frozen_blocks():
            block.requires_grad_(False)

    def frozen_blocks(self) -> list[nn.Module]:
        return list(self.blocks[: self.first_trainable])

    def trainable_blocks(self) -> list[nn.Module]:
        return list(self.blocks[self.first_trainable:])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that get `train.encoder_lr` (empty when the encoder is frozen)."""
        return [p for block in self.trainable_blocks() for p in block.parameters()]

    def train(self, mode: bool = True) -> "Encoder":
        """Frozen blocks (and, with frozen_statistics, every BatchNorm) stay in eval mode, so their
        BatchNorm statistics never move."""
        super().train(mode)
        for block in self.frozen_blocks():
            block.eval()
        if self.frozen_statistics:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std  # (B, 3, H, W)
        with torch.no_grad():
            for block in self.frozen_blocks():
                x = block(x)
        for block in self.trainable_blocks():
            x = block(x)  # (B, C, H', W')
        x = self.pool(x)  # (B, C, S, S)
        return x.flatten(2).transpose(1, 2).contiguous()  # (B, P = S*S, C)


def build_encoder(cfg: ModelConfig) -> Encoder:
    split = ENCODERS.get(cfg.encoder)
    model = _torchvision_model(cfg)
    blocks = split(model)
    preprocessing = tv.get_model_weights(cfg.encoder).DEFAULT.transforms()
    # A trunk trained from scratch must learn its statistics; a pretrained one keeps them.
    return Encoder(blocks, _count_trainable_blocks(cfg, len(blocks)), cfg.encoded_size,
                   preprocessing.mean, preprocessing.std, frozen_statistics=cfg.weights != "none")


def encoder_fingerprint(cfg: ModelConfig) -> dict:
    """What determines a frozen encoder's features: the feature cache's key."""
    return {"encoder": cfg.encoder, "weights": weights_source(cfg), "encoded_size": cfg.encoded_size}


def weights_source(cfg: ModelConfig) -> str:
    """Where the trunk's weights come from: torchvision's enum (e.g. `ResNet101_Weights.IMAGENET1K_V2`),
    `none` (the fixed random init) or `sha256:<hex>` of a weights file, so replacing the file shows."""
    enum = imagenet_weights(cfg)
    if enum is not None:
        return str(enum)
    if cfg.weights == "none":
        return "none"
    return "sha256:" + hashlib.sha256(_weights_file(cfg).read_bytes()).hexdigest()


def _count_trainable_blocks(cfg: ModelConfig, n_blocks: int) -> int:
    if isinstance(cfg.fine_tune, bool):
        return n_blocks if cfg.fine_tune else 0
    if cfg.fine_tune > n_blocks:
        raise InputError(f"model.fine_tune: {cfg.fine_tune} blocks asked for, but encoder "
                         f"{cfg.encoder!r} has {n_blocks} (use true to fine-tune all of them)")
    return cfg.fine_tune


def imagenet_weights(cfg: ModelConfig) -> tv.WeightsEnum | None:
    """The torchvision weights `model.weights` names (`imagenet` is the DEFAULT); None for none or a file."""
    if cfg.weights == "imagenet":
        return tv.get_model_weights(cfg.encoder).DEFAULT
    if cfg.weights in IMAGENET_WEIGHTS[cfg.encoder]:
        return tv.get_model_weights(cfg.encoder)[cfg.weights]
    return None


def _torchvision_model(cfg: ModelConfig) -> nn.Module:
    weights = imagenet_weights(cfg)
    if weights is not None:
        try:
            return tv.get_model(cfg.encoder, weights=weights)
        except (OSError, RuntimeError) as error:
            raise InputError(
                f"model.weights: {cfg.weights} weights for {cfg.encoder!r} ({weights}) could not be downloaded from "
                f"{weights.url} ({error}). Download that file where there is internet and set "
                f"model.weights to its path, put it in torch's hub cache ({torch.hub.get_dir()}/checkpoints), "
                f"or use model.weights: none") from error
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        model = tv.get_model(cfg.encoder, weights=None, **_random_trunk_options(cfg))
    if cfg.weights != "none":
        _load_weights_file(model, cfg)
    return model


# Random trunks whose features blow up when frozen (largest |x| on a 224 px image, default init:
# resnet18 7.8, resnet34 237, resnet50 87, resnet101 3.2e5, past float16's 65504).
_UNBOUNDED_WHEN_FROZEN = frozenset({"resnet101", "resnet152"})


def _random_trunk_options(cfg: ModelConfig) -> dict:
    """A frozen random ResNet-101/152 starts each residual block as the identity (zero_init_residual).

    Frozen, batch norms run in eval mode on their initial statistics (mean 0, variance 1) and
    normalise nothing; through 33 or 50 residual blocks the default init then overflows float16
    (the feature cache) and drowns a decoder. Identity blocks keep it bounded, but they also shrink
    what each grid cell sees to the strided shortcuts, so shallower trunks, whose features stay in
    range, keep torchvision's init; so does any trunk that is trained.
    """
    frozen = cfg.weights == "none" and cfg.fine_tune is False
    return {"zero_init_residual": True} if frozen and cfg.encoder in _UNBOUNDED_WHEN_FROZEN else {}


def _weights_file(cfg: ModelConfig) -> Path:
    problem = weights_problem("model.weights", cfg.weights)
    if problem:
        raise InputError(problem)
    return Path(cfg.weights).expanduser()


def _load_weights_file(model: nn.Module, cfg: ModelConfig) -> None:
    """Load a torchvision state dict (.safetensors, or .pt/.pth read with weights_only) strictly."""
    path = _weights_file(cfg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix; say which and why
        raise InputError(f"model.weights: cannot read {path} as a state dict: {error}") from error
    if not isinstance(state, dict):
        raise InputError(f"model.weights: {path} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_lines = "; ".join(str(error).splitlines()[:3])
        raise InputError(f"model.weights: {path} is not a torchvision {cfg.encoder} state dict: "
                         f"{first_lines[:500]}") from error


def _last_conv(blocks: nn.ModuleList) -> nn.Conv2d:
    return [m for m in blocks.modules() if isinstance(m, nn.Conv2d)][-1]
