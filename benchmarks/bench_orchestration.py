"""What `orch run` costs over training the same configurations one after another with `orch train`.

    PYTHONPATH=. python benchmarks/bench_orchestration.py [--trainings 4] [--epochs 2] [--n 200]

In one run of the benchmark, the same N small trainings (a grid over `train.seed`) go
  1. through `orch train`, one command after another (the baseline a user would script);
  2. through `orch run` with `resources.max_concurrent: 1`: one trial at a time, like for like, so
     the ratio to (1) is the orchestration overhead (target <= 1.15);
  3. through `orch run` as configured (`resources.cpu: 1`, so as many trials at once as cores):
     the ratio to (1) is what a user gains.
Every command is a fresh process with its own MLflow sqlite store, after one untimed warm-up
`orch train` (feature cache, page cache). For each it reports the wall time; the time from the
command's start to its parent run (imports, config, MLflow store), to its first trial's start (for
`orch run` also Ray's start: the fixed start-up overhead, target < 20 s) and to the first finished
epoch; and the CPU utilisation sampled from /proc over the command's process tree: all of it, and
the trial processes alone (Ray's trial actors; for `orch train`, the command itself), as CPU
seconds / (wall x cores).

Every training uses one thread (`OMP_NUM_THREADS=1`, which Ray also sets for a 1-CPU trial), so
the compute is the same in every mode. The machine's load average before and after is reported:
other work on the machine distorts every figure. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def experiment(name: str, prepared: Path, storage: Path, epochs: int) -> dict:
    return {
        "name": name,
        "data": {"prepared": str(prepared), "image_size": 32, "num_workers": 0},
        "model": {"encoder": "regnet_x_400mf", "weights": "none", "encoded_size": 4, "embed_dim": 32,
                  "hidden_dim": 32, "attention_dim": 32, "dropout": 0.1},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 3.0e-3},
        "decode": {"beam_size": 2, "max_len": 16},
        "eval": {"metrics": ["Bleu", "CIDEr"]},
        "resources": {"cpu": 1},
        "ray": {"storage": str(storage)},
    }


# ------------------------------------------------------------------------------ CPU sampling
def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, CPU ticks used (user + system), command line) of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), cmdline)
    return table


class TreeCpu:
    """Samples the CPU time of a process and all its descendants until stopped."""

    def __init__(self, root: int, is_trial, period_s: float = 0.5):
        self.root, self.is_trial, self.period_s = root, is_trial, period_s
        self.ticks: dict[int, tuple[int, bool]] = {}  # pid -> (latest ticks, is a trial process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            table = _process_table()
            tree, frontier = set(), {self.root}
            while frontier:
                tree |= frontier
                frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - tree
            for pid in tree & table.keys():
                _, ticks, cmdline = table[pid]
                seen_ticks, was_trial = self.ticks.get(pid, (0, False))
                # A process renames itself (ray::IDLE -> ray::ImplicitFunc) and a dead one has no name.
                self.ticks[pid] = (max(ticks, seen_ticks), was_trial or self.is_trial(pid, cmdline))
            self._stop.wait(self.period_s)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        total = sum(t for t, _ in self.ticks.values()) / CLOCK_TICKS
        trials = sum(t for t, trial in self.ticks.values() if trial) / CLOCK_TICKS
        return {"all": total, "trials": trials}


# -------------------------------------------------------------------------------- one command
def timed(command: list[str], cwd: Path, is_trial) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    started_wall, started = time.time(), time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    cpu = TreeCpu(process.pid, lambda pid, cmdline: is_trial(pid, cmdline, process.pid))
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    cpu_s = cpu.stop()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return {"wall_s": wall, "started_at": started_wall, "cpu_s": cpu_s}


def first_times(uri: str, experiment_name: str, started_at: float) -> dict[str, float]:
    """Seconds from the command's start to its parent run (imports, config, MLflow store), its first
    trial run (plus Ray's start for `orch run`) and its first logged epoch (plus the trial's set-up)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment_name)
    parents = client.search_runs([found.experiment_id], "tags.`orch.kind` = 'parent'")
    trials = client.search_runs([found.experiment_id], "tags.`orch.kind` = 'trial'")
    first_parent = min(run.info.start_time for run in parents) / 1000
    first_start = min(run.info.start_time for run in trials) / 1000
    first_epoch = min(m.timestamp for run in trials for m in client.get_metric_history(run.info.run_id, "epoch")
                      if m.step == 1) / 1000
    return {"parent_run_start_s": first_parent - started_at, "first_trial_start_s": first_start - started_at,
            "first_epoch_s": first_epoch - started_at}


def summarise(runs: list[dict], cores: int) -> dict:
    wall = sum(r["wall_s"] for r in runs)
    cpu_all = sum(r["cpu_s"]["all"] for r in runs)
    cpu_trials = sum(r["cpu_s"]["trials"] for r in runs)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu_all, 1), "trial_cpu_s": round(cpu_trials, 1),
            "cpu_utilisation": round(cpu_all / (wall * cores), 3),
            "trial_cpu_utilisation": round(cpu_trials / (wall * cores), 3)}


def _is_ray_trial(pid: int, cmdline: str, root: int) -> bool:
    return cmdline.startswith("ray::ImplicitFunc") or cmdline.startswith("ray::train_trial")


def _is_the_command(pid: int, cmdline: str, root: int) -> bool:
    return pid == root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainings", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n", type=int, default=200, help="synthetic images (80%% train)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from trainers.data.prepare import prepare_dataset
    from trainers.data.synthetic import write_synthetic_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-orch-"))
    work.mkdir(parents=True, exist_ok=True)
    write_synthetic_dataset(work / "source", n=args.n, size=32, seed=0)
    prepare_dataset(work / "source" / "dataset.json", work / "source", work / "prepared", min_word_freq=1,
                    image_size=32)
    cores = os.cpu_count() or 1
    seeds = list(range(args.trainings))
    load_before = os.getloadavg()
    python = [sys.executable, "-m", "orchestrator.cli"]

    def write(name: str, **extra) -> tuple[Path, str]:
        storage = work / name
        document = {**experiment(name, work / "prepared", storage, args.epochs), **extra}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path, f"sqlite:///{storage / 'mlflow.db'}"

    print("warm-up: one `orch train` of 1 epoch (feature cache, page cache)", file=sys.stderr)
    warm, _ = write("warmup")
    timed([*python, "train", str(warm), "--set", "train.epochs=1"], work, _is_the_command)

    print(f"1/3: {args.trainings} x `orch train`, one after another", file=sys.stderr)
    sequential_config, sequential_uri = write("sequential")
    sequential = [timed([*python, "train", str(sequential_config), "--set", f"train.seed={seed}"], work,
                        _is_the_command) for seed in seeds]
    sequential_first = first_times(sequential_uri, "sequential", sequential[0]["started_at"])

    modes = {}
    for label, resources in (("orch_run_max_concurrent_1", {"cpu": 1, "max_concurrent": 1}),
                             ("orch_run_concurrent", {"cpu": 1})):
        print(f"{len(modes) + 2}/3: `orch run` of the same grid, resources {resources}", file=sys.stderr)
        config, uri = write(label.replace("_", "-"), resources=resources, ablation={"train.seed": seeds})
        result = timed([*python, "run", str(config)], work, _is_ray_trial)
        modes[label] = {**summarise([result], cores),
                        **{k: round(v, 1) for k, v in first_times(uri, label.replace("_", "-"),
                                                                  result["started_at"]).items()}}

    baseline = summarise(sequential, cores)
    baseline.update(per_training_wall_s=[round(r["wall_s"], 1) for r in sequential],
                    **{k: round(v, 1) for k, v in sequential_first.items()})
    like_for_like = modes["orch_run_max_concurrent_1"]
    print(json.dumps({
        "benchmark": "orchestration overhead: orch run vs orch train one after another",
        "trainings": args.trainings, "epochs": args.epochs, "images": args.n, "cores": cores,
        "threads_per_training": 1,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "orch_train_sequential": baseline,
        **modes,
        "ratio_like_for_like": round(like_for_like["wall_s"] / baseline["wall_s"], 3),
        "ratio_like_for_like_target": 1.15,
        "ratio_concurrent": round(modes["orch_run_concurrent"]["wall_s"] / baseline["wall_s"], 3),
        "startup_overhead_s": like_for_like["first_trial_start_s"],
        "startup_overhead_target_s": 20,
        "workdir": str(work),
    }, indent=1))


if __name__ == "__main__":
    main()
