"""A trained alignment model outside training: align a sentence with an image (`orch align`), caption
its regions (`orch align --caption-regions`), export it (`orch export NAME --metric rsum`).

A model loads from either folder orch writes (trainers.inference reads both):

- an export (`export_aligner`): model.safetensors, config.yaml, vocab.json, as `orch export` writes
  captioners. Its state dict holds the frozen CNN (and detector) under `regions.`, so nothing is
  downloaded: the region source is built untrained and those weights are loaded.
- a training checkpoint (trainers.checkpoint): best_model.pt, meta.json. The region source is built
  from the config as training built it (the same encoder and detector weights must be at hand).

Fragments are computed as in training; when training read them from the float16 feature cache,
they are rounded to float16 here too, so the same weights align the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from trainers.alignment.model import AlignmentModel
from trainers.alignment.mrf import sentence_snippets
from trainers.alignment.region_captions import caption_regions
from trainers.alignment.regions import build_regions, split_fragments
from trainers.config import TrainerConfig
from trainers.data.prepare import IMAGE_ERRORS, read_image_rgb
from trainers.data.vocab import Vocab
from trainers.errors import InputError
from trainers.features import resize_batch
from trainers.inference import EXPORT_CONFIG, EXPORT_VOCAB, EXPORT_WEIGHTS, read_saved_model
from trainers.staging import staged_folder
from trainers.text import tokenize

REGIONS_PREFIX = "regions."


@dataclass
class AlignedSnippet:
    words: str
    region: int  # 0 is the whole image
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image side
    caption: str = ""  # the region captioner's caption of the region (when it was trained)


@dataclass
class Alignment:
    image: np.ndarray  # uint8 (3, S, S): what the model saw
    words: list[str]  # the sentence as the model read it (unknown words as <unk>)
    snippets: list[AlignedSnippet]


class Aligner:
    """A trained alignment model with its region source, vocabulary and config."""

    def __init__(self, config: TrainerConfig, vocab: Vocab, state: dict, device: torch.device, source: Path):
        self.config, self.vocab, self.device, self.source = config, vocab, device, source
        regions_state = {k[len(REGIONS_PREFIX):]: v for k, v in state.items() if k.startswith(REGIONS_PREFIX)}
        self.regions = build_regions(config, pretrained=not regions_state)
        self.model = AlignmentModel(config, self.regions.feature_dim, len(vocab))
        try:
            if regions_state:
                self.regions.load_state_dict(regions_state)
            self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(REGIONS_PREFIX)})
        except RuntimeError as error:
            first_lines = "; ".join(str(error).splitlines()[:3])
            raise InputError(f"{source}: the weights do not fit the model its config describes: {first_lines[:500]}") \
                from None
        self.regions.to(device).eval()
        self.model.to(device).eval()

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Aligner":
        """An export or checkpoint folder of a `trainer: alignment` run -> Aligner."""
        folder = Path(folder)
        config, vocab, state = read_saved_model(folder)
        if config.trainer != "alignment":
            raise InputError(f"{folder}: a {config.trainer} model, not an alignment model (trainer: alignment); "
                             "caption with `orch caption`")
        return cls(config, vocab, state, torch.device(device), folder)

    @property
    def has_region_captioner(self) -> bool:
        return self.config.alignment.caption_epochs > 0

    @torch.no_grad()
    def fragments(self, image: np.ndarray) -> torch.Tensor:
        """uint8 image (3, S, S) -> its fragments (M, 4 + C), as training computed them."""
        pixels = torch.tensor(image)[None].to(self.device)  # a copy: the image array is read-only
        batch = resize_batch(pixels, self.config.data.image_size)
        fragments = self.regions(batch)[0]  # (M, 4 + C)
        return fragments.half().float() if self.config.data.feature_cache else fragments

    @torch.no_grad()
    def align(self, image_path: str | Path, sentence: str, beta: Optional[float] = None) -> Alignment:
        """Each snippet of `sentence` with the region of the image it aligns to (MRF at β, default the model's)."""
        image = _read_image(Path(image_path), self.config.data.image_size)
        words = tokenize(sentence)
        if not words:
            raise InputError(f"the sentence {sentence!r} has no words")
        ids = torch.tensor([self.vocab.stoi.get(w, self.vocab.unk_id) for w in words], device=self.device)
        boxes, features = split_fragments(self.fragments(image))  # (M, 4), (M, C)
        images = self.model.embed_images(features)  # (M, h)
        sentences = self.model.embed_sentences(ids[None], torch.tensor([len(words)], device=self.device))[0]  # (T, h)
        pieces = sentence_snippets(images, sentences, self.config.alignment.beta if beta is None else beta)
        captions = [""] * len(pieces)
        if self.has_region_captioner:
            regions = torch.tensor([p.region for p in pieces], device=self.device)
            captions = caption_regions(self.model.region_captioner, self.model.standardised(features[regions]),
                                       self.config.decode, self.vocab)
        read = [self.vocab.itos[i] for i in ids.tolist()]
        snippets = [AlignedSnippet(" ".join(read[p.start:p.end]), p.region,
                                   tuple(round(float(x), 4) for x in boxes[p.region]), caption)
                    for p, caption in zip(pieces, captions)]
        return Alignment(image, read, snippets)


    @torch.no_grad()
    def caption_regions(self, image_path: str | Path) -> Alignment:
        """A caption for every region of the image by the region captioner (the paper's region captions);
        each snippet of the result is one region with its caption as `words`."""
        if not self.has_region_captioner:
            raise InputError(f"{self.source}: this model has no region captioner (alignment.caption_epochs: 0)")
        image = _read_image(Path(image_path), self.config.data.image_size)
        boxes, features = split_fragments(self.fragments(image))  # (M, 4), (M, C)
        captions = caption_regions(self.model.region_captioner, self.model.standardised(features), self.config.decode,
                                   self.vocab)
        snippets = [AlignedSnippet(caption, region, tuple(round(float(x), 4) for x in boxes[region]), caption)
                    for region, caption in enumerate(captions)]
        return Alignment(image, [], snippets)


def _read_image(path: Path, size: int) -> np.ndarray:
    try:
        return read_image_rgb(path, size)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IMAGE_ERRORS as error:
        raise InputError(f"{path}: cannot read the image: {error}") from None


def export_aligner(checkpoint: str | Path, out: str | Path, origin: Optional[str] = None) -> Path:
    """Write a trial's checkpoint as an export folder that loads with nothing downloaded.

    model.safetensors holds the alignment model, the region captioner and, under `regions.`, the
    frozen CNN (and detector); config.yaml (its header comment says `origin`, by default the
    checkpoint's path) and vocab.json as `orch export` writes them.
    """
    out = Path(out)
    with staged_folder(out, replace=True) as staging:
        export_aligner_files(checkpoint, staging, origin)
    return out


def export_aligner_files(checkpoint: str | Path, folder: Path, origin: Optional[str] = None) -> None:
    """The export's three files, written into `folder` (which the caller makes atomic)."""
    from safetensors.torch import save_file

    aligner = Aligner.load(checkpoint)
    state = {**aligner.model.state_dict(), **{REGIONS_PREFIX + k: v for k, v in aligner.regions.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in state.items()}, folder / EXPORT_WEIGHTS, metadata={"format": "orch-aligner"})
    (folder / EXPORT_CONFIG).write_text(f"# orch alignment model, from {origin or checkpoint}\n"
                                        + yaml.safe_dump(aligner.config.model_dump(mode="json"), sort_keys=False))
    (folder / EXPORT_VOCAB).write_text(json.dumps(aligner.vocab.to_dict()))


def plot_alignment(alignment: Alignment, out: str | Path) -> Path:
    """The paper's Figure 1: the image with each aligned region's box, labelled with its snippets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = alignment.image.transpose(1, 2, 0)  # (S, S, 3)
    size = image.shape[0]
    by_region: dict[int, list[AlignedSnippet]] = {}
    for snippet in alignment.snippets:
        by_region.setdefault(snippet.region, []).append(snippet)
    figure, ax = plt.subplots(figsize=(6, 6.4), layout="constrained")
    ax.imshow(image, extent=(0, size, size, 0))
    ax.axis("off")
    colours = plt.get_cmap("tab10")
    for index, (region, snippets) in enumerate(sorted(by_region.items())):
        x0, y0, x1, y1 = (c * size for c in snippets[0].box)
        colour = colours(index % 10)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2.5))
        label = " / ".join(s.words for s in snippets)
        y, align = (y1 - 1, "bottom") if region == 0 else (y0 + 1, "top")  # the whole image's label below
        ax.text(x0 + 1, y, label, color="white", fontsize=10, va=align,
                bbox={"facecolor": colour, "alpha": 0.85, "pad": 2, "edgecolor": "none"})
    if alignment.words:
        ax.set_title(" ".join(alignment.words), fontsize=11, wrap=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
