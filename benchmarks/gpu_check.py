"""benchmarks/gpu.sh's first step: what this machine is, and whether the measurements can run here.

    python benchmarks/gpu_check.py [--dry-run] [--wheels "pydantic-2.13.4 ..."] [--wheel-note LINE]

Prints to stderr, first, the device (nvidia-smi's name and memory), the NVIDIA driver, torch's
version and the CUDA it was built for; then which optional packages are here (Ray, MLflow, Optuna,
pycocoevalcap, Java: the steps that need them are skipped without them). Prints one JSON object.

Exits 1 with one line on stderr, before anything is measured, when:
- torch cannot use CUDA here (outside --dry-run): trainers.devices.cuda_diagnosis says why and what
  to install;
- the measured path does not import (trainers.loop, the benchmarks): the missing package is named,
  with how to carry it (benchmarks/gpu_wheels.sh).
Needs torch and the checkout, nothing of the orchestrator's (Ray, MLflow).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

OPTIONAL = ("ray", "mlflow", "optuna", "pycocoevalcap")  # and Java: trainers.metrics.java_available
# What the steps that always run import: the recipe, the benchmarks (benchmarks/ on the path), the GPU tests.
MEASURED = ("trainers.loop", "trainers.evaluation", "trainers.data.prepare", "bench_train", "bench_beam",
            "bench_eval_variants", "bench_trial_packing", "pytest")


def nvidia_smi() -> list[dict]:
    """Each GPU nvidia-smi lists: name, memory, driver; [] when none answers."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return []
    try:
        done = subprocess.run([program, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in done.stdout.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 3:
            gpus.append({"name": fields[0], "memory": fields[1], "driver": fields[2]})
    return gpus


def optional_packages() -> dict[str, bool]:
    from trainers.metrics import java_available

    found = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL}
    found["java"] = java_available()
    return found


def unimportable() -> list[str]:
    """`module: why` for each measured module that does not import."""
    sys.path.insert(0, str(HERE))
    problems = []
    for module in MEASURED:
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError mostly; any error there stops the steps alike
            problems.append(f"{module}: {type(error).__name__}: {error}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU needed: every step at tiny sizes on the CPU")
    parser.add_argument("--wheels", default="", help="the packages gpu.sh took from .whl/ (said, not installed here)")
    parser.add_argument("--wheel-note", default="", help="what gpu.sh did with .whl/, in a line (said after the device)")
    args = parser.parse_args()

    import torch

    from trainers.devices import cuda_diagnosis, driver_status, torch_build

    gpus = nvidia_smi()
    usable = torch.cuda.is_available()
    device = "; ".join(f"{g['name']}, {g['memory']}" for g in gpus) or "no GPU that nvidia-smi lists"
    report = {
        "device": device, "gpus": gpus, "driver": driver_status(), "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda, "torch_build": torch_build(), "cuda_usable": usable,
        "torch_device": torch.cuda.get_device_name() if usable else None,
        "python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count(),
        "dry_run": args.dry_run, "wheels_carried": args.wheels.split(),
    }
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    say(f"device: {device}")
    say(f"driver: {report['driver']}")
    say(f"torch:  {torch_build()}; Python {report['python']} ({sys.executable})")
    if args.wheel_note:
        say(f"wheels: {args.wheel_note}")
    if usable:
        say(f"torch sees: {report['torch_device']} ({torch.cuda.device_count()} device(s))")
    elif not args.dry_run:
        say(f"gpu.sh: no usable CUDA device: {cuda_diagnosis()}")
        sys.exit(1)
    problems = unimportable()
    if problems:
        hint = (f"the wheels carried ({args.wheels}) do not provide it" if args.wheels else
                "carry its wheels: benchmarks/gpu_wheels.sh, run where PyPI is reachable, fills .whl/, to copy "
                "into the checkout's root here (gpu.sh's header says more)")
        say(f"gpu.sh: the measured code does not import: {problems[0]}" + (f" (and {len(problems) - 1} more)"
            if len(problems) > 1 else "") + f": {hint}")
        sys.exit(1)
    report["optional"] = optional_packages()
    present = [name for name, found in report["optional"].items() if found]
    absent = [name for name, found in report["optional"].items() if not found]
    say(f"optional: {', '.join(present) or 'none'} here" + (f"; missing: {', '.join(absent)} (the steps that need "
                                                            "them are skipped)" if absent else ""))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
