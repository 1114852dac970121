"""Region sources: grid cells of the encoder, or a torchvision detector's boxes (weights from a file)."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tv

from trainers.alignment.regions import build_detector, build_regions, grid_boxes, split_fragments
from trainers.config import AlignmentConfig, TrainerConfig
from trainers.errors import InputError

SMALL_DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _config(**alignment) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "trainer": "alignment", "data": {"image_size": 64},
        "model": {"encoder": "resnet18", "weights": "none", "encoded_size": 2, "decoder": "mrnn", "attention": "none"},
        "alignment": alignment})


def test_grid_boxes_are_the_whole_image_then_the_cells_row_by_row():
    assert grid_boxes(2).tolist() == [[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5],
                                      [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]


def test_grid_fragments_are_the_whole_image_and_its_cells():
    regions = build_regions(_config(regions="grid")).eval()
    fragments = regions(torch.rand(3, 3, 64, 64))  # (B, 1 + 4, 4 + C)
    boxes, features = split_fragments(fragments)
    assert fragments.shape == (3, 5, 4 + regions.feature_dim)
    assert torch.equal(boxes[0], grid_boxes(2))
    assert torch.allclose(features[:, 0], features[:, 1:].mean(dim=1), atol=1e-5)


def test_detector_regions_come_from_a_weights_file(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "detector.pt"
    torch.save(tv.get_model(SMALL_DETECTOR, weights=None, weights_backbone=None).state_dict(), weights)
    config = _config(regions="detector", detector=SMALL_DETECTOR, detector_weights=str(weights), num_regions=3)
    regions = build_regions(config)
    fragments = regions(torch.rand(2, 3, 64, 64))
    boxes, features = split_fragments(fragments)
    assert fragments.shape == (2, 4, 4 + regions.feature_dim)
    assert boxes[:, 0].tolist() == [[0, 0, 1, 1]] * 2  # the whole image first
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[..., 2:] >= boxes[..., :2]).all()


def test_a_bad_detector_or_weights_file_names_the_key(tmp_path):
    unchecked = AlignmentConfig.model_construct(detector="fasterrcnn_resnet51")  # the config itself refuses it
    with pytest.raises(InputError, match="alignment.detector"):
        build_detector(unchecked)
    with pytest.raises(InputError, match="alignment.detector_weights"):
        build_detector(AlignmentConfig(detector=SMALL_DETECTOR, detector_weights=str(tmp_path / "missing.pt")))
    wrong = tmp_path / "wrong.pt"
    torch.save({"layer.weight": torch.zeros(2)}, wrong)
    with pytest.raises(InputError, match="alignment.detector_weights: .*wrong.pt"):
        build_detector(AlignmentConfig(detector=SMALL_DETECTOR, detector_weights=str(wrong)))
