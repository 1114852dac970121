"""trainers.config: what a trainer config refuses when it is validated, before any model is built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainers.config import (DETECTOR_NAMES, ENCODER_NAMES, AlignmentConfig, ModelConfig, TrainerConfig,
                             reported_metrics, weights_problem, without_retired_keys)


def test_results_is_not_a_key():
    # Run folders go under the orchestrator's ray.storage; a top-level `results` was never read.
    with pytest.raises(ValidationError, match="results"):
        TrainerConfig.model_validate({"results": "out"})


def test_a_config_saved_by_an_older_orch_still_loads():
    saved = {**TrainerConfig().model_dump(mode="json"), "results": "results"}  # what older checkpoints hold
    assert TrainerConfig.model_validate(without_retired_keys(saved)) == TrainerConfig()


def test_an_unknown_encoder_is_refused_with_the_nearest_name():
    with pytest.raises(ValidationError, match=r"unknown encoder 'resnet1011'; did you mean resnet101"):
        ModelConfig(encoder="resnet1011")
    assert ModelConfig(encoder="vgg16_bn").encoder == "vgg16_bn"


def test_an_unknown_detector_is_refused_with_the_nearest_name():
    with pytest.raises(ValidationError, match=r"unknown detector 'fasterrcnn_resnet51_fpn'; did you mean "
                                              r"fasterrcnn_resnet50_fpn"):
        AlignmentConfig(detector="fasterrcnn_resnet51_fpn")


def test_the_names_the_config_accepts_are_the_registered_ones():
    from trainers.alignment.regions import DETECTORS
    from trainers.models import ENCODERS

    assert sorted(ENCODER_NAMES) == ENCODERS.names()
    assert sorted(DETECTOR_NAMES) == DETECTORS.names()


def test_weights_are_a_name_or_an_existing_file(tmp_path):
    weights = tmp_path / "r18.pt"
    weights.write_bytes(b"")
    assert weights_problem("model.weights", "imagenet") is None
    assert weights_problem("model.weights", str(weights)) is None
    assert weights_problem("model.weights", str(tmp_path / "r19.pt")) == (
        f"model.weights: '{tmp_path / 'r19.pt'}' is not imagenet, none, or an existing file "
        f"(looked for {tmp_path / 'r19.pt'})")
    assert "did you mean 'none'?" in weights_problem("model.weights", "None")
    assert weights_problem("alignment.detector_weights", "cocoo").startswith(
        "alignment.detector_weights: 'cocoo' is not coco or an existing file — did you mean 'coco'?")


def test_the_metrics_that_rank_trials_are_those_computed():
    assert reported_metrics("captioner", ["Bleu", "CIDEr"]) == ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr",
                                                               "neg_loss")
    assert reported_metrics("alignment", []) == ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10",
                                                 "rsum", "neg_loss")
