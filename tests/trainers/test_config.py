"""trainers.config: what a trainer config refuses when it is validated, before any model is built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainers.config import TrainerConfig, without_retired_keys


def test_results_is_not_a_key():
    # Run folders go under the orchestrator's ray.storage; a top-level `results` was never read.
    with pytest.raises(ValidationError, match="results"):
        TrainerConfig.model_validate({"results": "out"})


def test_a_config_saved_by_an_older_orch_still_loads():
    saved = {**TrainerConfig().model_dump(mode="json"), "results": "results"}  # what older checkpoints hold
    assert TrainerConfig.model_validate(without_retired_keys(saved)) == TrainerConfig()
