"""Collect what benchmarks/gpu.sh measured into one JSON and the rows for docs/PERFORMANCE.md.

    python benchmarks/gpu_report.py OUT_FOLDER [--dry-run 0|1] [--seconds N]

Reads OUT_FOLDER/steps.tsv (each step's exit status and seconds) and each step's JSON, names the
device (nvidia-smi), writes OUT_FOLDER/gpu.json and OUT_FOLDER/performance_rows.md, prints the rows,
and exits 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BUDGET_S = 480  # the script's target: under 8 minutes from a fresh checkout
# The coursework grid, projected: Flickr8k's 6000 training images x 5 captions, 20 epochs, 36 trainings.
COURSEWORK_CAPTIONS = 36 * 20 * 6000 * 5


def device_name() -> str:
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "no GPU (nvidia-smi not found)"
    return "; ".join(line.strip() for line in found.stdout.splitlines() if line.strip()) or "no GPU"


def read_steps(out: Path) -> dict[str, dict]:
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, seconds = line.split("\t")
        try:
            result = json.loads((out / f"{name}.json").read_text())
        except (OSError, ValueError):
            result = None
        steps[name] = {"status": int(status), "seconds": float(seconds), "result": result}
    return steps


def rows(steps: dict[str, dict], device: str, dry: bool) -> list[str]:
    """Markdown rows: what, figure, target."""
    def result(name):
        return steps.get(name, {}).get("result") or {}

    table = []
    train = result("bench_train").get("decoder_step", {})
    for amp in ("fp32", "bf16"):
        if f"orch-{amp}" in train:
            table.append((f"decoder training, captions/s per trial ({amp}; tutorial's formulation: "
                          f"{train[f'tutorial-{amp}']['captions_per_s']})", train[f"orch-{amp}"]["captions_per_s"],
                          ">= 5,000 (bf16)"))
            table.append((f"orch / tutorial formulation ({amp}, median [min-max])",
                          _ratio(train[f"orch_over_tutorial-{amp}"]), ">= 6x"))
        if f"compiled_over_eager-{amp}" in train:
            table.append((f"train.compile: compiled / eager decoder step ({amp})",
                          _ratio(train[f"compiled_over_eager-{amp}"]), "> 1 to be worth it"))
    if train:
        table.append(("fraction of measured matmul peak (fp32)", train["orch_fraction_of_peak"], ">= 50 % (CPU)"))
    epoch = result("bench_train").get("epoch", {})
    for amp in ("fp32", "bf16"):
        if f"cache_build-{amp}" in epoch:
            table.append((f"building the {epoch['encoder']} feature cache at {epoch['image_size']} px ({amp}), "
                          "images/s",
                          epoch[f"cache_build-{amp}"]["images_per_s"], ">= 1,500"))
        if f"encoder_over_cache-{amp}" in epoch:
            table.append((f"an epoch through the frozen {epoch['encoder']} / on the cache ({amp})",
                          _ratio(epoch[f"encoder_over_cache-{amp}"]), ""))
    if "fp32_over_bf16-cache" in epoch:
        table.append(("bf16 speed-up, epoch on the cache", _ratio(epoch["fp32_over_bf16-cache"]), ""))
        table.append(("bf16 speed-up, epoch through the encoder", _ratio(epoch["fp32_over_bf16-encoder"]), ""))
    for measured in result("bench_beam").get("batches", []):
        table.append((f"beam search, batch {measured['batch']}: images/s batched (per image: "
                      f"{measured['per_image']['images_per_s']}; identical captions: {measured['identical_captions']})",
                      measured["batched"]["images_per_s"], ""))
        table.append((f"beam search, batch {measured['batch']}: batched / per image", _ratio(measured["speedup"]),
                      ">= 12x (CPU, batch 64)"))
    variants = result("bench_eval_variants")
    if variants:
        table.append(("evaluating 4 β variants / 1", _ratio(variants["four_over_one"]), "<= 1.15"))
    packed, one_by_one = result("orch_run_packed"), result("orch_run_one_by_one")
    if packed and one_by_one:
        speedup = one_by_one["wall_s"] / packed["wall_s"]
        table.append((f"`orch run` of 4 trials: one after another {one_by_one['wall_s']:.0f} s, packed 4 to the GPU "
                      f"{packed['wall_s']:.0f} s: speed-up", f"{speedup:.2f}x", ">= 3x"))
        if "orch-bf16" in train:
            minutes = COURSEWORK_CAPTIONS / (train["orch-bf16"]["captions_per_s"] * speedup) / 60
            table.append(("coursework grid (36 trainings x 20 epochs of Flickr8k), training alone, projected from "
                          "the two rows above, minutes on this GPU", f"{minutes:.0f}", "<= 30"))
    header = [f"Device: {device}{' (dry run: tiny sizes on the CPU, not figures)' if dry else ''}", "",
              "| what | figure | target |", "|---|---|---|"]
    return header + [f"| {what} | {figure} | {target} |" for what, figure, target in table]


def _ratio(r: dict) -> str:
    return f"{r['median']}x [{r['min']}-{r['max']}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0, help="the whole script's wall time")
    args = parser.parse_args()

    steps = read_steps(args.out)
    device = device_name()
    lines = rows(steps, device, bool(args.dry_run))
    failed = [name for name, step in steps.items() if step["status"] != 0 or step["result"] is None]
    report = {"device": device, "dry_run": bool(args.dry_run), "total_s": args.seconds, "budget_s": BUDGET_S,
              "within_budget": args.seconds <= BUDGET_S, "failed_steps": failed, "steps": steps}
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    (args.out / "performance_rows.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n{args.seconds:.0f} s in all (budget {BUDGET_S} s); "
          f"{'failed: ' + ', '.join(failed) if failed else 'every step passed'}; {args.out / 'gpu.json'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
