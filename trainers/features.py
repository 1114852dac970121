"""The encoder feature cache: a frozen encoder's grid features, computed once and reused.

When the encoder is frozen, every epoch of every trial that shares (dataset, encoder, weights,
image size, encoded size) would push the same images through the same CNN. Instead the features
are computed once per split, stored as float16 `.npy` files that later and concurrent runs
memory-map. A file lock makes concurrent trials wait for one writer; a cache is only used once its
`complete.json` marker exists, which is written last, so a half-written cache is never read.

A run reads a split's cache through a `FeatureStore`, which holds it where a batch is cheapest to
reach: on a GPU, the whole split on the GPU when it fits a share of its free memory, else in pinned
host memory; on a CPU, memory-mapped, rows read by the DataLoader as images are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from filelock import FileLock

from trainers.checkpoint import state_digest
from trainers.data.loaders import LazyArray, RowsOnly
from trainers.data.prepared import PreparedDataset
from trainers.errors import InputError

COMPLETE = "complete.json"


def encoder_digest(encoder: torch.nn.Module) -> str:
    """A hash of the encoder's weights: random (`weights: none`) encoders differ per seed."""
    return state_digest(encoder.state_dict())[:16]


def cache_key(dataset: PreparedDataset, encoder: torch.nn.Module, encoder_name: str,
              image_size: int, encoded_size: int, autocast: Optional[torch.dtype] = None) -> str:
    source = dataset.manifest["source_sha256"] + json.dumps(dataset.manifest["options"], sort_keys=True)
    parts = [source, encoder_name, encoder_digest(encoder), str(image_size), str(encoded_size)]
    if autocast is not None:  # features computed in bf16/fp16 differ from float32 ones
        parts.append(str(autocast))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def resize_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (B,3,S,S) -> float [0,1] (B,3,image_size,image_size); resized only when sizes differ."""
    images = images.float().div_(255.0)  # (B, 3, S, S)
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               antialias=True, align_corners=False)
    return images


@torch.no_grad()
def _encode_split(encoder, images: np.ndarray, out_path: Path, image_size: int, device: torch.device,
                  batch_size: int, autocast: Optional[torch.dtype]) -> None:
    """Encodes batch after batch while the previous one is written: each batch's features are copied
    back into pinned memory without blocking, and the host writes batch i while the GPU encodes
    batch i + 1. Whether float16 held them is read once, at the end."""
    n = images.shape[0]
    pinned = device.type == "cuda"

    def encode(rows: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.array(rows))  # (b, 3, S, S) uint8
        if pinned:
            batch = batch.pin_memory()
        batch = resize_batch(batch.to(device, non_blocking=True), image_size)  # (b, 3, H, W)
        if pinned:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            return encoder(batch).half()  # (b, P, C)

    probe = encode(images[:1])  # (1, P, C)
    staging = out_path.with_suffix(".npy.partial")
    out = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float16, shape=(n, *probe.shape[1:]))
    finite = []  # per batch, on the device: whether float16 held every feature
    waiting = None  # (start, host copy, its copy's event): the batch to write once the next is queued
    try:
        for start in range(0, n, batch_size):
            features = encode(images[start:start + batch_size])  # (b, P, C) float16, on the device
            finite.append(torch.isfinite(features).all())
            host = torch.empty(features.shape, dtype=features.dtype, pin_memory=pinned)
            host.copy_(features, non_blocking=pinned)
            copied = torch.cuda.Event() if pinned else None
            if copied is not None:
                copied.record()
            if waiting is not None:
                _write(out, *waiting)
            waiting = (start, host, copied)
        if waiting is not None:
            _write(out, *waiting)
        overflowed = (~torch.stack(finite)).nonzero().flatten().tolist()  # the one read of the device
        if overflowed:
            first = overflowed[0] * batch_size
            raise InputError(f"the encoder's features overflow float16 (|x| > 65504) on images {first}-"
                             f"{min(first + batch_size, n) - 1} of {out_path.stem}: they cannot be cached; set "
                             f"data.feature_cache: false, or use trained weights")
        out.flush()
    except BaseException:
        staging.unlink()  # the memmap stays valid on its unlinked file until it is dropped
        raise
    finally:
        del out
    os.replace(staging, out_path)


def _write(out: np.ndarray, start: int, host: torch.Tensor, copied: Optional["torch.cuda.Event"]) -> None:
    """Rows start.. of the memory-mapped cache from a batch copied back to the host."""
    if copied is not None:
        copied.synchronize()
    out[start:start + host.shape[0]] = host.numpy()


def cached_features(dataset: PreparedDataset, encoder: torch.nn.Module, *, encoder_name: str,
                    image_size: int, encoded_size: int, cache_dir: Path, device: torch.device,
                    splits=("train", "val", "test"), batch_size: int = 64,
                    autocast: Optional[torch.dtype] = None) -> dict[str, Path]:
    """Per split, the `.npy` file of float16 features (N, P, C), computed if no run has yet, under
    `autocast` (the training's `train.amp`) when given."""
    folder = Path(cache_dir) / cache_key(dataset, encoder, encoder_name, image_size, encoded_size, autocast)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in splits if len(dataset.split(s)) > 0]
    with FileLock(str(folder) + ".lock"):
        marker = folder / COMPLETE
        done = json.loads(marker.read_text())["splits"] if marker.exists() else []
        missing = [s for s in wanted if s not in done]
        if missing:
            was_training = encoder.training
            encoder.eval()
            for split in missing:
                _encode_split(encoder, dataset.split(split).images, folder / f"{split}.npy", image_size,
                              device, batch_size, autocast)
            encoder.train(was_training)
            staging = marker.with_suffix(".partial")
            staging.write_text(json.dumps({"splits": sorted(set(done) | set(missing)),
                                           "encoder": encoder_name, "image_size": image_size}))
            os.replace(staging, marker)
    return {s: folder / f"{s}.npy" for s in wanted}


GPU_SHARE = 0.25  # a split's features stay on the GPU when they take at most this share of its free memory
HOST_SHARE = 0.25  # else in pinned host memory when they take at most this share of the available memory


def placement(nbytes: int, device: torch.device, gpu_free: int, host_available: int) -> str:
    """Where a split's cached features are held: "device" (the GPU), "host" (pinned memory) or "mapped"
    (the memory-mapped file, read row by row by the DataLoader, as on a CPU)."""
    if device.type != "cuda":
        return "mapped"
    if nbytes <= GPU_SHARE * gpu_free:
        return "device"
    return "host" if nbytes <= HOST_SHARE * host_available else "mapped"


class FeatureStore:
    """One split's cached features (N, P, C) float16, and how a batch of them reaches the device.

    "device": a batch is one gather on the GPU; nothing crosses the bus. "host": one gather into a
    pinned buffer and one copy. "mapped": the DataLoader reads the rows and collates them, as it does
    images. Features stay float16 until the batch is on the device (trainers.loop casts them once).
    """

    def __init__(self, path: Path, device: torch.device, where: Optional[str] = None):
        self.path, self.device = Path(path), device
        array = np.load(self.path, mmap_mode="r")
        if where is None:
            gpu_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
            where = placement(array.nbytes, device, gpu_free, psutil.virtual_memory().available)
        self.where = where
        self.held: Optional[torch.Tensor] = None
        if where != "mapped":
            self.held = _load(array, device if where == "device" else torch.device("cpu"),
                              pinned=where == "host" and torch.cuda.is_available())

    def loader_source(self):
        """What the DataLoader reads per row: the features themselves, or nothing (the rows suffice)."""
        return LazyArray(self.path) if self.held is None else RowsOnly(len(self))

    def __len__(self) -> int:
        return self.held.shape[0] if self.held is not None else int(np.load(self.path, mmap_mode="r").shape[0])

    def batch(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Features (B, P, C) float16 on the device for a loader batch: its inputs (the collated rows when
        mapped) and rows (B,) on the host."""
        if self.where == "mapped":
            return inputs.to(self.device, non_blocking=True)
        if self.where == "device":  # held where the batch is used
            return self.held[rows.to(self.held.device, non_blocking=True)]
        staged = torch.empty((len(rows), *self.held.shape[1:]), dtype=self.held.dtype,
                             pin_memory=self.held.is_pinned())  # (B, P, C)
        torch.index_select(self.held, 0, rows, out=staged)
        return staged.to(self.device, non_blocking=True)


def _load(array: np.ndarray, device: torch.device, pinned: bool, chunk: int = 256) -> torch.Tensor:
    """A memory-mapped (N, ...) array loaded whole onto `device` (or pinned host memory), a chunk of
    rows at a time, so no second host copy of the whole split is ever made."""
    held = torch.empty(array.shape, dtype=torch.float16, device=device, pin_memory=pinned)
    for start in range(0, array.shape[0], chunk):
        held[start:start + chunk].copy_(torch.from_numpy(np.array(array[start:start + chunk])))
    return held
