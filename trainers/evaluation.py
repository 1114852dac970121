"""Caption a split with every decode variant and score it: one place for val, test and `orch evaluate`.

Features are computed once per batch and shared by all decode variants, and variants that differ
only in β share one search (trainers.decoding), so a β sweep costs one encoder pass and one search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from trainers.config import DecodeConfig
from trainers.data.prepared import PreparedSplit
from trainers.data.synthetic import constant_caption_baseline, content_accuracy, position_accuracy
from trainers.data.vocab import Vocab
from trainers.decoding import decode_for_betas
from trainers.metrics import score_captions


@dataclass(frozen=True)
class DecodeVariant:
    """One decode-time setting of a trained model, e.g. β = 0.5 with beam 3."""

    id: str
    config: DecodeConfig


@dataclass
class Captions:
    """One decode variant's captions of a split, in split order."""

    texts: list[str] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)  # stopped at decode.max_len without <end>


def searches_of(variants: list[DecodeVariant]) -> list[tuple[DecodeConfig, list[DecodeVariant]]]:
    """Variants grouped by search setting (every decode key but β), in first-seen order: each group
    is one search, and each of its variants only picks its β's caption from that search's candidates."""
    groups: dict[str, tuple[DecodeConfig, list[DecodeVariant]]] = {}
    for variant in variants:
        search = variant.config.model_copy(update={"length_penalty": 0.0})
        groups.setdefault(search.model_dump_json(), (search, []))[1].append(variant)
    return list(groups.values())


def caption_batches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], to_features: Callable,
                    decoder, vocab: Vocab, variants: list[DecodeVariant], seed: int = 0,
                    rows: int | None = None) -> dict[str, Captions]:
    """Captions per variant for (inputs, rows) batches; inputs become features via `to_features`.

    Sampling draws from its own generator, seeded by `seed`, never from the training's random stream.
    `rows`: every batch is padded with blank images to this many, whose captions are dropped, so a
    compiled decoding step sees one shape (trainers.compiled).
    """
    captions = {v.id: Captions() for v in variants}
    searches = searches_of(variants)
    generators: list[torch.Generator] = []
    with torch.no_grad():
        for inputs, _rows in batches:
            features = to_features(inputs)  # (B, P, C)
            images = features.shape[0]
            if rows is not None and images < rows:
                features = F.pad(features, (0, 0, 0, 0, 0, rows - images))  # (rows, P, C)
            if not generators:
                generators = [torch.Generator(features.device).manual_seed(seed) for _ in searches]
            for (search, members), generator in zip(searches, generators):
                found = decode_for_betas(decoder, features, search, [v.config.length_penalty for v in members],
                                         generator)
                for variant, hypotheses in zip(members, (per_image[:images] for per_image in found)):
                    captions[variant.id].texts.extend(vocab.decode(h.tokens) for h in hypotheses)
                    captions[variant.id].truncated.extend(not h.finished for h in hypotheses)
    return captions


def score_split(split: PreparedSplit, captions: Captions, metrics: list[str]) -> dict[str, float]:
    """Metrics, mean caption length, distinct captions, the fraction of captions cut at max_len and
    (on synthetic data) content and position accuracy."""
    texts = captions.texts
    n = len(texts)
    references = {i: split.references[i] for i in range(n)}
    predictions = {i: texts[i] for i in range(n)}
    scores = score_captions(references, predictions, metrics=metrics)
    scores["mean_caption_length"] = sum(len(c.split()) for c in texts) / max(n, 1)
    scores["distinct_captions"] = float(len(set(texts)))
    scores["truncated_fraction"] = sum(captions.truncated) / max(n, 1)
    truths = split.ground_truth[:n]
    if n and all(t is not None for t in truths):
        scores["content_accuracy"] = content_accuracy(texts, truths)
        scores["position_accuracy"] = position_accuracy(texts, truths)
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
