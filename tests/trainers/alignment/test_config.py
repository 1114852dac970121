"""`trainer: alignment` in the config: the paper's defaults, ranking by retrieval, a frozen CNN."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainers.config import TrainerConfig


def test_alignment_trains_with_the_papers_settings_unless_told_otherwise():
    config = TrainerConfig.model_validate({"trainer": "alignment"})
    t = config.train
    assert (t.optimizer, t.momentum, t.batch_size, t.grad_clip, t.grad_clip_mode) == ("sgd", 0.9, 100, 5.0, "value")
    assert config.eval.select_by == "rsum"
    mine = TrainerConfig.model_validate({"trainer": "alignment", "train": {"optimizer": "adam", "batch_size": 32},
                                         "eval": {"select_by": "t2i_R5"}})
    assert (mine.train.optimizer, mine.train.batch_size, mine.train.momentum) == ("adam", 32, 0.9)
    assert mine.eval.select_by == "t2i_R5"
    assert TrainerConfig().train.optimizer == "adam"  # captioners keep theirs


@pytest.mark.parametrize("document, said", [
    ({"trainer": "alignment", "eval": {"select_by": "CIDEr"}}, "eval.select_by: trainer alignment is ranked by retrieval"),
    ({"eval": {"select_by": "rsum"}}, "ranks alignment models"),
    ({"trainer": "alignment", "model": {"fine_tune": True}}, "model.fine_tune"),
    ({"trainer": "alignment", "alignment": {"regions": "boxes"}}, "regions"),
])
def test_mismatched_settings_are_refused_by_name(document, said):
    with pytest.raises(ValidationError, match=said):
        TrainerConfig.model_validate(document)
