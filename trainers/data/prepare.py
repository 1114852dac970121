"""`orch prepare`: a Karpathy split JSON and its images -> a prepared dataset (see prepared.py).

Everything that can be checked is checked before anything is written: the options, the JSON, every
image's presence and header. Images are then decoded, converted to RGB, resized and streamed row by
row into one `.npy` per split, so memory stays flat even for COCO's 123k images. The output is
built in a hidden folder next to OUT and renamed onto OUT at the end, so a failed or interrupted
run leaves nothing behind. An existing OUT is refused unless it was prepared from the same JSON
(sha256) with the same options, in which case it is reported up to date and left as it is (the
image files are assumed unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainers.data.karpathy import SPLITS, KarpathyImage, read_karpathy_json
from trainers.data.prepared import (MANIFEST, VOCAB, Manifest, PrepareOptions, PreparedDataset, SkippedImage,
                                    SplitCounts, read_manifest)
from trainers.data.vocab import Vocab
from trainers.errors import InputError
from trainers.staging import is_absent_or_empty, staged_folder

CHUNK = 128  # images decoded concurrently between writes; bounds memory
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class PrepareResult:
    manifest: Manifest
    out: Path
    up_to_date: bool  # OUT already held this dataset; nothing was written

    def describe(self) -> str:
        return self.manifest.describe(location=str(self.out), up_to_date=self.up_to_date)


def prepare_dataset(json_path: Path, images_dir: Path, out_dir: Path, *, min_word_freq: int = 5,
                    max_len: int = 50, image_size: int = 256, skip_bad_images: bool = False,
                    allow_shared_images: bool = False) -> PrepareResult:
    """`allow_shared_images`: accept one image file listed in two splits (a leak unless meant)."""
    json_path, images_dir, out_dir = Path(json_path), Path(images_dir), Path(out_dir)
    options = _options(min_word_freq=min_word_freq, max_len=max_len, image_size=image_size,
                       skip_bad_images=skip_bad_images)
    if not json_path.is_file():
        raise InputError(f"{json_path}: no such file (expected a Karpathy split JSON such as dataset_flickr8k.json)")
    if not images_dir.is_dir():
        raise InputError(f"--images {images_dir}: no such folder")
    source_sha256 = _sha256(json_path)
    existing = _existing_output(out_dir, source_sha256, options)
    if existing is not None:
        return PrepareResult(existing, out_dir, up_to_date=True)
    _check_writable(out_dir)

    dataset = read_karpathy_json(json_path)
    if not allow_shared_images:
        _reject_shared_images(dataset.images, images_dir, json_path)
    unreadable = _probe_images(dataset.images, images_dir)
    joined_twice = _joined_twice(unreadable, images_dir)
    if joined_twice:  # not a few bad images: the wrong folder, which --skip-bad-images must not hide
        raise InputError(joined_twice)
    if unreadable and not skip_bad_images:
        raise _bad_images_error(unreadable, images_dir)
    readable = [image for image in dataset.images if image.path not in unreadable]
    if not any(image.split == "train" for image in readable):
        raise InputError(f"{json_path}: no readable image in the train split: nothing to build a vocabulary from")

    with staged_folder(out_dir) as staging:
        kept, undecodable = _write_images(readable, images_dir, staging, options.image_size)
        if undecodable and not skip_bad_images:
            raise _bad_images_error(undecodable, images_dir)
        vocab = Vocab.build((caption for image in kept["train"] for caption in image.captions), options.min_word_freq)
        truncated = sum(_write_captions(staging / split, kept[split], vocab, options.max_len) for split in SPLITS)
        manifest = Manifest(
            dataset=dataset.name, source_json=str(json_path.resolve()), source_sha256=source_sha256,
            images_dir=str(images_dir.resolve()), options=options, vocab_size=len(vocab),
            splits={split: SplitCounts(images=len(kept[split]), captions=sum(len(i.captions) for i in kept[split]))
                    for split in SPLITS},
            captions_truncated=truncated,
            images_skipped=[SkippedImage(path=path, reason=reason)
                            for path, reason in sorted({**unreadable, **undecodable}.items())])
        (staging / VOCAB).write_text(json.dumps(vocab.to_dict()))
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))  # last: marks the folder complete
    return PrepareResult(manifest, out_dir, up_to_date=False)


def _check_writable(out_dir: Path) -> None:
    """--out's folder takes a file (tried, not guessed from permission bits: root on a read-only mount),
    before any image is read."""
    import tempfile

    parent = out_dir.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise InputError(f"--out {out_dir}: cannot write into {parent} ({error.strerror or error}) (choose a folder "
                         f"this user can write, or fix its permissions)") from None


def _reject_shared_images(images: Sequence[KarpathyImage], images_dir: Path, json_path: Path) -> None:
    """One image file (the same path, or two paths that resolve to one file through links) listed in
    two splits: every test score it touches is inflated. InputError naming both entries."""
    first: dict[Path, KarpathyImage] = {}
    shared = []
    for image in images:
        where = (images_dir / image.path).resolve()
        seen = first.setdefault(where, image)
        if seen is not image and seen.split != image.split:
            shared.append(f"images[{seen.index}] (id {seen.image_id}, {seen.split}) and images[{image.index}] "
                          f"(id {image.image_id}, {image.split}) are both {image.path}")
    if shared:
        more = f" (and {len(shared) - 1} more)" if len(shared) > 1 else ""
        raise InputError(f"{json_path}: {shared[0]}{more}: one image in two splits leaks into the scores "
                         f"(remove one entry, or pass --allow-shared-images if it is meant)")


def read_image_rgb(path: Path, size: int) -> np.ndarray:
    """uint8 (3, size, size): any image mode as RGB, stretched to a square like Show-Attend-Tell's prep."""
    with Image.open(path) as image:
        image.draft(None, (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale when still >= size
        square = to_rgb(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square).transpose(2, 0, 1)  # (3, S, S)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels of any mode (grayscale, CMYK, palette, ...); transparency composited on white."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _options(**values) -> PrepareOptions:
    try:
        return PrepareOptions(**values)
    except ValidationError as error:
        problem = error.errors()[0]
        raise InputError(f"--{str(problem['loc'][0]).replace('_', '-')}: {problem['msg']}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _existing_output(out_dir: Path, source_sha256: str, options: PrepareOptions) -> Manifest | None:
    """The manifest of an up-to-date OUT, None when OUT is absent or empty, InputError otherwise."""
    if is_absent_or_empty(out_dir):
        return None
    refuse = f"--out {out_dir} already exists and holds"
    if not (out_dir / MANIFEST).is_file():
        raise InputError(f"{refuse} something other than a prepared dataset: remove it or choose another --out")
    manifest = read_manifest(out_dir)
    if manifest.source_sha256 != source_sha256:
        raise InputError(f"{refuse} a dataset prepared from another JSON ({manifest.source_json}): "
                         "remove it or choose another --out")
    if manifest.options != options:
        changed = ", ".join(f"{key} {old!r} -> {new!r}" for key, old in manifest.options.model_dump().items()
                            if (new := getattr(options, key)) != old)
        raise InputError(f"{refuse} this dataset prepared with other options ({changed}): "
                         "remove it or choose another --out")
    prepared = PreparedDataset(out_dir)
    for split in manifest.splits:
        prepared.split(split)  # its files are all there and match the manifest
    return manifest


def _probe_images(images: Sequence[KarpathyImage], images_dir: Path) -> dict[str, str]:
    """{relative path: why} for every image that is missing or whose header cannot be read."""
    unreadable = {}
    with _progress() as progress:
        for image in progress.track(images, description="checking images"):
            path = images_dir / image.path
            if not path.is_file():
                unreadable[image.path] = "missing"
                continue
            try:
                with Image.open(path):
                    pass
            except IMAGE_ERRORS as error:
                unreadable[image.path] = f"unreadable: {error}"
    return unreadable


def _joined_twice(unreadable: dict[str, str], images_dir: Path) -> str:
    """When every image is missing because --images is the folder the JSON's `filepath` already names
    (COCO's val2014/): the one line that says so and which --images to pass; else ''."""
    missing = [path for path, why in unreadable.items() if why == "missing"]
    first = PurePosixPath(missing[0]).parts if missing else ()
    if len(missing) != len(unreadable) or len(first) < 2 or first[0] != images_dir.name:
        return ""
    if not all((images_dir.parent / path).is_file() for path in missing[:20]):
        return ""
    return (f"--images {images_dir}: the JSON's filepath already names {first[0]}/, so its images were looked for "
            f"at {images_dir / first[0]}/...: pass --images {images_dir.parent} (the folder that holds {first[0]}/)")


def _bad_images_error(bad: dict[str, str], images_dir: Path) -> InputError:
    listing = "\n  ".join(f"{path}: {reason}" for path, reason in sorted(bad.items()))
    return InputError(f"{len(bad)} images under --images {images_dir} cannot be read (fix them, or pass "
                      f"--skip-bad-images to leave them out):\n  {listing}")


def _write_images(images: Sequence[KarpathyImage], images_dir: Path, staging: Path,
                  size: int) -> tuple[dict[str, list[KarpathyImage]], dict[str, str]]:
    """Decode and store every image; return the images kept per split and {path: why} for the rest."""
    kept: dict[str, list[KarpathyImage]] = {split: [] for split in SPLITS}
    undecodable: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)  # Pillow releases the GIL while decoding
    try:
        with _progress() as progress:
            task = progress.add_task("writing images", total=len(images))
            for split in SPLITS:
                members = [image for image in images if image.split == split]
                path = staging / split / "images.npy"
                path.parent.mkdir()
                with _RowWriter(path, len(members), size) as writer:
                    for chunk in _chunks(members, CHUNK):
                        decoded = pool.map(_decode, [images_dir / image.path for image in chunk], [size] * len(chunk))
                        for image, pixels in zip(chunk, decoded):
                            if isinstance(pixels, str):
                                undecodable[image.path] = pixels
                            else:
                                writer.write(pixels)
                                kept[split].append(image)
                            progress.advance(task)
    finally:
        pool.shutdown(cancel_futures=True)
    return kept, undecodable


def _decode(path: Path, size: int) -> np.ndarray | str:
    try:
        return read_image_rgb(path, size)
    except IMAGE_ERRORS as error:
        return f"cannot decode: {error}"


class _RowWriter:
    """Appends (3, S, S) rows to a `.npy` of N rows through a plain file, so RSS stays flat.

    The file is created by `open_memmap` (so readers can memory-map it); if fewer than N rows
    arrive (undecodable images skipped), it is rewritten with just the rows written.
    """

    def __init__(self, path: Path, rows: int, size: int):
        self.path, self.rows, self.written = path, rows, 0
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 3, size, size))
        offset = header.offset
        del header
        self.file = path.open("r+b")
        self.file.seek(offset)

    def __enter__(self) -> _RowWriter:
        return self

    def write(self, pixels: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        self.written += 1

    def __exit__(self, *exc_info) -> None:
        self.file.close()
        if exc_info[0] is None and self.written < self.rows:
            self._shrink()

    def _shrink(self) -> None:
        full = np.load(self.path, mmap_mode="r")
        smaller_path = self.path.with_suffix(".shrunk.npy")
        smaller = np.lib.format.open_memmap(smaller_path, mode="w+", dtype=np.uint8,
                                            shape=(self.written, *full.shape[1:]))
        for start in range(0, self.written, CHUNK):
            smaller[start:start + CHUNK] = full[start:min(start + CHUNK, self.written)]
        smaller.flush()
        del smaller, full
        os.replace(smaller_path, self.path)


def _write_captions(folder: Path, images: Sequence[KarpathyImage], vocab: Vocab, max_len: int) -> int:
    """Write the split's caption arrays and per-image rows; return how many captions were truncated."""
    pairs = [(row, words) for row, image in enumerate(images) for words in image.captions]
    captions = np.full((len(pairs), max_len + 2), vocab.pad_id, dtype=np.int32)  # (M, L)
    lengths = np.zeros(len(pairs), dtype=np.int32)  # (M,)
    caption_image = np.zeros(len(pairs), dtype=np.int32)  # (M,)
    truncated = 0
    for index, (row, words) in enumerate(pairs):
        ids = vocab.encode(words[:max_len])
        captions[index, :len(ids)] = ids
        lengths[index] = len(ids)
        caption_image[index] = row
        truncated += len(words) > max_len
    np.save(folder / "captions.npy", captions)
    np.save(folder / "lengths.npy", lengths)
    np.save(folder / "caption_image.npy", caption_image)
    rows = [{"id": image.image_id, "filename": image.path,
             "references": [" ".join(words) for words in image.captions], "ground_truth": image.ground_truth}
            for image in images]
    (folder / "images.json").write_text(json.dumps(rows))
    return truncated


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True))
