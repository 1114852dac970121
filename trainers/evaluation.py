"""Caption a split with every decode variant and score it: one place for val, test and `orch evaluate`.

Features are computed once per batch and shared by all decode variants, so a β sweep costs one
encoder pass, not one per β.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from trainers.config import DecodeConfig
from trainers.data.prepared import PreparedSplit
from trainers.data.synthetic import constant_caption_baseline, content_accuracy, position_accuracy
from trainers.data.vocab import Vocab
from trainers.decoding import decode
from trainers.metrics import score_captions


@dataclass(frozen=True)
class DecodeVariant:
    """One decode-time setting of a trained model, e.g. β = 0.5 with beam 3."""

    id: str
    config: DecodeConfig


@dataclass
class VariantResult:
    variant: DecodeVariant
    captions: list[str]  # one per image, in split order
    scores: dict[str, float] = field(default_factory=dict)


def caption_batches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], to_features: Callable,
                    decoder, vocab: Vocab, variants: list[DecodeVariant]) -> dict[str, list[str]]:
    """Captions per variant for (inputs, rows) batches; inputs become features via `to_features`."""
    captions: dict[str, list[str]] = {v.id: [] for v in variants}
    with torch.no_grad():
        for inputs, _rows in batches:
            features = to_features(inputs)  # (B, P, C)
            for variant in variants:
                hypotheses = decode(decoder, features, variant.config)
                captions[variant.id].extend(vocab.decode(h.tokens) for h in hypotheses)
    return captions


def score_split(split: PreparedSplit, captions: list[str], metrics: list[str]) -> dict[str, float]:
    """Metrics, mean caption length, distinct captions and (on synthetic data) content and position accuracy."""
    n = len(captions)
    references = {i: split.references[i] for i in range(n)}
    predictions = {i: captions[i] for i in range(n)}
    scores = score_captions(references, predictions, metrics=metrics)
    scores["mean_caption_length"] = sum(len(c.split()) for c in captions) / max(n, 1)
    scores["distinct_captions"] = float(len(set(captions)))
    truths = split.ground_truth[:n]
    if n and all(t is not None for t in truths):
        scores["content_accuracy"] = content_accuracy(captions, truths)
        scores["position_accuracy"] = position_accuracy(captions, truths)
    return scores


def constant_caption_scores(split: PreparedSplit, metrics: list[str]) -> dict[str, float]:
    """The scores of captioning every image with the split's most common reference: the floor a
    model that ignores the image reaches."""
    caption = constant_caption_baseline(split.references)
    return score_captions(dict(enumerate(split.references)), dict.fromkeys(range(len(split)), caption),
                          metrics=metrics)


def write_predictions(path: Path, split: PreparedSplit, captions: list[str]) -> Path:
    """COCO results format: [{image_id, caption}], image_id the COCO id or the Karpathy imgid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"image_id": split.image_ids[i], "caption": c} for i, c in enumerate(captions)]
    path.write_text(json.dumps(rows, indent=1))
    return path
