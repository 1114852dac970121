"""`orch synth`: a small captioning dataset whose captions can only be right if the model looks.

Each image holds 1-3 shapes on a noisy dark background, each in its own third of the image
(left / middle / right), each with a colour (5), a shape (4) and a size (2). Its five captions say
the same thing in five phrasings, always naming every object as "<size> <colour> <shape>
<position>", so content is consistent across references while wording varies. Everything is
clearly visible at 64 px. The truth is stored under each image's `synthetic` key (ignored by
Karpathy-format readers) so `content_accuracy` can check generated captions against it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from itertools import zip_longest
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from trainers.errors import InputError
from trainers.staging import is_absent_or_empty, staged_folder
from trainers.text import tokenize

FORMAT_VERSION = 1
COLORS = {"red": (225, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235), "yellow": (240, 220, 40),
          "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 0.5, "large": 0.9}  # object side as a fraction of a third of the image
POSITIONS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
COUNTS = {1: "one shape", 2: "two shapes", 3: "three shapes"}
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.1}  # the rest is train
IMAGES_FOLDER = "images"


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    position: str  # left | middle | right


@dataclass(frozen=True)
class SyntheticSummary:
    out: Path
    json_path: Path  # pass to prepare_dataset with images_dir=out
    images_dir: Path
    split_counts: dict[str, int]
    size: int
    seed: int
    up_to_date: bool  # OUT already held this dataset; nothing was written

    def describe(self) -> str:
        counts = ", ".join(f"{split} {count}" for split, count in self.split_counts.items())
        verb = "already holds" if self.up_to_date else "wrote"
        return (f"{verb} {sum(self.split_counts.values())} synthetic {self.size}x{self.size} images "
                f"({counts}; seed {self.seed}) in {self.out}\n"
                f"next: orch prepare {self.json_path} --images {self.images_dir} "
                f"--out {self.out / 'prepared'} --min-word-freq 1")


def write_synthetic_dataset(out: Path, n: int = 2000, size: int = 64, seed: int = 0) -> SyntheticSummary:
    """Write OUT/dataset.json (Karpathy format) and OUT/images/*.png; same seed, same files."""
    out = Path(out)
    if n < 10:
        raise InputError(f"--n {n}: need at least 10 images so that train, val and test are not empty")
    if size < 16:
        raise InputError(f"--size {size}: need at least 16 pixels for the shapes to be told apart")
    options = {"n": n, "size": size, "seed": seed, "format_version": FORMAT_VERSION}
    splits = _split_names(n)
    summary = SyntheticSummary(out=out, json_path=out / "dataset.json", images_dir=out,
                               split_counts=dict(Counter(splits)), size=size, seed=seed, up_to_date=False)
    if _holds_dataset(out, options):
        return replace(summary, up_to_date=True)

    with staged_folder(out) as staging:
        (staging / IMAGES_FOLDER).mkdir()
        rng = np.random.default_rng(seed)
        entries = []
        for index, split in enumerate(splits):
            objects = sample_scene(rng)
            filename = f"synth_{index:06d}.png"
            render_scene(objects, size, rng).save(staging / IMAGES_FOLDER / filename)
            entries.append(_karpathy_entry(index, split, filename, objects))
        document = {"dataset": "synthetic", "synthetic_options": options, "images": entries}
        (staging / "dataset.json").write_text(json.dumps(document))
    return summary


def sample_scene(rng: np.random.Generator) -> list[SceneObject]:
    """1-3 objects, left to right, each in its own third, no two alike in both colour and shape."""
    count = int(rng.integers(1, 4))
    positions = sorted(rng.choice(len(POSITIONS), size=count, replace=False))
    kinds = rng.choice(len(COLORS) * len(SHAPES), size=count, replace=False)
    colors, sizes, position_names = list(COLORS), list(SIZES), list(POSITIONS)
    return [SceneObject(shape=SHAPES[kind % len(SHAPES)], color=colors[kind // len(SHAPES)],
                        size=sizes[int(rng.integers(len(SIZES)))], position=position_names[position])
            for position, kind in zip(positions, kinds)]


def render_scene(objects: Sequence[SceneObject], size: int, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(15, 70)
    noise = rng.normal(0.0, 5.0, size=(size, size, 3))  # (S, S, 3)
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    third = size / len(POSITIONS)
    for item in objects:
        side = SIZES[item.size] * third
        slack = third - side
        cx = (list(POSITIONS).index(item.position) + 0.5) * third + rng.uniform(-slack / 4, slack / 4)
        cy = rng.uniform(side / 2 + 2, size - side / 2 - 2)
        _draw_shape(draw, item.shape, cx, cy, side / 2, COLORS[item.color])
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # cross
        bar = r / 3
        draw.rectangle((cx - r, cy - bar, cx + r, cy + bar), fill=fill)
        draw.rectangle((cx - bar, cy - r, cx + bar, cy + r), fill=fill)


def _named(item: SceneObject) -> str:
    return f"{item.size} {item.color} {item.shape}"


def _located(item: SceneObject) -> str:
    return f"a {_named(item)} {POSITIONS[item.position]}"


def _listing(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


PHRASINGS: tuple[Callable[[Sequence[SceneObject]], str], ...] = (
    lambda objects: " and ".join(_located(item) for item in objects),
    lambda objects: "there is " + _listing([_located(item) for item in objects]),
    lambda objects: f"{COUNTS[len(objects)]}: " + _listing([_located(item) for item in objects]),
    lambda objects: _listing([f"{POSITIONS[item.position]}{' there is' if i == 0 else ''} a {_named(item)}"
                              for i, item in enumerate(objects)]),
    lambda objects: "an image with " + _listing([_located(item) for item in objects]),
)


def describe_scene(objects: Sequence[SceneObject]) -> list[str]:
    """Five raw captions, e.g. "There is a large red circle on the left and a small blue cross in the middle." """
    return [(text[0].upper() + text[1:] + ".") for text in (phrase(objects) for phrase in PHRASINGS)]


def _karpathy_entry(index: int, split: str, filename: str, objects: Sequence[SceneObject]) -> dict:
    sentences = [{"tokens": tokenize(raw), "raw": raw, "imgid": index, "sentid": index * len(PHRASINGS) + k}
                 for k, raw in enumerate(describe_scene(objects))]
    return {"filepath": IMAGES_FOLDER, "filename": filename, "split": split, "imgid": index,
            "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
            "synthetic": {"objects": [asdict(item) for item in objects]}}


def _split_names(n: int) -> list[str]:
    held_out = {split: max(1, round(n * fraction)) for split, fraction in SPLIT_FRACTIONS.items()}
    return ["train"] * (n - sum(held_out.values())) + [split for split, count in held_out.items() for _ in range(count)]


def _holds_dataset(out: Path, options: dict) -> bool:
    """True when OUT already holds this dataset; InputError when it holds anything else."""
    if is_absent_or_empty(out):
        return False
    try:
        existing = json.loads((out / "dataset.json").read_text()).get("synthetic_options")
    except (OSError, ValueError, AttributeError):
        existing = None
    if existing != options:
        raise InputError(f"{out} already exists and is not this synthetic dataset ({options}): "
                         "remove it or choose another folder")
    return True


def _mentions(caption: str) -> tuple[list[tuple[str | None, str]], list[str]]:
    """In caption order: the (colour, shape) pairs named (each shape word with the colour word
    before it) and the position words (left, middle, right)."""
    named, positions, color = [], [], None
    for token in tokenize(caption):
        if token in COLORS:
            color = token
        elif token in SHAPES:
            named.append((color, token))
            color = None
        elif token in POSITIONS:
            positions.append(token)
    return named, positions


def named_objects(caption: str) -> Counter:
    """The (colour, shape) pairs a caption names."""
    return Counter(_mentions(caption)[0])


def placed_objects(caption: str) -> Counter:
    """The (colour, shape, position) triples a caption names.

    Every phrasing names each object with exactly one position phrase, before it or after it, so
    the i-th object named goes with the i-th position word; a missing or extra one pairs with None.
    """
    named, positions = _mentions(caption)
    return Counter((*(pair or (None, None)), position) for pair, position in zip_longest(named, positions))


def _accuracy(captions: Sequence[str], ground_truths: Sequence[dict], parse: Callable[[str], Counter],
              fields: tuple[str, ...]) -> float:
    if len(captions) != len(ground_truths):
        raise ValueError(f"{len(captions)} captions for {len(ground_truths)} ground truths")
    correct = sum(parse(caption) == Counter(tuple(o[f] for f in fields) for o in truth["objects"])
                  for caption, truth in zip(captions, ground_truths))
    return correct / max(len(captions), 1)


def content_accuracy(captions: Sequence[str], ground_truths: Sequence[dict]) -> float:
    """Fraction of images whose caption names each object's colour and shape, and nothing else."""
    return _accuracy(captions, ground_truths, named_objects, ("color", "shape"))


def position_accuracy(captions: Sequence[str], ground_truths: Sequence[dict]) -> float:
    """Fraction of images whose caption names each object's colour, shape and position, and nothing else."""
    return _accuracy(captions, ground_truths, placed_objects, ("color", "shape", "position"))


def constant_caption_baseline(references: Sequence[Sequence[str]]) -> str:
    """The most common reference caption (ties: alphabetical), to caption every image with."""
    counts = Counter(caption for captions in references for caption in captions)
    return min(counts, key=lambda caption: (-counts[caption], caption))
