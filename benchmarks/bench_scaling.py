"""How `orch run` trial throughput grows with the nodes of a Ray cluster (simulated on one machine).

    PYTHONPATH=. python benchmarks/bench_scaling.py [--nodes 1 2 3] [--trials 6] [--epochs 2] [--n 40]

For each node count N, a `ray.cluster_utils.Cluster` is started: a head with no CPUs (it only
schedules, as on KubeRay) and N worker nodes of one CPU each. The same grid of `--trials` tiny
trainings (a grid over `train.seed`, one CPU per trial) then runs through a real `orch run
--address HEAD` process, with its MLflow sqlite store and results folder shared by all nodes.

Reported per N, from the result.json Tune wrote for each trial (a trial starts when its trainable
function starts, after its actor process has started and imported everything):
  wall_s            the whole command, imports and Ray connection included
  trial_phase_s     from the first trial's start to the last trial's end
  trials_per_min    trials / trial_phase_s, and its speed-up over the first N
  mean_concurrency  trial-seconds / trial_phase_s: how many trials ran at once on average
  mean_trial_s      one trial's trainable, start to end; mean_epoch_s: one epoch of it
  slot_idle_per_trial_s  (N x trial_phase_s - trial-seconds) / trials: how long a node's CPU slot
                    waits between two trials (a new actor process, imports, scheduling), the fixed
                    cost of every trial
Once: the size of one checkpoint (what each report syncs to storage) and the MLflow rows each trial
writes (the tracking server's load per trial).

The simulated nodes share this machine's cores: past the core count, more nodes cannot add
throughput, and other work on the machine (see the load averages) slows every figure.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def experiment(name: str, prepared: Path, storage: Path, epochs: int, trials: int) -> dict:
    return {
        "name": name,
        "data": {"prepared": str(prepared), "image_size": 32, "num_workers": 0},
        "model": {"encoder": "regnet_x_400mf", "weights": "none", "encoded_size": 2, "embed_dim": 16,
                  "hidden_dim": 16, "attention_dim": 16, "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3.0e-3},
        "decode": {"beam_size": 2, "max_len": 12},
        "eval": {"metrics": ["Bleu", "CIDEr"], "sample_captions": 2},
        "ablation": {"train.seed": list(range(trials))},
        "resources": {"cpu": 1},
        "ray": {"storage": str(storage), "max_failures": 0},
    }


def run_on_cluster(nodes: int, config: Path, work: Path) -> float:
    """Start head + `nodes` one-CPU workers, run `orch run --address` on them; returns its wall time."""
    from ray.cluster_utils import Cluster

    ray_temp = tempfile.mkdtemp(prefix="orch-", dir="/tmp")  # its own Ray folder: no other ray.init joins it
    os.environ["RAY_TMPDIR"] = ray_temp
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(config), "--address",
                               cluster.address], cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"orch run on {nodes} node(s) exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        return wall
    finally:
        cluster.shutdown()
        del os.environ["RAY_TMPDIR"]
        shutil.rmtree(ray_temp, ignore_errors=True)


def trial_timings(storage: Path) -> list[dict]:
    """Per trial, from Tune's result.json: when its trainable started and ended (s), its epoch times."""
    trials = []
    for result in storage.glob("*/run-*/trials/*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        trials.append({"start": reports[0]["timestamp"] - reports[0]["time_total_s"], "end": reports[-1]["timestamp"],
                       "epochs": [r["time_this_iter_s"] for r in reports]})
    return trials


def mlflow_rows_per_trial(db: Path) -> dict[str, float]:
    """Metric, param and tag rows written per training trial (its run and its decode-variant runs)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        trials = connection.execute("select count(*) from tags where key = 'orch.kind' and value = 'trial'").fetchone()[0]
        counts = {table: connection.execute(
            f"select count(*) from {table} where run_uuid in (select run_uuid from tags where key = 'orch.kind' "
            f"and value in ('trial', 'variant'))").fetchone()[0] for table in ("metrics", "params", "tags")}
        runs = connection.execute("select count(*) from tags where key = 'orch.kind' and value in ('trial', 'variant')"
                                  ).fetchone()[0]
    return {"runs": runs / trials, **{table: round(n / trials, 1) for table, n in counts.items()}}


def checkpoint_bytes(storage: Path) -> int:
    checkpoint = next(storage.glob("*/run-*/trials/*/checkpoint_*"))
    return sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())


def summarise(trials: list[dict], nodes: int, wall: float) -> dict:
    phase = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    busy = sum(t["end"] - t["start"] for t in trials)
    epochs = [e for t in trials for e in t["epochs"]]
    return {"wall_s": round(wall, 1), "trial_phase_s": round(phase, 1),
            "trials_per_min": round(60 * len(trials) / phase, 2),
            "mean_concurrency": round(busy / phase, 2),
            "mean_trial_s": round(busy / len(trials), 1),
            "mean_epoch_s": round(sum(epochs) / len(epochs), 1),
            "slot_idle_per_trial_s": round((nodes * phase - busy) / len(trials), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n", type=int, default=40, help="synthetic images (80%% train)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from trainers.data.prepare import prepare_dataset
    from trainers.data.synthetic import write_synthetic_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    write_synthetic_dataset(work / "source", n=args.n, size=32, seed=0)
    prepare_dataset(work / "source" / "dataset.json", work / "source", work / "prepared", min_word_freq=1,
                    image_size=32)
    load_before = os.getloadavg()

    print("warm-up: one `orch train` of 1 epoch (feature cache, page cache)", file=sys.stderr)
    warm = work / "warmup.yaml"
    warm_config = experiment("warmup", work / "prepared", work / "warmup", 1, 1)
    del warm_config["ablation"]
    warm.write_text(yaml.safe_dump(warm_config, sort_keys=False))
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", str(warm)], cwd=work, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})

    results = []
    for nodes in args.nodes:
        print(f"{nodes} node(s): {args.trials} trials x {args.epochs} epochs", file=sys.stderr)
        name = f"scaling-{nodes}"
        config = work / f"{name}.yaml"
        config.write_text(yaml.safe_dump(experiment(name, work / "prepared", work / name, args.epochs, args.trials),
                                         sort_keys=False))
        wall = run_on_cluster(nodes, config, work)
        results.append({"nodes": nodes, **summarise(trial_timings(work / name), nodes, wall)})
    for result in results:
        result["speedup"] = round(result["trials_per_min"] / results[0]["trials_per_min"], 2)

    last = work / f"scaling-{args.nodes[-1]}"
    print(json.dumps({
        "benchmark": "trial throughput of orch run on 1..N simulated Ray nodes (1 CPU each, head schedules only)",
        "trials": args.trials, "epochs": args.epochs, "images": args.n, "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "by_nodes": results,
        "checkpoint_bytes": checkpoint_bytes(last),
        "mlflow_per_trial": mlflow_rows_per_trial(last / "mlflow.db"),
        "workdir": str(work),
    }, indent=1))


if __name__ == "__main__":
    main()
