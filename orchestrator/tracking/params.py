"""Which config keys a run records as params: exactly those that produced its metrics, resolved.

A trial run's params are its training keys: no `decode.*` (its decode variants' runs hold them), no
section of the other trainer (`alignment.*` on a captioner, the captioner-only keys on an alignment
model), and `train.device` / `train.amp` as the trainer resolved them (`cuda:0`, `bf16`), logged
with its first epoch instead of `auto`. A variant run adds the decode keys its strategy reads.
"""

from __future__ import annotations

from typing import Mapping

RESOLVED_BY_THE_TRAINER = {"train.device": "device", "train.amp": "amp"}  # param -> the report field that resolves it
OTHER_TRAINERS_KEYS = {"captioner": ("alignment.",),
                       "alignment": ("train.scheduled_sampling.", "train.alpha_c", "train.compile", "model.fine_tune")}
DECODE_KEYS = {"beam": ("decode.beam_size", "decode.length_penalty"), "sample": ("decode.temperature",), "greedy": ()}
ALWAYS_DECODE_KEYS = ("decode.strategy", "decode.max_len", "decode.block_unk")


def training_params(params: Mapping[str, object]) -> dict[str, object]:
    """A training's params, the keys the trainer resolves left out (`resolved_params` logs them)."""
    foreign = ("decode.", *OTHER_TRAINERS_KEYS[str(params.get("trainer", "captioner"))])
    return {key: value for key, value in params.items()
            if not key.startswith(foreign) and key not in RESOLVED_BY_THE_TRAINER}


def resolved_params(report: Mapping[str, object]) -> dict[str, object]:
    """`train.device` and `train.amp` as an epoch's report says the trainer ran them; {} when it does not say."""
    return {key: report[field] for key, field in RESOLVED_BY_THE_TRAINER.items() if report.get(field)}


def decode_params(decode: Mapping[str, object]) -> dict[str, object]:
    """A decode section's dotted keys that its strategy reads (no temperature on beam search, no β on greedy)."""
    strategy = str(decode.get("decode.strategy", "beam"))
    return {key: value for key, value in decode.items() if key in ALWAYS_DECODE_KEYS or key in DECODE_KEYS[strategy]}
