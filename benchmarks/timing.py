"""How the benchmarks time things, in one place: arms interleaved over rounds, each warmed first,
medians and spread reported with the threads, the load average and the device.

A shared CPU's speed drifts with what else runs; timing arm A fully, then arm B, would put that
drift into their ratio. Interleaving puts it into the spread instead, which is reported.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What makes a timer honest on `device`: CUDA kernels run asynchronously until synchronised."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved(arms: dict[str, Callable[[], object]], rounds: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each arm: `warmup` untimed calls per arm, then `rounds` rounds that
    call every arm once, the order rotating each round so no arm always runs first."""
    sync = synchronizer(device)
    for run in arms.values():
        for _ in range(warmup):
            run()
    sync()
    names = list(arms)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            started = time.perf_counter()
            arms[name]()
            sync()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def summary(seconds: list[float], work: float = 1.0, unit: str = "per_s") -> dict:
    """The median and spread (min, max) of the times, and `work` per second at the median."""
    median = statistics.median(seconds)
    return {"rounds": len(seconds), "median_s": round(median, 4), "min_s": round(min(seconds), 4),
            "max_s": round(max(seconds), 4), unit: round(work / median, 3)}


def ratio(slow: list[float], fast: list[float]) -> dict:
    """The speed-up at the medians, and its range over the rounds (round by round)."""
    per_round = [s / f for s, f in zip(slow, fast)]
    return {"median": round(statistics.median(slow) / statistics.median(fast), 2),
            "min": round(min(per_round), 2), "max": round(max(per_round), 2)}


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate, measured: the best of `repeats` size x size sgemms."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    sync = synchronizer(device)
    a @ b  # warm
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def environment(device: torch.device) -> dict:
    """What the figures depend on besides the code: device, threads, load."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": device.type, "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def add_search_options(parser) -> None:
    """The options bench_beam and bench_eval_variants share: the search and the decoder it runs."""
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=20, help="as docs/PERFORMANCE.md states it")
    parser.add_argument("--vocab", type=int, default=3000, help="about Flickr8k's at min_word_freq 5")
    parser.add_argument("--pixels", type=int, default=196)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and rounds: checks that it runs")
    parser.add_argument("--seed", type=int, default=0)


def search_decoder(args):
    """(device, a seeded LSTM soft-attention decoder in eval mode) at the sizes `args` name."""
    from trainers.config import ModelConfig
    from trainers.devices import pick_device
    from trainers.models import Decoder

    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(decoder="lstm", attention="soft", embed_dim=args.dim, attention_dim=args.dim, hidden_dim=args.dim)
    return device, Decoder(cfg, feature_dim=args.channels, vocab_size=args.vocab).to(device).eval()
