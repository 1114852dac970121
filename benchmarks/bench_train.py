"""Training throughput: decoder steps/s at the coursework's sizes, and what the feature cache saves.

    PYTHONPATH=. python benchmarks/bench_train.py [--steps 5] [--images 200] [--uncached-batches 3]

(a) `decoder_steps_per_s`: the training step of trainers.loop (`caption_loss`, backward, gradient
    clipping, Adam) of a Show-Attend-Tell decoder at the coursework's sizes (embed / attention /
    hidden 512, LSTM, soft attention, α_c 1) on cached ResNet-101 features, i.e. random
    (B, 196, 2048) tensors, batch 32, vocabulary 5000, captions of 22 tokens.
(b) One training epoch of the recipe (`CaptionRecipe.train_epoch`) on a small synthetic dataset
    prepared at 224 px, with a frozen ResNet-101 (weights none, 14x14 grid): once on the feature
    cache and once through the encoder. The encoder path is timed over `--uncached-batches`
    batches and scaled to the epoch's batch count (every batch costs the same: 32 images through
    the CNN). Building the cache is timed too: it is paid once per (dataset, encoder) and shared by
    every later epoch and trial.

Prints one JSON object. Runs on the GPU when there is one (the recipe's `train.device: auto`), else
on the CPU, in about 3-5 minutes on 2 idle CPU cores; the machine's load average is included
because CPU timings on a shared machine vary a lot with it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from trainers.config import ModelConfig, TrainerConfig
from trainers.data.prepare import prepare_dataset
from trainers.data.synthetic import write_synthetic_dataset
from trainers.loop import CaptionRecipe, caption_loss, pick_device
from trainers.models.decoder import Decoder

BATCH, PIXELS, CHANNELS, CAPTION_TOKENS = 32, 196, 2048, 22
CONFIG_FOR_THE_DIMS = dict(decoder="lstm", attention="soft", embed_dim=512, attention_dim=512, hidden_dim=512,
                           dropout=0.5)


def decoder_steps_per_s(steps: int, vocab: int, seed: int, device: torch.device) -> float:
    """Training steps/s of the decoder alone on random (B, 196, 2048) features."""
    torch.manual_seed(seed)
    decoder = Decoder(ModelConfig(**CONFIG_FOR_THE_DIMS), feature_dim=CHANNELS, vocab_size=vocab).to(device).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=4e-4)
    features = torch.rand(BATCH, PIXELS, CHANNELS, device=device)  # (B, P, C)
    captions = torch.randint(4, vocab, (BATCH, CAPTION_TOKENS), device=device)  # (B, T)
    captions[:, 0], captions[:, -1] = 1, 2  # <start> ... <end>
    lengths = torch.full((BATCH,), CAPTION_TOKENS, device=device)  # (B,)

    def step() -> None:
        loss, _ = caption_loss(decoder, features, captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(decoder.parameters(), 5.0)
        optimizer.step()

    step()  # warm-up
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps / (time.perf_counter() - started)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_times(workdir: Path, images: int, uncached_batches: int, seed: int) -> dict:
    """Seconds for one training epoch on the feature cache and (scaled) through the frozen encoder."""
    raw = workdir / "raw"
    write_synthetic_dataset(raw, n=images, size=224, seed=seed)
    prepared = workdir / "prepared"
    prepare_dataset(raw / "dataset.json", raw, prepared, min_word_freq=1, max_len=50, image_size=224)

    def recipe(feature_cache: bool, max_batches: int | None) -> CaptionRecipe:
        config = TrainerConfig.model_validate({
            "data": {"prepared": str(prepared), "image_size": 224, "num_workers": 0,
                     "feature_cache": feature_cache, "cache_dir": str(workdir / "features")},
            "model": {"encoder": "resnet101", "weights": "none", "fine_tune": False, "encoded_size": 14,
                      **CONFIG_FOR_THE_DIMS},
            "train": {"epochs": 1, "batch_size": BATCH, "seed": seed, "max_batches_per_epoch": max_batches},
        })
        return CaptionRecipe(config, workdir / f"run-{feature_cache}")

    cached = recipe(feature_cache=True, max_batches=None)
    started = time.perf_counter()
    cached.setup()  # builds the cache: every split through the encoder once
    cache_build_s = time.perf_counter() - started
    started = time.perf_counter()
    cached.train_epoch(1)
    cached_epoch_s = time.perf_counter() - started

    direct = recipe(feature_cache=False, max_batches=uncached_batches)
    direct.setup()
    started = time.perf_counter()
    direct.train_epoch(1)
    direct_batch_s = (time.perf_counter() - started) / uncached_batches

    train_captions = len(cached.dataset.split("train").caption_image)
    batches = -(-train_captions // BATCH)
    encoder_epoch_s = direct_batch_s * batches
    return {
        "images": images, "train_images": len(cached.dataset.split("train")), "train_captions": train_captions,
        "batches_per_epoch": batches, "cache_build_s": round(cache_build_s, 1),
        "cached_epoch_s": round(cached_epoch_s, 1), "encoder_batches_timed": uncached_batches,
        "encoder_epoch_s": round(encoder_epoch_s, 1),
        "encoder_over_cached": round(encoder_epoch_s / cached_epoch_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="decoder training steps timed for (a)")
    parser.add_argument("--vocab", type=int, default=5000, help="within Flickr8k/COCO's 2000-10000")
    parser.add_argument("--images", type=int, default=200, help="synthetic images for (b), 80%% train")
    parser.add_argument("--uncached-batches", type=int, default=3, help="batches timed through the encoder for (b)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = pick_device("auto")
    load_before = os.getloadavg()[0]
    steps_per_s = decoder_steps_per_s(args.steps, args.vocab, args.seed, device)
    with tempfile.TemporaryDirectory(prefix="bench_train.") as folder:
        epochs = epoch_times(Path(folder), args.images, args.uncached_batches, args.seed)
    print(json.dumps({
        "device": device.type, "threads": torch.get_num_threads(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # at start, at end
        "decoder": {"batch": BATCH, "features": [PIXELS, CHANNELS], "vocab": args.vocab,
                    "caption_tokens": CAPTION_TOKENS, "dims": 512, "steps_timed": args.steps,
                    "steps_per_s": round(steps_per_s, 3), "captions_per_s": round(steps_per_s * BATCH, 1)},
        "epoch": epochs,
    }))


if __name__ == "__main__":
    main()
