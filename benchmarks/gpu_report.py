"""Collect what benchmarks/gpu.sh measured into one JSON and the rows for docs/PERFORMANCE.md.

    python benchmarks/gpu_report.py OUT_FOLDER [--dry-run 0|1] [--seconds N]

Reads OUT_FOLDER/steps.tsv (each step's status: its exit status or `skipped`, seconds, expected
seconds, limit and a note), OUT_FOLDER/env.json (the device, driver and torch gpu_check.py found)
and each step's JSON; writes OUT_FOLDER/gpu.json and OUT_FOLDER/performance_rows.md, prints the rows
and the steps, and exits 1 when a step failed (a skipped step, with its reason, is not a failure).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BUDGET_S = 480  # the script's target: under 8 minutes on an H100, its own start included
# The coursework grid: 36 trainings x 20 epochs x Flickr8k's 6000 training images x 5 captions.
TRAININGS, EPOCHS, CAPTIONS_PER_EPOCH = 36, 20, 6000 * 5
COURSEWORK_CAPTIONS = TRAININGS * EPOCHS * CAPTIONS_PER_EPOCH
TARGETS = {"captions": ">= 5,000 (bf16, H100)", "cache": ">= 1,500 (H100)", "packing": ">= 3x (H100)",
           "grid": "<= 30 (H100)", "launches": "<= 300"}


def read_steps(out: Path) -> dict[str, dict]:
    """Each step of steps.tsv with its JSON (None when it wrote none that parses)."""
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        if not line.strip():
            continue
        name, status, seconds, expected, limit, note = (line.split("\t") + [""] * 6)[:6]
        skipped = status == "skipped"
        try:
            result = None if skipped else json.loads((out / f"{name}.json").read_text())
        except (OSError, ValueError):
            result = None
        code = None if skipped else int(status)
        state = ("skipped" if skipped else "timed out" if code in (124, 137) else
                 "passed" if code == 0 and result is not None else "failed")
        if state == "failed" and code == 0:
            note = note or "exit 0 but no JSON on its stdout"
        if isinstance(result, dict) and result.get("summary"):  # gpu_pytest.py's verdict in a line
            note = result["summary"]
        steps[name] = {"status": state, "exit": code, "seconds": float(seconds or 0), "expected_s": float(expected or 0),
                       "limit_s": float(limit or 0), "note": note, "result": result}
    return steps


def rows(steps: dict[str, dict], env: dict, dry: bool) -> list[tuple[str, object, str]]:
    """(what, figure, target) rows, from the steps that passed."""
    def result(name):
        step = steps.get(name, {})
        return (step.get("result") or {}) if step.get("status") == "passed" else {}

    table = []
    train = result("bench_train").get("decoder_step", {})
    default_amp = "bf16" if "orch-bf16" in train else "fp32"
    for amp in ("fp32", "bf16"):
        if f"orch-{amp}" in train:
            table.append((f"decoder training, captions/s per trial, eager ({amp}; tutorial's formulation: "
                          f"{train[f'tutorial-{amp}']['captions_per_s']})", train[f"orch-{amp}"]["captions_per_s"],
                          TARGETS["captions"] if amp == "bf16" else ""))
            table.append((f"orch / tutorial formulation ({amp}, median [min-max])",
                          _ratio(train[f"orch_over_tutorial-{amp}"]), ">= 6x"))
        if f"orch_compiled-{amp}" in train:
            table.append((f"decoder training, captions/s per trial, compiled (train.compile, {amp})",
                          train[f"orch_compiled-{amp}"]["captions_per_s"], TARGETS["captions"] if amp == "bf16" else ""))
        if f"compiled_over_eager-{amp}" in train:
            table.append((f"train.compile: compiled / eager decoder step ({amp})",
                          _ratio(train[f"compiled_over_eager-{amp}"]), "> 1 to be worth it"))
    if train:
        table.append(("fraction of measured matmul peak (fp32)", train["orch_fraction_of_peak"], ">= 50 % (CPU)"))
    table += launch_rows(train.get("launches_per_batch", {}))
    epoch = result("bench_train").get("epoch", {})
    for amp in ("fp32", "bf16"):
        if f"cache_build-{amp}" in epoch:
            table.append((f"building the {epoch['encoder']} feature cache at {epoch['image_size']} px ({amp}), "
                          f"images/s ({epoch['images']} images)",
                          epoch[f"cache_build-{amp}"]["images_per_s"], TARGETS["cache"]))
        if f"cache-{amp}" in epoch:
            table.append((f"an epoch of the recipe on the cache ({amp}): captions/s ({epoch['batches_timed']} "
                          f"batches a round; the epoch projected at {epoch[f'cache-{amp}']['epoch_s_median']} s)",
                          epoch[f"cache-{amp}"]["captions_per_s"], ""))
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

    packing_speedup, packing_source = None, ""
    packing = result("bench_trial_packing")
    if packing:
        n = packing["processes"]
        one, packed = packing["one_by_one"], packing["packed"]
        table.append((f"{n} trainings sharing the GPU / one after another, their training ({packing['batches_per_process']} "
                      f"batches each; {packing['rounds_note']})", _ratio(packing["training_speedup"]),
                      TARGETS["packing"]))
        table.append((f"the same, wall time with each process's start and setup: one after another "
                      f"{_seconds(one['wall_s'])}, sharing {_seconds(packed['wall_s'])}", _ratio(packing["speedup"]), ""))
        per = packing["captions_per_s_per_process"]
        table.append((f"training captions/s per process, sharing the GPU {n} ways (alone: {per['one_by_one']})",
                      per["packed"], ""))
        memory = packing["peak_gpu_memory_mib"]
        if memory["packed"]:
            table.append(("GPU memory a training process peaked at (torch.cuda.max_memory_allocated), MiB",
                          memory["packed"], ""))
        table.append((f"building the feature cache for the packing runs, images/s (its process's start included; "
                       f"{packing['cache_build']['images']} images)", packing["cache_build"]["images_per_s"], ""))
        packing_speedup, packing_source = packing["training_speedup"]["median"], "bench_trial_packing's training"
    packed, one_by_one = result("orch_run_packed"), result("orch_run_one_by_one")
    if packed and one_by_one:
        speedup = one_by_one["wall_s"] / packed["wall_s"]
        table.append((f"`orch run` of 4 trials: one after another {one_by_one['wall_s']:.0f} s, packed 4 to the GPU "
                      f"{packed['wall_s']:.0f} s: speed-up", f"{speedup:.2f}x", TARGETS["packing"]))
        if packing_speedup is None:
            packing_speedup, packing_source = speedup, "`orch run`"
    for arm, label in ((f"orch-{default_amp}", "eager"), (f"orch_compiled-{default_amp}", "compiled")):
        if arm in train:
            rate = train[arm]["captions_per_s"] * (packing_speedup or 1.0)
            minutes = COURSEWORK_CAPTIONS / rate / 60
            packing_said = (f"x {packing_speedup:.2f} packing ({packing_source})" if packing_speedup
                            else "no packing measured")
            table.append((f"coursework grid ({TRAININGS} trainings x {EPOCHS} epochs x {CAPTIONS_PER_EPOCH:,} captions), "
                          f"training alone, projected: {label} {default_amp} decoder step {packing_said}, minutes",
                          f"{minutes:.0f}", TARGETS["grid"]))
    return table


def launch_rows(launches: dict) -> list[tuple[str, object, str]]:
    """bench_train's launches per training batch: eager, compiled, and the launch-bound ceilings."""
    table = []
    eager = launches.get("eager")
    if eager:
        table.append((f"launches per training batch, eager: aten ops dispatched ({eager['amp']})",
                      eager["dispatched_ops"], TARGETS["launches"]))
        if "profiled" in eager:
            table.append(("launches per training batch, eager: kernel launches the CUDA runtime saw",
                          eager["profiled"]["launches"], TARGETS["launches"]))
        table.append(("launch-bound ceiling, eager: captions/s at 5 µs / 10 µs a launch",
                      _ceilings(eager["ceiling_captions_per_s"]), ""))
    compiled = launches.get("compiled")
    if compiled:
        if "kernel_launches" in compiled:  # on a GPU: what the CUDA runtime saw
            table.append((f"launches per training batch, compiled: kernel launches {compiled['kernel_launches']} + "
                          f"CUDA graph launches {compiled['graph_launches']} ({compiled['compiled_graph_calls']} "
                          "compiled graph calls)", compiled["launches"], TARGETS["launches"]))
        else:  # on the CPU: kernels inside and outside the compiled graphs
            table.append((f"launches per training batch, compiled: kernels outside graphs "
                          f"{compiled['kernels_outside_graphs']}, inside {compiled['kernels_inside_graphs']}, graph "
                          f"calls {compiled['compiled_graph_calls']}; without CUDA graphs "
                          f"{compiled['launches_without_cuda_graphs']}; with them",
                          compiled["launches_with_cuda_graphs"], TARGETS["launches"]))
        table.append(("launch-bound ceiling, compiled: captions/s at 5 µs / 10 µs a launch",
                      _ceilings(compiled["ceiling_captions_per_s"]), ""))
        if "graphs_compiled" in compiled:
            table.append(("graphs train.compile compiled (fixed shapes: one expected)", compiled["graphs_compiled"], "1"))
    return table


def _ratio(r: dict) -> str:
    return f"{r['median']}x [{r['min']}-{r['max']}]"


def _ceilings(c: dict) -> str:
    return f"{c['5us']:,.0f} / {c['10us']:,.0f}"


def _seconds(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values) + " s"


def markdown(table: list[tuple[str, object, str]], steps: dict[str, dict], env: dict, dry: bool,
             seconds: float) -> list[str]:
    device = env.get("device", "unknown device")
    said = (f"Device: {device}; {env.get('driver', 'driver unknown')}; {env.get('torch_build', '')}"
            + (" (dry run: tiny sizes on the CPU, not figures)" if dry else ""))
    lines = [said, "", "| what | figure | target |", "|---|---|---|"]
    lines += [f"| {what} | {figure} | {target} |" for what, figure, target in table]
    lines += ["", f"Steps ({seconds:.0f} s in all; budget {BUDGET_S} s on an H100):", "",
              "| step | status | seconds | expected (H100) | limit | note |", "|---|---|---|---|---|---|"]
    for name, step in steps.items():
        limit = f"{step['limit_s']:.0f} s" if step["status"] != "skipped" else ""
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | {step['expected_s']:.0f} s | {limit} | "
                     f"{step['note']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0, help="the whole script's wall time")
    args = parser.parse_args()

    steps = read_steps(args.out)
    try:
        env = json.loads((args.out / "env.json").read_text())
    except (OSError, ValueError):
        env = {}
    dry = bool(args.dry_run)
    table = rows(steps, env, dry)
    lines = markdown(table, steps, env, dry, args.seconds)
    failed = [name for name, step in steps.items() if step["status"] in ("failed", "timed out")]
    skipped = {name: step["note"] for name, step in steps.items() if step["status"] == "skipped"}
    expected = sum(step["expected_s"] for step in steps.values() if step["status"] != "skipped")
    report = {"device": env.get("device"), "environment": env, "dry_run": dry, "total_s": args.seconds,
              "budget_s": BUDGET_S, "within_budget": args.seconds <= BUDGET_S, "expected_s": expected,
              "failed_steps": failed, "skipped_steps": skipped, "rows": [list(row) for row in table], "steps": steps}
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    (args.out / "performance_rows.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    verdict = f"failed: {', '.join(failed)}" if failed else "every step that ran passed"
    print(f"\n{args.seconds:.0f} s in all (budget {BUDGET_S} s on an H100); {verdict}"
          f"{f'; {len(skipped)} skipped' if skipped else ''}; {args.out / 'gpu.json'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
