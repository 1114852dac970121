"""A prepared dataset on disk (what `orch prepare` writes) and its reader.

Layout of a prepared folder:

    manifest.json        written last; its presence and validity make the folder a prepared dataset
    vocab.json           {"itos": [...]}: <pad>=0, <start>=1, <end>=2, <unk>=3, then words
    <split>/images.npy         uint8 (N, 3, S, S), read memory-mapped by any number of workers
    <split>/captions.npy       int32 (M, max_len + 2): <start> w... <end> <pad>...
    <split>/lengths.npy        int32 (M,): tokens in each caption counting <start> and <end>
    <split>/caption_image.npy  int32 (M,): the images.npy row each caption describes
    <split>/images.json        per image row: {id, filename, references, ground_truth}

for each split in train, val, test (COCO's restval is in train). `references` are the image's
captions tokenized, untruncated and joined with spaces: what evaluation scores against.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.data.vocab import Vocab
from trainers.errors import InputError

FORMAT = "orch-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrepareOptions(_Strict):
    """The options that shape a prepared dataset; the same source and options give the same data."""

    min_word_freq: int = Field(5, ge=1)
    max_len: int = Field(50, ge=1)
    image_size: int = Field(256, ge=1)
    skip_bad_images: bool = False


class SplitCounts(_Strict):
    images: int = Field(ge=0)
    captions: int = Field(ge=0)


class SkippedImage(_Strict):
    path: str  # relative to the images folder
    reason: str


class Manifest(_Strict):
    """manifest.json: what was prepared, from what, how."""

    format: Literal["orch-prepared"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    dataset: str
    source_json: str
    source_sha256: str
    images_dir: str
    options: PrepareOptions
    vocab_size: int = Field(ge=4)
    splits: dict[Literal["train", "val", "test"], SplitCounts]
    captions_truncated: int = Field(ge=0)
    images_skipped: list[SkippedImage] = []

    def describe(self, location: str = "", up_to_date: bool = False) -> str:
        head = f"{self.dataset}" + (f" -> {location}" if location else "")
        lines = [f"prepared {head}" + (" (already up to date: same source JSON and options)" if up_to_date else "")]
        lines += [f"  {name}: {counts.images} images, {counts.captions} captions" for name, counts in self.splits.items()]
        lines.append(f"  vocabulary: {self.vocab_size} tokens (words seen >= {self.options.min_word_freq} times in train)")
        lines.append(f"  images: {self.options.image_size}x{self.options.image_size} RGB; "
                     f"captions over {self.options.max_len} words truncated: {self.captions_truncated}")
        if self.images_skipped:
            lines.append(f"  skipped {len(self.images_skipped)} unreadable images:")
            lines += [f"    {image.path}: {image.reason}" for image in self.images_skipped]
        return "\n".join(lines)


def read_manifest(root: Path) -> Manifest:
    """The folder's manifest; InputError naming the folder and what is wrong when it has none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise InputError(f"{root}: not a prepared dataset (no {MANIFEST}): run orch prepare")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as error:
        problem = error.errors()[0]
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        raise InputError(f"{path}: not a valid prepared dataset manifest ({key}: {problem['msg']}): "
                         "run orch prepare again") from None


class PreparedSplit:
    """One split: memory-mapped arrays plus per-image ids, filenames, references and ground truth."""

    def __init__(self, folder: Path, counts: SplitCounts, options: PrepareOptions):
        self.folder = Path(folder)
        self.name = self.folder.name
        size = options.image_size
        self.images_path = self.folder / "images.npy"
        self.captions_path = self.folder / "captions.npy"
        self.lengths_path = self.folder / "lengths.npy"
        self.caption_image_path = self.folder / "caption_image.npy"
        self.images = self._array(self.images_path, np.uint8, (counts.images, 3, size, size))  # (N, 3, S, S)
        self.captions = self._array(self.captions_path, np.int32, (counts.captions, options.max_len + 2))  # (M, L)
        self.lengths = self._array(self.lengths_path, np.int32, (counts.captions,))  # (M,)
        self.caption_image = self._array(self.caption_image_path, np.int32, (counts.captions,))  # (M,)
        rows = self._image_rows(counts.images)
        self.image_ids: list[int] = [row["id"] for row in rows]
        self.filenames: list[str] = [row["filename"] for row in rows]
        self.references: list[list[str]] = [row["references"] for row in rows]
        self.ground_truth: list[dict | None] = [row["ground_truth"] for row in rows]

    def __len__(self) -> int:
        """Number of images."""
        return self.images.shape[0]

    def _array(self, path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: unreadable ({error}): run orch prepare again") from None
        if array.dtype != dtype or array.shape != shape:
            raise InputError(f"{path}: holds {array.dtype} {array.shape}, the manifest says {np.dtype(dtype)} {shape}: "
                             "run orch prepare again")
        return array

    def _image_rows(self, expected: int) -> list[dict]:
        path = self.folder / "images.json"
        try:
            rows = json.loads(path.read_bytes())
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: unreadable ({error}): run orch prepare again") from None
        if not isinstance(rows, list) or len(rows) != expected:
            raise InputError(f"{path}: expected a list of {expected} images: run orch prepare again")
        return rows


class PreparedDataset:
    """A validated prepared folder: `.manifest` (dict), `.vocab`, and `.split(name)`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._manifest = read_manifest(self.root)
        self.manifest: dict = self._manifest.model_dump(mode="json")
        try:
            self.vocab = Vocab.from_dict(json.loads((self.root / VOCAB).read_bytes()))
        except (OSError, ValueError) as error:
            raise InputError(f"{self.root / VOCAB}: unreadable ({error}): run orch prepare again") from None
        if len(self.vocab) != self._manifest.vocab_size:
            raise InputError(f"{self.root / VOCAB}: {len(self.vocab)} tokens, the manifest says "
                             f"{self._manifest.vocab_size}: run orch prepare again")
        self._splits: dict[str, PreparedSplit] = {}

    def split(self, name: str) -> PreparedSplit:
        if name not in self._manifest.splits:
            raise InputError(f"{self.root}: no split {name!r}; it has {', '.join(self._manifest.splits)}")
        if name not in self._splits:
            self._splits[name] = PreparedSplit(self.root / name, self._manifest.splits[name], self._manifest.options)
        return self._splits[name]

    def describe(self) -> str:
        return self._manifest.describe(location=str(self.root))


def check_prepared(data: dict, key: str = "data.prepared") -> None:
    """Refuse, before anything starts, a `data` section whose prepared folder is missing or unreadable
    (its manifest and vocab are read; the arrays are checked when a split opens). A missing folder that
    `data.synthetic` will generate is fine. InputError: `<key>: <folder>: <what> (<what to do>)`."""
    prepared = Path(data["prepared"])
    if data.get("synthetic") is not None and not prepared.exists():
        return
    if not prepared.is_dir():
        raise InputError(f"{key}: {prepared} does not exist (run `orch prepare` or `orch synth` into it, "
                         f"or fix the path)")
    try:
        PreparedDataset(prepared)
    except InputError as error:
        raise InputError(f"{key}: {error}") from None
