"""What reproducible arithmetic costs on the CPU: `train.deterministic` on against off.

    PYTHONPATH=. python benchmarks/bench_determinism.py [--rounds 3] [--steps 3]
    PYTHONPATH=. python benchmarks/bench_determinism.py --quick     # seconds: tiny sizes, checks it runs

MKL reads its reproducibility setting once per process, so each arm runs in processes of its own,
the arms alternating over `--rounds` rounds (each process warms first, then times `--steps` steps):

- `reproducible`: as orch runs (MKL_CBWR=AUTO,STRICT, torch's deterministic algorithms);
- `free`: MKL's default code paths (MKL_CBWR empty) and `train.deterministic: false`.

Two steps are timed: the coursework's decoder training step (batch 32, 14x14x2048 grid, LSTM with
soft attention at 512, vocabulary 5000: the one-function recurrence) and a fine-tuned ResNet-18
step at 128 px (batch 32, 4 captions per image, as grouped batches give them). Prints one JSON
object: medians, min/max and the ratio free/reproducible per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import environment, ratio, summary  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"reproducible": {}, "free": {"MKL_CBWR": ""}}

STEP = """
    import json, statistics, sys, time
    import torch
    import trainers  # orch's arithmetic settings, before any product (an empty MKL_CBWR keeps MKL's default)
    from trainers import determinism
    from trainers.config import ModelConfig, TrainConfig
    from trainers.loop import make_optimizer
    from trainers.losses import caption_loss
    from trainers.models import Captioner, Decoder, build_encoder
    from trainers.batching import encode_distinct

    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    found = determinism.apply(args["deterministic"], "cpu")
    torch.manual_seed(0)
    dims = dict(decoder="lstm", attention="soft", embed_dim=args["dim"], hidden_dim=args["dim"], attention_dim=args["dim"])
    if args["step"] == "decoder":
        model = Decoder(ModelConfig(**dims), args["channels"], args["vocab"]).train()
        inputs = torch.rand(args["batch"], args["pixels"], args["channels"])  # (B, P, C)
        features, rows = lambda: inputs, None
    else:
        cfg = ModelConfig(encoder="resnet18", weights="none", fine_tune=True, encoded_size=4, **dims)
        encoder = build_encoder(cfg).train()
        model = Captioner(encoder, Decoder(cfg, encoder.out_channels, args["vocab"])).train()
        images = torch.rand(args["batch"], 3, args["image_size"], args["image_size"])  # (B, 3, S, S)
        rows = torch.arange(args["batch"]) // 4  # 4 captions per image, as grouped batches hold them
        features = lambda: encode_distinct(encoder, images, rows)
    decoder = model if args["step"] == "decoder" else model.decoder
    lengths = torch.randint(args["tokens"] // 2, args["tokens"] + 1, (args["batch"],)).sort(descending=True).values
    captions = torch.randint(4, args["vocab"], (args["batch"], args["tokens"]))
    captions[:, 0] = 1
    optimizer = make_optimizer(TrainConfig(), [{"params": list(model.parameters()), "lr": 4e-4}], torch.device("cpu"))

    def step():
        loss, _ = caption_loss(decoder, features(), captions, lengths, ss_rate=0.0, ss_per="token", alpha_c=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    seconds = []
    for _ in range(args["steps"]):
        began = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - began)
    print(json.dumps({"median_s": statistics.median(seconds), "deterministic": found.describe()}))
"""


def one_process(arm: str, settings: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **ARMS[arm]}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(STEP),
                           json.dumps({**settings, "deterministic": arm == "reproducible"})],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks it runs")
    args = parser.parse_args()
    sizes = dict(batch=32, pixels=196, channels=2048, dim=512, vocab=5000, tokens=22, image_size=128)
    if args.quick:
        args.rounds, args.steps = 1, 1
        sizes.update(batch=8, pixels=16, channels=64, dim=32, vocab=200, tokens=10, image_size=32)
    result = {"environment": environment(torch.device("cpu")), "quick": args.quick, "sizes": sizes}
    for step in ("decoder", "fine_tuned"):
        seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
        said = {}
        for r in range(args.rounds):
            for arm in (list(ARMS) if r % 2 == 0 else list(reversed(ARMS))):
                measured = one_process(arm, {**sizes, "step": step, "steps": args.steps, "threads": args.threads})
                seconds[arm].append(measured["median_s"])
                said[arm] = measured["deterministic"]
        result[step] = {arm: {**summary(times), "deterministic": said[arm]} for arm, times in seconds.items()}
        result[step]["free_over_reproducible"] = ratio(seconds["reproducible"], seconds["free"])
    result["load_average_at_end"] = environment(torch.device("cpu"))["load_average"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
