"""Typed configuration of one training run, validated once at the edge.

These are the sections of the experiment YAML (docs/config.md) that a trainer reads (`data`, `model`,
`train`, `decode`, `eval`). The orchestrator composes them with its own sections (ablation,
search, resources, tracking, ray); trainers never see those.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers.errors import unknown_name


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticData(Strict):
    """When `data.prepared` is absent, generate (`orch synth`) and prepare it with these options."""

    n: int = Field(600, ge=10)
    size: int = Field(64, ge=16)
    seed: int = 0
    min_word_freq: int = Field(1, ge=1)


class DataConfig(Strict):
    prepared: str = "data/synth/prepared"
    synthetic: SyntheticData | None = None
    image_size: int = Field(256, ge=16)
    num_workers: int = Field(4, ge=0)
    feature_cache: bool = True
    cache_dir: str | None = None  # default: <prepared>/features


# What `model.encoder` may name, by family: trainers/models/encoders.py registers exactly these. They live
# here, free of torch, so that a config is checked when it is loaded (`orch run --dry-run` imports no torch).
ENCODER_FAMILIES = {
    "resnet": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"),
    "vgg": ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"),
    "regnet": ("regnet_x_400mf",),
    "mobilenet": ("mobilenet_v3_large",),
}
ENCODER_NAMES = tuple(name for names in ENCODER_FAMILIES.values() for name in names)
# What `alignment.detector` may name: the torchvision detectors trainers/alignment/regions.py registers.
DETECTOR_NAMES = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                  "fasterrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
                  "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
                  "ssdlite320_mobilenet_v3_large")
# torchvision's ImageNet weights of each encoder, by enum name (`model.weights: IMAGENET1K_V1`);
# `imagenet` is torchvision's DEFAULT weights. tests/trainers/test_config.py checks this
# table against torchvision.
_V1, _V2 = ("IMAGENET1K_V1",), ("IMAGENET1K_V1", "IMAGENET1K_V2")
IMAGENET_WEIGHTS = {**dict.fromkeys(ENCODER_NAMES, _V1),
                    **dict.fromkeys(("resnet50", "resnet101", "resnet152", "regnet_x_400mf", "mobilenet_v3_large"), _V2),
                    "vgg16": ("IMAGENET1K_FEATURES", "IMAGENET1K_V1")}
# The weights keys: the names each accepts; any other value is a path to a state dict file.
WEIGHTS_NAMES = {"model.weights": ("imagenet", "none"), "alignment.detector_weights": ("coco",)}
ENUM_WEIGHTS_NAMES = {"model.weights": tuple(sorted({n for names in IMAGENET_WEIGHTS.values() for n in names})),
                      "alignment.detector_weights": ()}


def is_weights_name(key: str, value: str) -> bool:
    """Whether `value` names weights (imagenet, none, IMAGENET1K_V1, ...) rather than a file."""
    return value in WEIGHTS_NAMES[key] or value in ENUM_WEIGHTS_NAMES[key]


def weights_problem(key: str, value: str) -> str | None:
    """Why `value` cannot be the weights `key` names (one of its names, or an existing state dict file;
    a relative path is relative to the working folder), or None when it can."""
    names = WEIGHTS_NAMES[key]
    path = Path(value).expanduser()
    if is_weights_name(key, value) or path.is_file():
        return None
    close = difflib.get_close_matches(value, names + ENUM_WEIGHTS_NAMES[key], n=1, cutoff=0.6)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    listed = f"{', '.join(names)}," if len(names) > 1 else names[0]
    return f"{key}: {value!r} is not {listed} or an existing file{hint} (looked for {path.absolute()})"


class ModelConfig(Strict):
    encoder: str = "resnet101"
    # imagenet (torchvision's DEFAULT) | an enum name (IMAGENET1K_V1, ...) | none | PATH to a state dict
    weights: str = "imagenet"
    fine_tune: Union[bool, int] = False  # false, true (all), or N = the last N blocks
    encoded_size: int = Field(14, ge=1)
    decoder: Literal["rnn", "lstm", "gru", "mrnn"] = "lstm"
    # none: the image only starts the state; mean: the mean encoding is fed at every step too
    attention: Literal["none", "mean", "soft", "dot"] = "soft"
    embed_dim: int = Field(512, ge=1)
    hidden_dim: int = Field(512, ge=1)
    attention_dim: int = Field(512, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)

    @field_validator("encoder")
    @classmethod
    def _registered_encoder(cls, v: str) -> str:
        if v not in ENCODER_NAMES:
            raise ValueError(unknown_name("encoder", v, ENCODER_NAMES))
        return v

    @field_validator("fine_tune")
    @classmethod
    def _blocks_non_negative(cls, v):
        if not isinstance(v, bool) and v < 0:
            raise ValueError("fine_tune must be false, true or a number of blocks >= 0")
        return v

    @model_validator(mode="after")
    def _weights_enum_exists(self):
        if self.weights in ENUM_WEIGHTS_NAMES["model.weights"] and self.weights not in IMAGENET_WEIGHTS[self.encoder]:
            raise ValueError(f"weights: encoder {self.encoder!r} has no torchvision weights {self.weights!r} "
                             f"(it has {', '.join(IMAGENET_WEIGHTS[self.encoder])}, or use imagenet)")
        return self

    @model_validator(mode="after")
    def _mrnn_has_no_attention(self):
        if self.decoder == "mrnn" and self.attention != "none":
            raise ValueError("decoder 'mrnn' sees the image once and takes no attention: set model.attention: none")
        return self


class ScheduledSampling(Strict):
    """Probability of feeding the model's own token instead of the ground truth (Bengio et al. 2015)."""

    schedule: Literal["constant", "linear", "exponential", "inverse_sigmoid"] = "linear"
    max_rate: float = Field(0.0, ge=0.0, le=1.0)
    start_epoch: int = Field(1, ge=0)  # the epoch (from 1, as printed) the ramp starts at
    ramp_epochs: int = Field(10, ge=1)
    per: Literal["token", "sequence"] = "token"


class LRSchedule(Strict):
    kind: Literal["none", "plateau", "step"] = "plateau"
    factor: float = Field(0.8, gt=0.0, le=1.0)
    patience: int = Field(8, ge=0)  # plateau: epochs without improvement of eval.select_by
    step_size: int = Field(10, ge=1)  # step: decay every step_size epochs


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(80, ge=1)
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr: float = Field(4.0e-4, gt=0.0)
    encoder_lr: float = Field(1.0e-4, gt=0.0)
    grad_clip: float | None = Field(5.0, gt=0.0)
    grad_clip_mode: Literal["value", "norm"] = "value"
    alpha_c: float = Field(1.0, ge=0.0)
    seed: int = 0
    scheduled_sampling: ScheduledSampling = ScheduledSampling()
    lr_schedule: LRSchedule = LRSchedule()
    early_stopping: int | None = Field(20, ge=1)  # epochs without improvement of eval.select_by
    divergence_factor: float = Field(20.0, gt=1.0)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else none
    compile: bool = False  # torch.compile the decoder step (its first steps then take a while to compile)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: reproducible arithmetic on a CPU (free there), a GPU's faster, varying kernels; true: on a GPU too
    deterministic: Union[bool, Literal["auto"]] = "auto"
    max_batches_per_epoch: int | None = Field(None, ge=1)  # smoke runs


# The id of a training's own decode section when no decode variant equals it (trainers.loop decodes it
# besides the variants; the plan names it so).
REFERENCE_DECODE_ID = "ref"
# The id of the one decode variant of a training without a grid (`orch train`, a recipe given no
# variants): its own decode section. A plan numbers its variants d01, d02, ... the same way.
OWN_DECODE_ID = "d01"


class DecodeConfig(Strict):
    """How captions are generated at evaluation. `decode.*` keys never retrain a model."""

    strategy: Literal["beam", "greedy", "sample"] = "beam"
    beam_size: int = Field(3, ge=1)
    length_penalty: float = Field(0.0, ge=0.0)  # β: score = log P(y) / ((5 + |y|) / 6) ** β
    max_len: int = Field(50, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    block_unk: bool = True


METRIC_NAMES = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")
SELECTABLE = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "neg_loss")
# What ranks alignment models (trainer: alignment); rsum is the sum of the six recalls.
RETRIEVAL_SELECTABLE = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "rsum")


def selection_metric(select_by: str, mode: str = "max") -> tuple[str, str]:
    """The reported metric that ranks trainings and its direction (`max` or `min`): `val_<select_by>`,
    higher first; `neg_loss` ranks by `val_loss`, lowest first. `mode`: a search's, for search.metric.
    The one place this rule lives: checkpoint selection, the launch, the tables, the report, export."""
    if select_by == "neg_loss":
        return "val_loss", "min" if mode == "max" else "max"
    return f"val_{select_by}", mode


def reported_metrics(trainer: str, metrics: Sequence[str]) -> tuple[str, ...]:
    """The names that rank trials (`eval.select_by`, `search.metric`): the val metrics a trainer reports
    as `val_<name>` with these `eval.metrics` computed; `neg_loss` ranks by `val_loss`, lowest first."""
    if trainer == "alignment":
        return (*RETRIEVAL_SELECTABLE, "neg_loss")
    return tuple(name for name in SELECTABLE
                 if name == "neg_loss" or ("Bleu" if name.startswith("Bleu") else name) in metrics)


class EvalConfig(Strict):
    metrics: list[Literal["Bleu", "METEOR", "ROUGE_L", "CIDEr"]] = list(METRIC_NAMES)
    select_by: str = "CIDEr"
    val_images: int | None = Field(None, ge=1)  # decode only the first N val images each epoch
    sample_captions: int = Field(8, ge=0)

    @model_validator(mode="after")
    def _select_by_is_computed(self):
        if self.select_by in RETRIEVAL_SELECTABLE:
            return self  # TrainerConfig checks that the trainer is alignment
        if self.select_by not in SELECTABLE:
            raise ValueError(f"select_by must be one of {', '.join(SELECTABLE)} (captioner) or "
                             f"{', '.join(RETRIEVAL_SELECTABLE)} (alignment)")
        family = "Bleu" if self.select_by.startswith("Bleu") else self.select_by
        if family != "neg_loss" and family not in self.metrics:
            raise ValueError(f"select_by {self.select_by!r} needs {family!r} in eval.metrics")
        return self


class AlignmentConfig(Strict):
    """`trainer: alignment`: Karpathy & Fei-Fei 2015's visual-semantic alignment model.

    The `model` section's encoder (frozen) embeds the image fragments; its decoder keys describe the
    region captioner trained on the aligned region-snippet pairs (the paper's: decoder mrnn).
    """

    regions: Literal["grid", "detector"] = "grid"  # grid: the encoder's cells; detector: its top boxes
    detector: str = "fasterrcnn_resnet50_fpn"  # a torchvision detection model
    detector_weights: str = "coco"  # coco (torchvision's, downloaded) | PATH to a state dict
    num_regions: int = Field(19, ge=1)  # detector boxes kept besides the whole image
    word_dim: int = Field(300, ge=1)  # x_t = W_w 1_t
    embed_dim: int = Field(1000, ge=1)  # h: the multimodal space and the BRNN's hidden size
    margin: float = Field(1.0, gt=0.0)  # of the ranking loss, eq. (9)
    beta: float = Field(1.0, ge=0.0)  # MRF β: snippets for the region captioner and `orch align`
    caption_epochs: int = Field(5, ge=0)  # region captioner (0: none)
    caption_lr: float = Field(1.0e-3, gt=0.0)  # RMSprop, as the paper trains its generator

    @field_validator("detector")
    @classmethod
    def _registered_detector(cls, v: str) -> str:
        if v not in DETECTOR_NAMES:
            raise ValueError(unknown_name("detector", v, DETECTOR_NAMES))
        return v


# Top-level keys that older versions of orch wrote into the configs they saved (checkpoints' meta.json,
# exports' config.yaml, runs' orch.yaml) and that nothing reads any more: a saved config drops them,
# a config a user writes may not use them (`results`: run folders go under ray.storage).
RETIRED_KEYS = ("results",)


def without_retired_keys(saved: dict) -> dict:
    """A config orch saved itself, without the keys older versions wrote and nothing reads now."""
    return {key: value for key, value in saved.items() if key not in RETIRED_KEYS}


# What `trainer: alignment` changes in the keys a YAML does not set: the paper's optimisation
# (SGD, momentum 0.9, batches of 100, gradients clipped at 5) and ranking by retrieval.
ALIGNMENT_DEFAULTS = {"train": {"optimizer": "sgd", "momentum": 0.9, "batch_size": 100, "grad_clip": 5.0, "lr": 1.0e-3},
                      "eval": {"select_by": "rsum"}}


class TrainerConfig(Strict):
    """Everything one training run reads."""

    name: str = "orch"
    trainer: Literal["captioner", "alignment"] = "captioner"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    decode: DecodeConfig = DecodeConfig()
    eval: EvalConfig = EvalConfig()
    alignment: AlignmentConfig = AlignmentConfig()

    @model_validator(mode="before")
    @classmethod
    def _alignment_defaults(cls, data):
        if not isinstance(data, dict) or data.get("trainer") != "alignment":
            return data
        sections = {name: {**defaults, **data.get(name, {})} for name, defaults in ALIGNMENT_DEFAULTS.items()
                    if isinstance(data.get(name, {}), dict)}
        return {**data, **sections}

    @model_validator(mode="after")
    def _select_by_fits_the_trainer(self):
        ranks_retrieval = self.eval.select_by in RETRIEVAL_SELECTABLE
        if self.trainer == "alignment" and not (ranks_retrieval or self.eval.select_by == "neg_loss"):
            raise ValueError(f"eval.select_by: trainer alignment is ranked by retrieval, set it to one of "
                             f"{', '.join(RETRIEVAL_SELECTABLE)} or neg_loss (got {self.eval.select_by!r})")
        if self.trainer == "captioner" and ranks_retrieval:
            raise ValueError(f"eval.select_by: {self.eval.select_by!r} ranks alignment models (trainer: alignment)")
        if self.trainer == "alignment" and self.model.fine_tune is not False:
            raise ValueError("model.fine_tune: the alignment model keeps the CNN frozen, set it to false")
        return self
