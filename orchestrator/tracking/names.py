"""The names orch gives things in MLflow, in one place: the tags that find runs again, the metric
keys the UI groups, the artifact and logged-model names (docs/architecture.md, "The MLflow layout")."""

from __future__ import annotations

import re

TAG_INVOCATION = "orch.invocation"
TAG_TRIAL = "orch.trial"
TAG_VARIANT = "orch.variant"
TAG_KIND = "orch.kind"  # parent | trial | variant
TAG_DRIVER = "orch.driver"  # host:pid of the writing process, to find orphans
TAG_REASON = "orch.failure_reason"
TAG_DETERMINISTIC = "orch.deterministic"  # "yes: ..." or "no: ...": whether the same config and seed repeat it
MAX_PARAM_LENGTH = 6000
BEST_CHECKPOINT = "best_checkpoint"  # a trial run's artifact folder, for trials without an MLflow model
CAPTIONER_MODEL = "captioner"  # the logged model of a captioner trial; it holds the best checkpoint
TRIAL_METRIC = re.compile(r"^((train|val|test)_\w+|lr|ss_rate|epoch|epoch_time_s|best_epoch)$")
BLEU = re.compile(r"^Bleu_\d$")


def mlflow_metric(name: str) -> str:
    """The MLflow key of a metric a trainer reports: validation scores go in the sections the UI
    shows first.

    The MLflow UI groups a run's charts by the key's prefix before its last `/`, shows named groups,
    sorted, before the unnamed one, and sorts charts inside a group. So `val_CIDEr` is logged
    as `val/CIDEr`, the first chart of the first group; the BLEU n-grams as `val/bleu/Bleu_4`, the
    next group (in `val/` they would sort before CIDEr); every other metric keeps its name."""
    if not name.startswith("val_"):
        return name
    score = name[len("val_"):]
    return f"val/bleu/{score}" if BLEU.match(score) else f"val/{score}"


def orch_metric(key: str) -> str:
    """The metric name orch uses (`val_CIDEr`) for an MLflow key (`val/CIDEr`): `mlflow_metric` undone."""
    if not key.startswith("val/"):
        return key
    return "val_" + key.rsplit("/", 1)[-1]

