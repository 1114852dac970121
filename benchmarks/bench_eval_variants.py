"""What a β sweep costs at evaluation: 4 length penalties against 1, through the code training uses.

    PYTHONPATH=. python benchmarks/bench_eval_variants.py [--images 128] [--batch 64] [--rounds 3]
    PYTHONPATH=. python benchmarks/bench_eval_variants.py --quick    # seconds: small sizes, checks it runs

trainers.evaluation.caption_batches captions a split for every decode variant of a trial, each
epoch on val and once on test. β enters only the final pick among a search's finished captions,
so 4 variants that differ only in β should cost about one search. Two arms on the same decoder
(the coursework's sizes, randomly initialised) and the same batches of ResNet-101-shaped features,
alternating over `--rounds` rounds after a warm-up:

- `one`: a single variant (beam 3, β 0);
- `four`: β 0, 0.5, 1.0 and 1.5 with the same beam and max_len.

Prints one JSON object: medians, min/max and the ratio four/one (target <= 1.15), and whether
each β's captions in `four` equal a search run for that β alone.
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
from trainers.data.vocab import SPECIALS, Vocab  # noqa: E402
from trainers.evaluation import DecodeVariant, caption_batches  # noqa: E402
from trainers.memory import reuse_freed_memory  # noqa: E402

BETAS = (0.0, 0.5, 1.0, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    add_search_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.images, args.batch, args.max_len, args.vocab, args.pixels, args.channels, args.dim, args.rounds = \
            8, 4, 6, 100, 16, 64, 32, 2
    reuse_freed_memory()

    device, decoder = search_decoder(args)
    vocab = Vocab([*SPECIALS, *(f"w{i}" for i in range(args.vocab - len(SPECIALS)))])
    features = torch.rand(args.images, args.pixels, args.channels)  # (N, P, C), on the host as a loader gives them
    batches = [(features[i:i + args.batch], torch.arange(i, min(i + args.batch, args.images)))
               for i in range(0, args.images, args.batch)]
    variants = [DecodeVariant(f"d{i + 1:02d}", DecodeConfig(beam_size=args.beam, max_len=args.max_len,
                                                            length_penalty=beta)) for i, beta in enumerate(BETAS)]
    captions = {}

    def run(name: str, chosen: list[DecodeVariant]):
        def arm() -> None:
            captions[name] = caption_batches(batches, lambda inputs: inputs.to(device), decoder, vocab, chosen)
        return arm

    seconds = interleaved({"one": run("one", variants[:1]), "four": run("four", variants)}, args.rounds, device)
    alone = {v.id: caption_batches(batches, lambda inputs: inputs.to(device), decoder, vocab, [v])[v.id]
             for v in variants}
    print(json.dumps({
        "environment": environment(device), "quick": args.quick,
        "images": args.images, "batch": args.batch, "beam_size": args.beam, "max_len": args.max_len,
        "vocab": args.vocab, "grid": [args.pixels, args.channels], "dims": args.dim, "betas": BETAS,
        "one": summary(seconds["one"], args.images, "images_per_s"),
        "four": summary(seconds["four"], args.images, "images_per_s"),
        "four_over_one": ratio(seconds["four"], seconds["one"]),
        "each_beta_as_alone": all(captions["four"][vid] == alone[vid] for vid in alone),
        "load_average_at_end": environment(device)["load_average"],
    }))


if __name__ == "__main__":
    main()
