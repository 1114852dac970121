"""Bytes an `orch run` leaves per trial, against what a trial must keep.

    PYTHONPATH=. python benchmarks/bench_checkpoint.py [--quick]

It runs `orch run` on the quickstart (search_spaces/quickstart.yaml: ResNet-18 fine-tuned from
scratch, LSTM/GRU x scheduled sampling, 4 trials of 4 epochs; `--quick`: 2 trials of 2 epochs on
200 images) and on the same grid with the encoder frozen (`fine_tune: false`, `weights: none`),
each in a fresh storage folder and a fresh Ray temp folder (RAY_TMPDIR), then counts:

- `storage_bytes`: the trial folders under the storage (Tune's checkpoints, stray copies, logs);
- `mlflow_bytes`: the trial's MLflow artifacts (best checkpoint, captions, predictions);
- `ray_temp_bytes`: what Ray's temp folder still holds after the command ended;
- `target_bytes`: 1.1 x (best trainable weights + latest trainable weights + optimizer state), the
  trainable weights being the state dict without the frozen encoder blocks, Adam's state two
  tensors per parameter.

Prints one JSON object; `--pythonpath` runs another checkout's orch (e.g. main, for the before).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) \
        if folder.exists() else 0


def trainable_bytes(model_cfg: dict, vocab_size: int) -> tuple[int, int]:
    """(state bytes without the frozen encoder blocks, trainable parameter bytes) of the model."""
    from trainers.config import ModelConfig
    from trainers.models import build_captioner

    model = build_captioner(ModelConfig.model_validate(model_cfg), vocab_size)
    frozen = tuple(f"encoder.blocks.{i}." for i in range(model.encoder.first_trainable))
    state = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if not k.startswith(frozen))
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return state, params


def run_arm(name: str, config: dict, workdir: Path, env: dict) -> dict:
    storage = workdir / name / "storage"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Ray's socket paths have a length limit
    config = {**config, "name": name, "ray": {**config.get("ray", {}), "storage": str(storage)}}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path)], cwd=workdir,
                          env={**env, "RAY_TMPDIR": str(ray_tmp)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"orch run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    trials = sorted(p for p in storage.glob(f"{name}/run-*/trials/*") if p.is_dir())
    mlflow = storage / "mlartifacts"
    vocab = len(json.loads(next(trials[0].glob("checkpoint_*/meta.json")).read_text())["vocab"])
    state, params = trainable_bytes(config["model"], vocab)
    target = 1.1 * (state + state + 2 * params)  # best, latest, Adam's two moments
    per_trial = {"storage_bytes": folder_bytes(trials[0].parent) // len(trials),
                 "mlflow_bytes": folder_bytes(mlflow) // len(trials),
                 "ray_temp_bytes": folder_bytes(ray_tmp) // len(trials)}
    total = sum(per_trial.values())
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"trials": len(trials), "wall_s": round(wall, 1), **per_trial, "total_bytes": total,
            "target_bytes": int(target), "total_over_target": round(total / target, 3),
            "first_trial": {p.name: folder_bytes(p) if p.is_dir() else p.stat().st_size for p in trials[0].iterdir()},
            "trainable_state_bytes": state}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials of 2 epochs on 200 images")
    parser.add_argument("--pythonpath", default=str(REPO_ROOT), help="the orch checkout to run")
    args = parser.parse_args()

    base = yaml.safe_load((REPO_ROOT / "search_spaces" / "quickstart.yaml").read_text())
    if args.quick:
        base["data"]["synthetic"]["n"] = 200
        base["train"]["epochs"] = 2
        base["ablation"] = {"model.decoder": ["lstm", "gru"], "decode.length_penalty": [0.0, 1.0]}
        base["eval"]["val_images"] = 10
        base["eval"]["metrics"] = ["Bleu", "CIDEr"]
    load_before = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": args.pythonpath}
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint.") as folder:
        workdir = Path(folder)
        base["data"]["prepared"] = str(workdir / "prepared")  # generated once, shared by both arms
        frozen = {**base, "model": {**base["model"], "fine_tune": False}}
        arms = {"fine_tuned": run_arm("fine_tuned", base, workdir, env),
                "frozen": run_arm("frozen", frozen, workdir, env)}
    print(json.dumps({"orch": args.pythonpath, "quick": args.quick,
                      "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                      "per_trial": arms}))


if __name__ == "__main__":
    main()
