"""Trial packing without Ray: 4 training processes sharing one GPU against the same 4 one after another.

    PYTHONPATH=. python benchmarks/bench_trial_packing.py [--processes 4] [--batches 60] [--rounds 1]
    PYTHONPATH=. python benchmarks/bench_trial_packing.py --quick      # a minute on the CPU: tiny sizes

`resources.gpu: 0.25` in a search space asks Ray to start 4 trials on one GPU at once: 4 processes,
each with its own CUDA context, whose kernels the GPU interleaves. This measures what that buys
without Ray, MLflow or scoring, so it runs on a GPU machine that has PyTorch and little else.

Each process is a plain training of the real recipe (trainers.loop.CaptionRecipe): `setup` on a
synthetic prepared dataset (trainers.data.synthetic + prepare, weights none) with the feature cache,
then `train_epoch` for `--warm-batches` batches (cuBLAS and the allocator warm up, untimed) and
then for `--batches` batches, timed. The sizes are the coursework's: ResNet-101's cached 14x14x2048
grid, LSTM, soft attention, embed / attention / hidden 512, batch 32, bf16 autocast on a GPU (the
recipe's `train.amp: auto`). The data and the feature cache are built once, in a process of their
own, before either arm is timed (the cache build's images/s is reported: a frozen encoder's cache
is built once per dataset and shared by every trial); the processes then only read it.

Two arms, alternating over `--rounds` rounds (the order rotating, as benchmarks/timing.py does):
- `packed`: the `--processes` processes started together; wall time until the last one exits;
- `one_by_one`: the same processes, each started when the one before has exited.
Both wall times count what a trial pays: the process's start, imports, CUDA context and setup,
which these short runs make large beside their training (a trial trains for 20 epochs).
`training_speedup` leaves them out: when packed, the processes start their timed batches together
(each waits, warmed, until all are), and the sum of the processes' timed training one after another
is set against the span from that start to the last one's end. It is the figure to read for what
sharing the GPU buys over a whole trial.

Prints one JSON object: both arms' wall times, the speed-up (target on an H100: >= 3x), each
process's captions/s and the GPU memory it peaked at (torch.cuda.max_memory_allocated; on the CPU
its peak resident memory instead). The parent process never touches the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from timing import ratio  # noqa: E402  (imports torch only to time on a device; this process syncs none)

CAPTIONS_PER_IMAGE = 5  # trainers.data.synthetic writes 5 phrasings of each scene
TRAIN_FRACTION = 0.8  # the rest is val and test (trainers.data.synthetic.SPLIT_FRACTIONS)


def trainer_config(args, prepared: Path, cache_dir: Path, seed: int) -> dict:
    """The recipe's config for one process (all alike but the seed, as trials of a grid are)."""
    return {
        "name": "packing",
        "data": {"prepared": str(prepared), "image_size": args.image_size, "num_workers": 0,
                 "feature_cache": True, "cache_dir": str(cache_dir)},
        "model": {"encoder": args.encoder, "weights": "none", "fine_tune": False,
                  "encoded_size": args.encoded_size, "decoder": "lstm", "attention": "soft",
                  "embed_dim": args.dim, "attention_dim": args.dim, "hidden_dim": args.dim, "dropout": 0.5},
        "train": {"epochs": 1, "batch_size": args.batch, "seed": seed, "device": args.device,
                  "max_batches_per_epoch": args.batches},
    }


# ------------------------------------------------------------------------------ one process
def child(config_path: Path, threads: int, warm_batches: int, build_only: bool, barrier: Path | None) -> dict:
    """One training process: setup, warm batches, the timed batches. Returns what it measured.

    `barrier`: a folder where it says it is ready (ready-<pid>) and waits for `go` before its timed batches."""
    import resource

    import psutil
    import torch

    begun = psutil.Process().create_time()  # the process's start: its imports count, as a trial's do

    from trainers.config import TrainerConfig
    from trainers.loop import CaptionRecipe
    from trainers.memory import reuse_freed_memory

    imported = time.time()
    reuse_freed_memory()  # as every trial does
    torch.set_num_threads(threads)
    config = TrainerConfig.model_validate(json.loads(config_path.read_text()))
    with tempfile.TemporaryDirectory(prefix="packing-run.") as run_dir:
        recipe = CaptionRecipe(config, Path(run_dir))
        recipe.setup()  # builds the feature cache when it is not there yet (`build_only`), else reads it
        cuda = recipe.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        set_up = time.time()
        result = {"device": recipe.device.type, "device_name": torch.cuda.get_device_name() if cuda else "cpu",
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "amp": str(recipe.autocast_dtype),
                  "import_s": round(imported - begun, 3), "setup_s": round(set_up - imported, 3)}
        if build_only:
            images = sum(len(recipe.dataset.split(s)) for s in ("train", "val", "test"))
            return {**result, "images": images}
        timed_batches = config.train.max_batches_per_epoch
        train_captions = len(recipe.dataset.split("train").caption_image)
        if warm_batches > 0:  # (0 would mean the whole epoch)
            recipe.config.train.max_batches_per_epoch = warm_batches
            recipe.train_epoch(1)  # cuBLAS handles, the allocator's pools, the optimizer's state: untimed
        recipe.config.train.max_batches_per_epoch = timed_batches
        sync()
        if barrier is not None:
            (barrier / f"ready-{os.getpid()}").touch()
            while not (barrier / "go").exists():
                time.sleep(0.005)
        started = time.time()
        loss = recipe.train_epoch(2)  # ends reading the loss on the host: synchronised
        sync()
        ended = time.time()
        captions = min(timed_batches * config.train.batch_size, train_captions)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {**result, "train_started": started, "train_ended": ended, "train_s": round(ended - started, 4),
                "batches": math.ceil(captions / config.train.batch_size), "captions": captions,
                "captions_per_s": round(captions / (ended - started), 1), "loss": round(loss, 4),
                "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                "peak_gpu_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1) if cuda else None,
                "peak_rss_mib": round(peak_rss, 1)}


def child_command(config_path: Path, threads: int, warm_batches: int, build_only: bool = False,
                  barrier: Path | None = None) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path), "--threads", str(threads),
            "--warm-batches", str(warm_batches), *(["--build-only"] if build_only else []),
            *(["--barrier", str(barrier)] if barrier else [])]


def environ() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Started:
    """A child process, its output going to files (a pipe left unread could stall it while others run)."""

    count = 0

    def __init__(self, command: list[str], logs: Path):
        Started.count += 1
        self.out, self.err = logs / f"child-{Started.count}.out", logs / f"child-{Started.count}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=environ(), cwd=ROOT)

    def result(self, what: str) -> dict:
        """Its JSON, once it has exited; its stderr passed on, and a failure ends the benchmark."""
        status = self.process.wait()
        err = self.err.read_text(errors="replace")
        if status != 0:
            sys.stderr.write(err)
            last = err.strip().splitlines()[-1] if err.strip() else ""
            raise SystemExit(f"{what} exited {status}: {last}")
        return json.loads(self.out.read_text().strip().splitlines()[-1])


# ------------------------------------------------------------------------------- the parent
def prepare_data(args, workdir: Path) -> Path:
    """The synthetic dataset, prepared at --image-size (written small, resized up: content is not timed)."""
    from trainers.data.prepare import prepare_dataset
    from trainers.data.synthetic import write_synthetic_dataset

    raw, prepared = workdir / "raw", workdir / "prepared"
    write_synthetic_dataset(raw, n=args.images, size=min(args.image_size, 64), seed=0)
    prepare_dataset(raw / "dataset.json", raw, prepared, min_word_freq=1, max_len=50, image_size=args.image_size)
    return prepared


def measure(args, workdir: Path) -> dict:
    began = time.perf_counter()
    prepared = prepare_data(args, workdir)
    data_s = time.perf_counter() - began
    cache_dir = workdir / "features"
    configs = []
    for index in range(args.processes):
        configs.append(workdir / f"process-{index}.json")
        configs[-1].write_text(json.dumps(trainer_config(args, prepared, cache_dir, seed=index)))
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.processes)

    began = time.perf_counter()
    built = Started(child_command(configs[0], max(threads, os.cpu_count() or 1), 0, build_only=True),
                    workdir).result("building the feature cache")
    build_s = time.perf_counter() - began
    cache_files = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.is_file())

    runs: dict[str, list[list[dict]]] = {"packed": [], "one_by_one": []}

    def packed() -> None:
        barrier = Path(tempfile.mkdtemp(prefix="barrier.", dir=workdir))
        processes = [Started(child_command(path, threads, args.warm_batches, barrier=barrier), workdir)
                     for path in configs]
        try:
            while len(list(barrier.glob("ready-*"))) < len(processes):  # all set up and warm: train together
                dead = [i for i, p in enumerate(processes) if p.process.poll() is not None]
                if dead:
                    processes[dead[0]].result(f"packed process {dead[0]}")  # its error, if it failed
                    raise SystemExit(f"packed process {dead[0]} ended before its timed batches")
                time.sleep(0.005)
            (barrier / "go").touch()
            runs["packed"].append([p.result(f"packed process {i}") for i, p in enumerate(processes)])
        finally:  # none left waiting at the barrier when one failed
            for p in processes:
                if p.process.poll() is None:
                    p.process.kill()
                    p.process.wait()

    def one_by_one() -> None:
        runs["one_by_one"].append([Started(child_command(path, threads, args.warm_batches), workdir).result(
            f"process {i} of one by one") for i, path in enumerate(configs)])

    arms = {"packed": packed, "one_by_one": one_by_one}
    walls: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            started = time.perf_counter()
            arms[name]()
            walls[name].append(time.perf_counter() - started)
    reused = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.is_file()) == cache_files

    def training_s(arm: str) -> list[float]:
        if arm == "one_by_one":
            return [sum(p["train_s"] for p in processes) for processes in runs[arm]]
        return [max(p["train_ended"] for p in processes) - min(p["train_started"] for p in processes)
                for processes in runs[arm]]

    training = {arm: training_s(arm) for arm in arms}
    captions = sum(p["captions"] for p in runs["packed"][0])
    first = runs["one_by_one"][0][0]
    result = {
        "benchmark": "trial packing without Ray: processes sharing the GPU vs one after another",
        "environment": {"device": first["device"], "device_name": first["device_name"], "torch": first["torch"],
                        "threads_per_process": first["threads"], "cpus": os.cpu_count(), "amp": first["amp"],
                        "load_average": [round(x, 2) for x in os.getloadavg()]},
        "quick": args.quick,
        "sizes": {"encoder": args.encoder, "image_size": args.image_size, "grid": f"{args.encoded_size}x"
                  f"{args.encoded_size}", "dims": args.dim, "decoder": "lstm", "attention": "soft",
                  "batch": args.batch, "images": args.images},
        "processes": args.processes, "warm_batches": args.warm_batches, "batches_per_process": args.batches,
        "rounds": args.rounds,
        "rounds_note": ("one round of each arm: the GPU run's time budget allows no more, so there is no "
                        "spread" if args.rounds == 1 else f"{args.rounds} rounds, the arms alternating"),
        "data_s": round(data_s, 2),
        "cache_build": {"seconds": round(build_s, 2), "images": built["images"],
                        "images_per_s": round(built["images"] / build_s, 1),
                        "note": "the whole build process: start, imports, the encoder's init, the build"},
        "cache_reused": reused,
        "one_by_one": {"wall_s": [round(w, 3) for w in walls["one_by_one"]],
                       "training_s": [round(t, 3) for t in training["one_by_one"]],
                       "processes": runs["one_by_one"][-1]},
        "packed": {"wall_s": [round(w, 3) for w in walls["packed"]],
                   "training_s": [round(t, 3) for t in training["packed"]],
                   "processes": runs["packed"][-1]},
        "speedup": ratio(walls["one_by_one"], walls["packed"]),
        "training_speedup": ratio(training["one_by_one"], training["packed"]),
        "captions_per_s_per_process": {
            arm: round(statistics.median(p["captions_per_s"] for p in runs[arm][-1]), 1) for arm in arms},
        "aggregate_training_captions_per_s": {
            arm: round(captions / statistics.median(training[arm]), 1) for arm in arms},
        "peak_gpu_memory_mib": {
            arm: max((p["peak_gpu_memory_mib"] or 0) for p in runs[arm][-1]) or None for arm in arms},
        "target": "packed >= 3x one after another (H100)",
    }
    result["meets_target"] = result["speedup"]["median"] >= 3.0 if first["device"] == "cuda" else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="trainings sharing the GPU (resources.gpu 1/N)")
    parser.add_argument("--batches", type=int, default=60, help="timed training batches per process")
    parser.add_argument("--warm-batches", type=int, default=5, help="untimed batches per process before them")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each arm, alternating")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=512, help="embed, attention and hidden size")
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--encoded-size", type=int, default=14, help="the cached grid: 14x14")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=0,
                        help="synthetic images (default: enough for --batches full batches of training captions)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (default: cpus / processes)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks that it runs")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--barrier", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads or 1, args.warm_batches, args.build_only, args.barrier)))
        return
    if args.quick:
        args.batches, args.warm_batches, args.batch, args.dim, args.encoder = 3, 1, 8, 16, "resnet18"
        args.encoded_size, args.image_size, args.threads = 2, 32, 1
        args.device = "cpu" if args.device == "auto" else args.device
    if args.device == "auto":  # resolved here, without a CUDA context in this process, and said if so
        from trainers.devices import pick_device

        args.device = pick_device("auto").type
    needed = math.ceil(args.batches * args.batch / CAPTIONS_PER_IMAGE / TRAIN_FRACTION) + 10
    args.images = max(args.images, needed, 20)
    with tempfile.TemporaryDirectory(prefix="bench_trial_packing.") as folder:
        print(json.dumps(measure(args, Path(folder))))


if __name__ == "__main__":
    main()
