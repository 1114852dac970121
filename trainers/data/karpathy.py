"""Read Karpathy split JSON files (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json).

Each entry of `images` names a file (`filepath` is COCO's subfolder such as val2014; Flickr has
none), a split (`restval` is COCO's extra training data and counts as train) and sentences. Every
sentence's `raw` text is tokenized with `trainers.text.tokenize`, the tokenizer evaluation uses, so
the vocabulary sees the words the metrics see; `tokens` is the fallback when `raw` is absent.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from trainers.errors import InputError
from trainers.text import tokenize

SPLITS = ("train", "val", "test")
SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}
REQUIRED_KEYS = ("filename", "split", "sentences")


@dataclass(frozen=True)
class KarpathyImage:
    index: int  # position in the JSON's `images` list, for messages
    split: str  # train | val | test
    image_id: int  # `cocoid` when present, else `imgid`
    path: str  # relative to the images folder: "val2014/COCO_val2014_0001.jpg" or "1000268201.jpg"
    captions: tuple[tuple[str, ...], ...]  # tokenized, untruncated
    ground_truth: dict | None  # the `synthetic` key that orch synth writes


@dataclass(frozen=True)
class KarpathyDataset:
    name: str
    images: tuple[KarpathyImage, ...]


def read_karpathy_json(path: Path) -> KarpathyDataset:
    """Parse and validate the whole file; InputError names the key and image index at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected a Karpathy split JSON such as dataset_flickr8k.json)")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON: {error}") from None
    return parse_karpathy(data, source=str(path))


def parse_karpathy(data: Any, source: str) -> KarpathyDataset:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{source}: not a Karpathy split JSON: the top level needs an 'images' list")
    images = tuple(_parse_image(entry, index, source) for index, entry in enumerate(data["images"]))
    _reject_uncaptioned(images, source)
    _reject_duplicate_ids(images, source)
    return KarpathyDataset(name=str(data.get("dataset", Path(source).stem)), images=images)


def _parse_image(entry: Any, index: int, source: str) -> KarpathyImage:
    where = f"{source}: images[{index}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where} is not an object")
    for key in REQUIRED_KEYS:
        if key not in entry:
            raise InputError(f"{where} has no '{key}' key (a Karpathy split JSON image needs {', '.join(REQUIRED_KEYS)})")
    split = entry["split"]
    if split not in SPLIT_OF:
        raise InputError(f"{where} has split {split!r}; expected one of {', '.join(SPLIT_OF)}")
    image_id = entry.get("cocoid", entry.get("imgid"))
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise InputError(f"{where} needs an integer 'cocoid' or 'imgid' key")
    filename, filepath = entry["filename"], entry.get("filepath", "")
    if not isinstance(filename, str) or not filename or not isinstance(filepath, str):
        raise InputError(f"{where} needs a non-empty 'filename' string (and 'filepath', when present, a string)")
    path = PurePosixPath(filepath, filename)
    if path.is_absolute() or ".." in path.parts or "\\" in str(path) or PureWindowsPath(str(path)).drive:
        raise InputError(f"{where} names {str(path)!r}, outside the --images folder (filename and filepath must be "
                         f"relative paths inside it, without '..'; fix the entry or move the image into --images)")
    if not isinstance(entry["sentences"], list):
        raise InputError(f"{where}.sentences is not a list")
    captions = tuple(_parse_sentence(sentence, f"{where}.sentences[{number}]")
                     for number, sentence in enumerate(entry["sentences"]))
    ground_truth = entry.get("synthetic")
    return KarpathyImage(index=index, split=SPLIT_OF[split], image_id=image_id,
                         path=str(path), captions=captions,
                         ground_truth=ground_truth if isinstance(ground_truth, dict) else None)


def _parse_sentence(sentence: Any, where: str) -> tuple[str, ...]:
    if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str):
        return tuple(tokenize(sentence["raw"]))
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list) \
            and all(isinstance(token, str) for token in sentence["tokens"]):
        return tuple(tokenize(" ".join(sentence["tokens"])))
    raise InputError(f"{where} has neither a 'raw' string nor a 'tokens' list of strings")


def _reject_uncaptioned(images: tuple[KarpathyImage, ...], source: str) -> None:
    uncaptioned = [f"images[{image.index}] {image.path}" for image in images if not image.captions]
    if uncaptioned:
        raise InputError(f"{source}: {len(uncaptioned)} images have no caption:\n  " + "\n  ".join(uncaptioned))


def _reject_duplicate_ids(images: tuple[KarpathyImage, ...], source: str) -> None:
    counts = Counter(image.image_id for image in images)
    repeated = [f"images[{image.index}] id {image.image_id}" for image in images if counts[image.image_id] > 1]
    if repeated:
        raise InputError(f"{source}: image ids must be unique; these repeat:\n  " + "\n  ".join(repeated))
