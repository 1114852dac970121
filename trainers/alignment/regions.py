"""Image fragments: where the regions are and what the CNN sees in each (the input of eq. 1).

A region source maps float images (B, 3, H, W) in [0, 1] to fragments (B, M, 4 + C): for each of
M fragments its box (x0, y0, x1, y1) as fractions of the image side, then its CNN feature. The
first fragment is always the whole image. Boxes and features travel together so that one feature
cache (trainers.features) holds both. The CNN is frozen: sources are never trained.

- grid (`alignment.regions: grid`): the cells of the encoder's model.encoded_size² grid, each with
  its grid vector; the whole image's feature is their mean.
- detector (`alignment.regions: detector`): the top `alignment.num_regions` boxes of a torchvision
  detector, as the paper takes an R-CNN's top 19. Each box is cropped, resized to data.image_size
  and encoded, its feature the mean of its grid: CNN(I_b). When the detector finds fewer boxes
  the whole image fills the empty places, which changes no max over fragments.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision.models as tv
from torch import nn
from torchvision.ops import roi_align

from trainers.config import AlignmentConfig, TrainerConfig
from trainers.errors import InputError, reading
from trainers.models import Encoder, build_encoder
from trainers.models.registry import Registry

BOX = 4  # fragments (B, M, BOX + C): the box first, then the feature

# Detector name -> the keyword that sets its score threshold.
DETECTORS: Registry = Registry("detector", "alignment.detector")
for _name in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
              "fasterrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
    DETECTORS.register(_name)("box_score_thresh")
for _name in ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
              "ssdlite320_mobilenet_v3_large"):
    DETECTORS.register(_name)("score_thresh")


def split_fragments(fragments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fragments (..., M, 4 + C) -> boxes (..., M, 4) and features (..., M, C)."""
    return fragments[..., :BOX], fragments[..., BOX:]


def grid_boxes(size: int) -> torch.Tensor:
    """(1 + size², 4): the whole image, then the cells row by row (the order of an encoder's grid)."""
    edges = [i / size for i in range(size + 1)]
    cells = [[edges[col], edges[row], edges[col + 1], edges[row + 1]] for row in range(size) for col in range(size)]
    return torch.tensor([[0.0, 0.0, 1.0, 1.0], *cells])  # (1 + S*S, 4)


class GridRegions(nn.Module):
    def __init__(self, encoder: Encoder, encoded_size: int):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = encoder.out_channels
        self.register_buffer("boxes", grid_boxes(encoded_size), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.encoder(images)  # (B, P, C)
        features = torch.cat([grid.mean(dim=1, keepdim=True), grid], dim=1)  # (B, 1 + P, C)
        boxes = self.boxes.to(features.dtype).expand(grid.shape[0], -1, -1)  # (B, 1 + P, 4)
        return torch.cat([boxes, features], dim=2)  # (B, 1 + P, 4 + C)


class DetectorRegions(nn.Module):
    def __init__(self, detector: nn.Module, encoder: Encoder, num_regions: int, crop_size: int):
        super().__init__()
        self.detector = detector.eval()
        self.encoder = encoder
        self.num_regions = num_regions
        self.crop_size = crop_size
        self.feature_dim = encoder.out_channels

    def train(self, mode: bool = True) -> "DetectorRegions":
        """The detector stays in eval mode: in train mode it would ask for targets."""
        super().train(mode)
        self.detector.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        whole = images.new_tensor([0.0, 0.0, width, height])  # (4,) in pixels
        detections = self.detector(list(images))
        boxes = [self._whole_then_top(found["boxes"], whole) for found in detections]  # B x (1 + K, 4)
        crops = roi_align(images, boxes, output_size=self.crop_size, spatial_scale=1.0, sampling_ratio=2,
                          aligned=True)  # (B * (1 + K), 3, crop, crop)
        features = self.encoder(crops).mean(dim=1).view(batch, 1 + self.num_regions, -1)  # (B, 1 + K, C)
        scale = images.new_tensor([width, height, width, height])
        return torch.cat([torch.stack(boxes) / scale, features], dim=2)  # (B, 1 + K, 4 + C)

    def _whole_then_top(self, found: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """The whole image, then the detector's first K boxes (it sorts them by score), padded with the whole image."""
        top = found[: self.num_regions]  # (k <= K, 4)
        padding = whole.expand(self.num_regions - top.shape[0], 4)
        return torch.cat([whole[None], top, padding])  # (1 + K, 4)


def build_regions(cfg: TrainerConfig, pretrained: bool = True) -> GridRegions | DetectorRegions:
    """The config's region source, with its weights; `pretrained=False` builds it untrained, for a
    saved state dict (an export's) to be loaded into."""
    encoder = build_encoder(cfg.model if pretrained else cfg.model.model_copy(update={"weights": "none"}))
    if cfg.alignment.regions == "grid":
        return GridRegions(encoder, cfg.model.encoded_size)
    detector = build_detector(cfg.alignment) if pretrained else _untrained_detector(cfg.alignment)
    return DetectorRegions(detector, encoder, cfg.alignment.num_regions, cfg.data.image_size)


def build_detector(cfg: AlignmentConfig) -> nn.Module:
    """A torchvision detector with its COCO weights (downloaded once) or a state dict file."""
    DETECTORS.get(cfg.detector)  # an unknown name is an InputError naming alignment.detector
    if cfg.detector_weights == "coco":
        weights = tv.get_model_weights(cfg.detector).DEFAULT
        try:
            return tv.get_model(cfg.detector, weights=weights, **_keep_every_box(cfg)).eval()
        except (OSError, RuntimeError) as error:
            raise InputError(
                f"alignment.detector_weights: coco weights for {cfg.detector!r} could not be downloaded from "
                f"{weights.url} ({error}). Download that file where there is internet and set "
                f"alignment.detector_weights to its path, or put it in {torch.hub.get_dir()}/checkpoints") from error
    path = Path(cfg.detector_weights).expanduser()
    detector = _untrained_detector(cfg)
    try:
        detector.load_state_dict(_read_state_dict(path, cfg.detector))
    except RuntimeError as error:
        first_lines = "; ".join(str(error).splitlines()[:3])
        raise InputError(f"alignment.detector_weights: {path} is not a torchvision {cfg.detector} state dict: "
                         f"{first_lines[:500]}") from error
    return detector.eval()


def _keep_every_box(cfg: AlignmentConfig) -> dict:
    """The detector's score threshold at 0: its top boxes are kept whatever their score."""
    return {DETECTORS.get(cfg.detector): 0.0}


def _untrained_detector(cfg: AlignmentConfig) -> nn.Module:
    return tv.get_model(cfg.detector, weights=None, weights_backbone=None, **_keep_every_box(cfg)).eval()


def _read_state_dict(path: Path, detector: str) -> dict:
    if not path.is_file():
        raise InputError(f"alignment.detector_weights: {str(path)!r} is not coco or an existing file")
    try:
        with reading(path, "give a state dict: .safetensors, or a .pt/.pth of torch.save(model.state_dict())"):
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except InputError as error:  # one line naming the key and the file; never weights_only=False advice
        raise InputError(f"alignment.detector_weights: {error}") from None
    if not isinstance(state, dict):
        raise InputError(f"alignment.detector_weights: {path} holds a {type(state).__name__}, not a "
                         f"{detector} state dict")
    return state
