"""The encoder feature cache: a frozen encoder's grid features, computed once and reused.

When the encoder is frozen, every epoch of every trial that shares (dataset, encoder, weights,
image size, encoded size) would push the same images through the same CNN. Instead the features
are computed once per split, stored as float16 `.npy` files that later and concurrent runs
memory-map. A file lock makes concurrent trials wait for one writer; a cache is only used once its
`complete.json` marker exists, which is written last, so a half-written cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from trainers.checkpoint import state_digest
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
    """On a GPU: pinned host batches copied without blocking, channels_last images, autocast."""
    n = images.shape[0]

    def encode(rows: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.array(rows))  # (b, 3, S, S) uint8
        if device.type == "cuda":
            batch = batch.pin_memory()
        batch = resize_batch(batch.to(device, non_blocking=True), image_size)  # (b, 3, H, W)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            return encoder(batch)  # (b, P, C)

    probe = encode(images[:1])  # (1, P, C)
    staging = out_path.with_suffix(".npy.partial")
    out = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float16, shape=(n, *probe.shape[1:]))
    try:
        for start in range(0, n, batch_size):
            features = encode(images[start:start + batch_size]).half()  # (b, P, C)
            if not torch.isfinite(features).all():
                raise InputError(f"the encoder's features overflow float16 (|x| > 65504) on images {start}-"
                                 f"{start + features.shape[0] - 1} of {out_path.stem}: they cannot be cached; set "
                                 f"data.feature_cache: false, or use trained weights")
            out[start:start + features.shape[0]] = features.cpu().numpy()
        out.flush()
    except BaseException:
        staging.unlink()  # the memmap stays valid on its unlinked file until it is dropped
        raise
    finally:
        del out
    os.replace(staging, out_path)


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
