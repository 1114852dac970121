"""The trainers' entry point: one configuration trained to the end, whichever recipe it names.

It knows nothing of Ray or MLflow (docs/architecture.md, "Layers"): `orch train` calls it in its own
process and every Ray trial in its worker, handing it a callback for each epoch's result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainers.alignment.recipe import AlignmentRecipe
from trainers.config import TrainerConfig
from trainers.evaluation import DecodeVariant
from trainers.loop import CaptionRecipe, EpochCallback, EpochResult
from trainers.memory import reuse_freed_memory

RECIPES = {"captioner": CaptionRecipe, "alignment": AlignmentRecipe}  # by `trainer`


def run_training(config: TrainerConfig, run_dir: Path, *, variants: Optional[list[DecodeVariant]] = None,
                 on_epoch: Optional[EpochCallback] = None, resume_from: Optional[Path] = None,
                 progress: bool = False) -> EpochResult:
    """Train one configuration to the end; returns the final epoch's result (with test metrics)."""
    reuse_freed_memory()
    recipe = RECIPES[config.trainer](config, run_dir, variants, on_epoch, progress)
    recipe.setup(resume_from)
    return recipe.run()
