"""A trained captioner outside training: load it, caption image files, score a prepared split, draw attention.

A model loads from either of the two folders orch writes:

- an export (`orch export`): model.safetensors, config.yaml, vocab.json;
- a training checkpoint (trainers.checkpoint): best_model.pt, meta.json.

An export holds the whole model's state dict, the frozen encoder included, so nothing is
downloaded. A checkpoint leaves a frozen encoder out; reading it rebuilds that encoder from its
weights (torchvision's, downloaded once into torch's hub cache) and checks its hash. Either way the
model is built with `weights: none` and the whole state dict is loaded strictly.

Features are computed as in training. A frozen encoder trained the decoder on the feature cache,
which stores float16, so its features are rounded to float16 here too: the same weights then give
the same captions as the training run's own evaluation (in float32; a model trained with
`train.amp` was evaluated under autocast, and its captions here may differ in rare ties).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from trainers.checkpoint import BEST_MODEL, META, complete_state
from trainers.config import METRIC_NAMES, DecodeConfig, TrainerConfig, without_retired_keys
from trainers.data.loaders import SplitImages
from trainers.data.prepare import IMAGE_ERRORS, read_image_rgb
from trainers.data.prepared import PreparedDataset
from trainers.data.vocab import Vocab
from trainers.decoding import Hypothesis, decode
from trainers.errors import InputError, reading
from trainers.evaluation import DecodeVariant, caption_batches, score_split
from trainers.features import resize_batch
from trainers.memory import reuse_freed_memory
from trainers.models import Captioner, build_captioner

EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_VOCAB = "model.safetensors", "config.yaml", "vocab.json"
ImageSource = Union[str, Path, bytes]  # a file, or the bytes of an encoded image


@dataclass
class LoadedModel:
    """A captioner ready to decode, with the vocabulary and the config it was trained with."""

    captioner: Captioner
    vocab: Vocab
    config: TrainerConfig  # `decode` holds the decode settings it was exported (or trained) with
    source: Path
    device: torch.device

    @property
    def cached_features(self) -> bool:
        """Whether training fed the decoder float16 features from the cache (a frozen encoder)."""
        return self.config.data.feature_cache and not self.captioner.encoder.trainable_parameters()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, S, S) -> grid features (B, P, C), as training computed them."""
        images = resize_batch(images.to(self.device), self.config.data.image_size)  # (B, 3, H, W)
        features = self.captioner.encode(images)  # (B, P, C)
        return features.half().float() if self.cached_features else features


@dataclass
class Captioned:
    """One image's caption, or why it has none."""

    source: str
    caption: str = ""
    hypothesis: Optional[Hypothesis] = None
    image: Optional[np.ndarray] = None  # uint8 (3, S, S): what the model saw
    error: str = ""


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """An export folder or a checkpoint folder -> LoadedModel; InputError naming what is missing."""
    reuse_freed_memory()
    folder = Path(folder)
    config, vocab, state = read_saved_model(folder)
    model_cfg = config.model.model_copy(update={"weights": "none"})  # the saved state holds the encoder too
    captioner = build_captioner(model_cfg, len(vocab))
    try:
        captioner.load_state_dict(state)
    except RuntimeError as error:
        first_lines = "; ".join(str(error).splitlines()[:3])
        raise InputError(f"{folder}: the weights do not fit the model its config describes: {first_lines[:500]}") from None
    device = torch.device(device)
    captioner.to(device).eval()
    return LoadedModel(captioner, vocab, config, folder, device)


def read_saved_model(folder: Path) -> tuple[TrainerConfig, Vocab, dict]:
    """An export or checkpoint folder's config, vocabulary and weights; InputError naming what is missing."""
    if (folder / EXPORT_WEIGHTS).is_file():
        config_dict, vocab, state = _read_export(folder)
    elif (folder / BEST_MODEL).is_file():
        config_dict, vocab, state = _read_checkpoint(folder)
    else:
        raise InputError(f"{folder}: not an orch model (expected {EXPORT_WEIGHTS}, {EXPORT_CONFIG} and {EXPORT_VOCAB} "
                         f"from `orch export`, or a checkpoint's {BEST_MODEL} and {META})")
    try:
        return TrainerConfig.model_validate(without_retired_keys(config_dict)), vocab, state
    except ValueError as error:
        raise InputError(f"{folder}: its config is not a valid trainer config: {error}") from None


def _read_export(folder: Path) -> tuple[dict, Vocab, dict]:
    from safetensors.torch import load_file

    missing = [name for name in (EXPORT_CONFIG, EXPORT_VOCAB) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: incomplete export (missing {', '.join(missing)})")
    again = "export the model again with `orch export`"
    with reading(folder / EXPORT_CONFIG, again):
        config = yaml.safe_load((folder / EXPORT_CONFIG).read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping of trainer config keys")
    with reading(folder / EXPORT_VOCAB, again):
        vocab = Vocab.from_dict(json.loads((folder / EXPORT_VOCAB).read_text()))
    with reading(folder / EXPORT_WEIGHTS, again):
        return config, vocab, load_file(folder / EXPORT_WEIGHTS)


def _read_checkpoint(folder: Path) -> tuple[dict, Vocab, dict]:
    if not (folder / META).is_file():
        raise InputError(f"{folder}: incomplete checkpoint (missing {META})")
    remedy = "use another checkpoint, or an `orch export` folder"
    with reading(folder / META, remedy):
        meta = json.loads((folder / META).read_text())
        config, vocab = meta["config"], Vocab(meta["vocab"])
    with reading(folder / BEST_MODEL, remedy):
        state = torch.load(folder / BEST_MODEL, map_location="cpu", weights_only=True)
    return config, vocab, complete_state(state, meta, folder)


def decode_settings(base: DecodeConfig, beam_size: Optional[int] = None,
                    length_penalty: Optional[float] = None) -> DecodeConfig:
    """`base` with the given settings replaced; a beam size implies beam search."""
    update = {}
    if beam_size is not None:
        update.update(strategy="beam", beam_size=beam_size)
    if length_penalty is not None:
        update["length_penalty"] = length_penalty
    try:
        return DecodeConfig.model_validate({**base.model_dump(), **update})
    except ValueError as error:
        raise InputError(f"decode settings: {error}") from None


def caption_images(model: LoadedModel, sources: Sequence[ImageSource], decode_cfg: Optional[DecodeConfig] = None,
                   batch_size: int = 16) -> list[Captioned]:
    """One Captioned per source, in order. An unreadable image gets its error; the others are captioned."""
    decode_cfg = decode_cfg or model.config.decode
    size = model.config.data.image_size
    results = [_read(source, size) for source in sources]
    readable = [r for r in results if not r.error]
    for start in range(0, len(readable), batch_size):
        batch = readable[start:start + batch_size]
        images = torch.from_numpy(np.stack([r.image for r in batch]))  # (B, 3, S, S)
        hypotheses = decode(model.captioner.decoder, model.features(images), decode_cfg)
        for result, hypothesis in zip(batch, hypotheses):
            result.hypothesis = hypothesis
            result.caption = model.vocab.decode(hypothesis.tokens)
    return results


def _read(source: ImageSource, size: int) -> Captioned:
    shown = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        image = read_image_rgb(io.BytesIO(source) if isinstance(source, bytes) else Path(source), size)
    except FileNotFoundError:
        return Captioned(shown, error="no such file")
    except IMAGE_ERRORS as error:
        return Captioned(shown, error=f"cannot read the image: {error}")
    return Captioned(shown, image=image)


def evaluate_split(model: LoadedModel, prepared: str | Path, split: str = "test",
                   decode_cfg: Optional[DecodeConfig] = None,
                   metrics: Sequence[str] = METRIC_NAMES) -> tuple[dict[str, float], list[str]]:
    """Caption every image of a prepared split and score it: (scores, captions in split order).

    Scores: by default Bleu_1..4, METEOR (when Java is present), ROUGE_L, CIDEr; always
    mean_caption_length and distinct_captions (and on synthetic data content/position accuracy).
    Batches are as large as the model's training batches, as the training run's own evaluation.
    """
    data = PreparedDataset(prepared).split(split)
    if len(data) == 0:
        raise InputError(f"{prepared}: split {split!r} holds no images")
    variant = DecodeVariant("eval", decode_cfg or model.config.decode)
    batches = DataLoader(SplitImages(data), batch_size=model.config.train.batch_size, shuffle=False)
    captions = caption_batches(batches, model.features, model.captioner.decoder, model.vocab, [variant])["eval"]
    return score_split(data, captions, list(metrics)), captions.texts


def plot_attention(result: Captioned, out: str | Path, columns: int = 5) -> Path:
    """The Show-Attend-Tell figure: the image, then the image under each word's attention map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    words = result.caption.split()
    alphas = result.hypothesis.alphas[:len(words)]  # (L, P)
    grid = int(round(alphas.shape[1] ** 0.5))
    image = result.image.transpose(1, 2, 0)  # (S, S, 3)
    size = image.shape[0]
    maps = F.interpolate(alphas.view(-1, 1, grid, grid), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].numpy()  # (L, S, S)
    panels = len(words) + 1
    rows = -(-panels // columns)
    maps = maps / maps.max(axis=(1, 2), keepdims=True).clip(min=1e-12)  # brightest cell of each map = 1
    extent = (0, size, size, 0)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.7 * rows + 0.4), squeeze=False,
                                layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image, extent=extent)
    axes.flat[0].set_title(Path(result.source).name[:28], fontsize=10)
    for ax, word, attention in zip(axes.flat[1:], words, maps):
        ax.imshow(image, extent=extent)
        ax.imshow(attention, cmap="gray", vmin=0.0, vmax=1.0, alpha=0.6, extent=extent)
        ax.set_title(word, fontsize=12)
    figure.suptitle(f"“{result.caption}” (bright: attended)", fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
