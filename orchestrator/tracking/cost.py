"""What a trial costs, beside what it scores: wall time, device-hours, time lost to orchestration,
peak memory; and the machine's load while it trained (MLflow's system metrics).

Two halves. `TrialMeter` runs where the trial trains (a Ray worker, or `orch train`'s process): it
samples memory and MLflow's own CPU/GPU monitors in a thread and adds what it measured to each
epoch's report (`meter_fields`). `trial_cost` runs in the writer of MLflow (the driver) and turns
those fields into the trial run's `cost_*` metrics. The worker never writes to MLflow, so a sqlite
store keeps its single writer (orchestrator.tracking), and the samples survive a server that goes
away (the journal).

- cost_wall_s: from Tune starting the trial (its resources granted) to this epoch's report.
- cost_device_hours: wall time x the devices allocated (GPUs when the trial has any, else CPUs).
- cost_overhead_s: queueing (Tune's start to the trainable running), start-up (to the first epoch's
  start: data, model, encoder cache) and checkpoint I/O (the trainer's save and Tune's persisting).
- cost_peak_memory_mb: the peak of the process that trains, with its data-loader workers (host RSS);
  on a GPU, the device's peak allocation, the host's as cost_peak_host_memory_mb.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Mapping, Optional

COST_METRICS = ("cost_wall_s", "cost_device_hours", "cost_overhead_s", "cost_peak_memory_mb")
PEAK_HOST_METRIC = "cost_peak_host_memory_mb"  # on a GPU only, beside the device's peak
TAG_COST_DEVICE = "orch.cost_device"  # gpu | cpu
TAG_GPU_METRICS = "orch.gpu_metrics"  # on a GPU trial without system/gpu_* metrics: why
SYSTEM_PREFIX = "system/"  # the MLflow UI's System metrics section
SAMPLE_EVERY_S = 5.0
FIELD = "meter_"  # report keys the meter adds; the driver turns them into cost_* and system/* metrics


class TrialMeter:
    """Measures one trial in the process that trains it: call `fields(result)` with each epoch's
    result, time checkpoint writes with `checkpoint_io()`, and `close()` at the end."""

    def __init__(self, gpus: float, cpus: float, every_s: float = SAMPLE_EVERY_S):
        import psutil
        import torch

        self.began = time.time()
        self.on_gpu = gpus > 0 and torch.cuda.is_available()
        self.devices = gpus if self.on_gpu else cpus
        self.checkpoint_s = 0.0
        self.startup_s: Optional[float] = None
        self.peak_host_mb = 0.0
        self._process = psutil.Process()
        self._monitors, self.gpu_metrics_missing = _system_monitors(self.on_gpu)
        if self.on_gpu:
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sample()
        self._thread = threading.Thread(target=self._run, args=(every_s,), name="orch-trial-meter", daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self._sample()

    def _sample(self) -> None:
        import psutil

        try:
            processes = [self._process, *self._process.children(recursive=True)]
            rss = sum(_rss(process) for process in processes) / 1e6
        except psutil.Error:
            return
        with self._lock:
            self.peak_host_mb = max(self.peak_host_mb, rss)
            for monitor in self._monitors:
                monitor.collect_metrics()

    @contextmanager
    def checkpoint_io(self):
        """`with meter.checkpoint_io(): ...` adds the block's time to the checkpoint I/O."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.checkpoint_s += time.perf_counter() - started

    def fields(self, metrics: Mapping[str, object]) -> dict:
        """What this trial measured so far, as report keys; the system metrics are averages since the last call."""
        import torch

        self._sample()
        self.checkpoint_s += float(metrics.get("checkpoint_time_s", 0.0))
        if self.startup_s is None:  # the first epoch this process trained began after the start-up
            spent = float(metrics.get("epoch_time_s", 0.0)) + float(metrics.get("checkpoint_time_s", 0.0))
            self.startup_s = max(0.0, time.time() - self.began - spent)
        with self._lock:
            system = {}
            for monitor in self._monitors:
                system.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
        peak_device = torch.cuda.max_memory_allocated() / 1e6 if self.on_gpu else None
        return {f"{FIELD}began": self.began, f"{FIELD}startup_s": self.startup_s,
                f"{FIELD}checkpoint_s": self.checkpoint_s, f"{FIELD}devices": float(self.devices),
                f"{FIELD}device": "gpu" if self.on_gpu else "cpu", f"{FIELD}peak_host_mb": self.peak_host_mb,
                f"{FIELD}gpu_metrics_missing": self.gpu_metrics_missing,
                **({f"{FIELD}peak_device_mb": peak_device} if peak_device is not None else {}),
                **{f"{SYSTEM_PREFIX}{key}": value for key, value in system.items()}}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=SAMPLE_EVERY_S)


def _rss(process) -> int:
    import psutil

    try:
        return process.memory_info().rss
    except psutil.Error:  # a data-loader worker that just ended
        return 0


def _system_monitors(on_gpu: bool) -> tuple[list, str]:
    """MLflow's own collectors (the names its UI expects), the GPU one on a GPU; and, on a GPU, why it has none
    ('' when it has): MLflow's GPU monitor needs nvidia-ml-py (the `gpu` extra) and a driver NVML answers."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    monitors = [CPUMonitor()]
    if not on_gpu:
        return monitors, ""
    try:
        monitors.append(GPUMonitor())
    except ImportError:  # MLflow's monitor says so without the bindings
        return monitors, "nvidia-ml-py is not installed: pip install 'orch[gpu]'"
    except RuntimeError as error:  # NVML did not start: no driver library
        return monitors, str(error)
    return monitors, ""


def meter_tags(report: Mapping[str, object]) -> dict[str, str]:
    """The trial run's tags from its meter's fields: the device its cost counts, why GPU metrics are missing."""
    missing = report.get(f"{FIELD}gpu_metrics_missing")
    return {TAG_COST_DEVICE: str(report[f"{FIELD}device"]), **({TAG_GPU_METRICS: str(missing)} if missing else {})}


def trial_cost(report: Mapping[str, object], started_at: float, before: Mapping[str, float] = ()) -> dict[str, float]:
    """The trial's cost_* metrics at this report, from the meter's fields and the time Tune started it
    (`started_at`, the driver's clock). `before`: the cost_* an earlier driver logged for this trial
    (a resumed trial adds to them; its peak is the larger)."""
    began = float(report.get(f"{FIELD}began", started_at))
    wall = max(0.0, time.time() - started_at)
    overhead = max(0.0, began - started_at) + float(report.get(f"{FIELD}startup_s", 0.0)) + \
        float(report.get(f"{FIELD}checkpoint_s", 0.0))
    devices = float(report.get(f"{FIELD}devices", 1.0))
    peak_host = float(report.get(f"{FIELD}peak_host_mb", 0.0))
    peak = float(report.get(f"{FIELD}peak_device_mb", peak_host))
    before = dict(before)
    cost = {"cost_wall_s": before.get("cost_wall_s", 0.0) + wall,
            "cost_device_hours": before.get("cost_device_hours", 0.0) + wall * devices / 3600.0,
            "cost_overhead_s": before.get("cost_overhead_s", 0.0) + overhead,
            "cost_peak_memory_mb": max(before.get("cost_peak_memory_mb", 0.0), peak)}
    if f"{FIELD}peak_device_mb" in report:
        cost[PEAK_HOST_METRIC] = max(before.get(PEAK_HOST_METRIC, 0.0), peak_host)
    return cost


def system_metrics(report: Mapping[str, object]) -> dict[str, float]:
    return {key: value for key, value in report.items() if key.startswith(SYSTEM_PREFIX)}


def totals(trials: list[Mapping[str, float]]) -> dict[str, float]:
    """An ablation's cost: the trials' times and device-hours summed, the largest peak."""
    summed = {key: sum(trial.get(key, 0.0) for trial in trials) for key in COST_METRICS[:3]}
    return {**summed, "cost_peak_memory_mb": max((trial.get("cost_peak_memory_mb", 0.0) for trial in trials), default=0.0)}


def log_totals(tracker, parent: str, invocation: str) -> dict[str, float]:
    """The ablation's cost on its parent run (the same cost_* names, summed over its trial runs)."""
    found = totals([run.data.metrics for run in tracker.runs(invocation=invocation, kind="trial")])
    tracker.log_metrics(parent, found, step=0)
    return found
