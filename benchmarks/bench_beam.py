"""Beam-search throughput on CPU: the whole batch at once vs one image at a time.

    PYTHONPATH=. python benchmarks/bench_beam.py [--batch 64] [--beam 3] [--max-len 30] [--glibc-default]

A Show-Attend-Tell decoder at the coursework's sizes (embed/attention/hidden 512, LSTM, soft
attention) on ResNet-101-shaped features (196 x 2048), randomly initialised, so no caption ends
early and both ways run max_len steps. Prints one JSON object: images/s both ways, whether both
ways give identical captions, and the speed-up.

Like `orch train`, `orch evaluate` and every trial, it first keeps freed memory in the process
(trainers.memory.reuse_freed_memory): the batched search allocates tens of MB per step (the additive
attention's (B, K, P, A) energies), which glibc otherwise maps fresh, page by page, every step.
`--glibc-default` leaves glibc's allocator as it is, to measure what that costs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from trainers.config import DecodeConfig, ModelConfig
from trainers.decoding import decode
from trainers.memory import reuse_freed_memory
from trainers.models.decoder import Decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=3000, help="about Flickr8k's at min_word_freq 5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's mmap/trim thresholds as they are")
    args = parser.parse_args()
    malloc_reuse = not args.glibc_default and reuse_freed_memory()

    torch.manual_seed(args.seed)
    model_cfg = ModelConfig(decoder="lstm", attention="soft", embed_dim=512, attention_dim=512, hidden_dim=512)
    decoder = Decoder(model_cfg, feature_dim=2048, vocab_size=args.vocab).eval()
    features = torch.rand(args.batch, 196, 2048)  # (B, P, C)
    cfg = DecodeConfig(strategy="beam", beam_size=args.beam, max_len=args.max_len)
    decode(decoder, features[:1], cfg)  # warm-up

    started = time.perf_counter()
    batched = decode(decoder, features, cfg)
    batched_s = time.perf_counter() - started

    started = time.perf_counter()
    one_by_one = [decode(decoder, features[i:i + 1], cfg)[0] for i in range(args.batch)]
    one_by_one_s = time.perf_counter() - started

    print(json.dumps({
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "malloc_reuse": malloc_reuse,
        "batch": args.batch,
        "beam_size": args.beam,
        "max_len": args.max_len,
        "vocab": args.vocab,
        "mean_caption_tokens": sum(len(h.tokens) for h in batched) / args.batch,
        "batched_images_per_s": round(args.batch / batched_s, 2),
        "one_at_a_time_images_per_s": round(args.batch / one_by_one_s, 2),
        "identical_captions": [h.tokens for h in batched] == [h.tokens for h in one_by_one],
        "speedup": round(one_by_one_s / batched_s, 2),
    }))


if __name__ == "__main__":
    main()
