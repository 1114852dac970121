"""Beam-search throughput: orch's batched search against the tutorial's, one image at a time.

    PYTHONPATH=. python benchmarks/bench_beam.py [--batch 64 [256 ...]] [--beam 3] [--max-len 20] [--rounds 3]
    PYTHONPATH=. python benchmarks/bench_beam.py --quick            # seconds: small sizes, checks it runs

A Show-Attend-Tell decoder at the coursework's sizes (embed/attention/hidden 512, LSTM, soft
attention, vocabulary 3000) on ResNet-101-shaped features (196 x 2048), randomly initialised, so
captions rarely end early and both arms run about max_len steps. Two arms, on the same weights
and features, alternating over `--rounds` rounds after a warm-up:

- `batched`: trainers.decoding.decode, every image's K beams as rows of one step;
- `per_image`: the tutorial's search (sgrvinod's `caption_image_beam_search` in caption.py),
  written here: one image at a time, its grid expanded to K rows that shrink as captions end.
  Two changes make it comparable: it ranks finished captions with the same β penalty, and at
  max_len the captions still running compete too (the tutorial would have none to return).

Both must give identical captions (`identical_captions`). Prints one JSON object with medians,
min/max, images/s and the speed-up per batch size. Target on 2 CPU threads: >= 12x at batch 64.

Like `orch train`, `orch evaluate` and every trial, it first keeps freed memory in the process
(trainers.memory.reuse_freed_memory): the batched search allocates tens of MB per step, which
glibc otherwise maps fresh, page by page, every step. `--glibc-default` leaves glibc as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import add_search_options, environment, interleaved, ratio, search_decoder, summary  # noqa: E402

from trainers.config import DecodeConfig  # noqa: E402
from trainers.data.vocab import END_ID, START_ID  # noqa: E402
from trainers.decoding import decode, length_penalised  # noqa: E402
from trainers.memory import reuse_freed_memory  # noqa: E402
from trainers.models.decoder import Decoder  # noqa: E402


@torch.no_grad()
def tutorial_beam_search(decoder: Decoder, features: torch.Tensor, k: int, max_len: int, beta: float) -> list[int]:
    """One image's caption, features (1, P, C), searched as the tutorial does (see the module docstring)."""
    rows = torch.zeros(k, dtype=torch.long, device=features.device)  # (k,)
    memory = decoder.prepare(features).select(rows)  # the grid expanded to k rows
    state = decoder.init_state(memory)
    words = torch.full((k,), START_ID, dtype=torch.long, device=features.device)  # (k,)
    seqs = torch.zeros(k, 0, dtype=torch.long, device=features.device)  # (k, t)
    top_scores = torch.zeros(k, device=features.device)  # (k,)
    complete: list[tuple[float, list[int]]] = []  # (penalised score, words) in the order they ended
    for t in range(max_len):
        logprobs, state, _ = decoder.step(words, state, memory)  # (k, V)
        vocab = logprobs.shape[1]
        scores = top_scores.unsqueeze(1) + logprobs  # (k, V)
        top, flat = (scores[0] if t == 0 else scores.view(-1)).topk(k)  # (k,): all beams are alike at first
        previous, following = flat // vocab, flat % vocab  # (k,)
        seqs = torch.cat([seqs[previous], following.unsqueeze(1)], dim=1)  # (k, t+1)
        ended = following == END_ID  # (k,)
        for i in ended.nonzero().flatten().tolist():
            complete.append((length_penalised(top[i], t, beta).item(), seqs[i, :t].tolist()))
        going = (~ended).nonzero().flatten()  # (k',)
        k = len(going)
        if k == 0:
            break
        seqs, top_scores, words = seqs[going], top[going], following[going]
        state, memory = decoder.reorder_state(state, previous[going]), memory.select(previous[going])
    else:  # max_len reached: the captions still running compete too
        complete += [(length_penalised(top_scores[i], max_len, beta).item(), seqs[i].tolist()) for i in range(k)]
    return max(complete, key=lambda candidate: candidate[0])[1]


def measure(decoder: Decoder, batch: int, args, device: torch.device) -> dict:
    features = torch.rand(batch, args.pixels, args.channels, device=device)  # (B, P, C)
    cfg = DecodeConfig(strategy="beam", beam_size=args.beam, max_len=args.max_len, length_penalty=args.beta,
                       block_unk=False)  # the tutorial blocks nothing
    captions: dict[str, list[list[int]]] = {}

    def batched() -> None:
        captions["batched"] = [h.tokens for h in decode(decoder, features, cfg)]

    def per_image() -> None:
        captions["per_image"] = [tutorial_beam_search(decoder, features[i:i + 1], args.beam, args.max_len, args.beta)
                                 for i in range(batch)]

    seconds = interleaved({"batched": batched, "per_image": per_image}, args.rounds, device)
    return {"batch": batch, "batched": summary(seconds["batched"], batch, "images_per_s"),
            "per_image": summary(seconds["per_image"], batch, "images_per_s"),
            "speedup": ratio(seconds["per_image"], seconds["batched"]),
            "identical_captions": captions["batched"] == captions["per_image"],
            "mean_caption_words": round(sum(map(len, captions["batched"])) / batch, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64], help="one or more batch sizes")
    parser.add_argument("--beta", type=float, default=0.0, help="the length penalty β")
    add_search_options(parser)
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's mmap/trim thresholds as they are")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.max_len, args.vocab, args.pixels, args.channels, args.dim, args.rounds = \
            [4], 6, 100, 16, 64, 32, 2
    malloc_reuse = not args.glibc_default and reuse_freed_memory()

    device, decoder = search_decoder(args)
    result = {"environment": environment(device), "quick": args.quick, "malloc_reuse": malloc_reuse,
              "beam_size": args.beam, "max_len": args.max_len, "beta": args.beta, "vocab": args.vocab,
              "grid": [args.pixels, args.channels], "dims": args.dim,
              "batches": [measure(decoder, batch, args, device) for batch in args.batch]}
    result["load_average_at_end"] = environment(device)["load_average"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
