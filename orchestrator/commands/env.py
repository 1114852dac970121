"""`orch env`: the environment a run would get here, and whether it holds what a config needs.

A GPU ablation that trains on the CPU because the node's driver is older than torch's CUDA build, or
that waits forever for GPUs its cluster does not have, is found out after hours. `orch env` shows it
in seconds: Python, torch and the CUDA it was built for, cuDNN, the NVIDIA driver, the GPUs torch can
use, bf16, Ray and, given a config or an address, the Ray cluster's CPUs and GPUs, the tracking store
and the storage. Each check is the one `orch run` makes (orchestrator.cluster.preflight, trainers.devices);
a config whose needs are not met is exit code 2, with the failing line.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.cluster import preflight
from orchestrator.experiment.schema import ExperimentConfig
from trainers.errors import InputError

GIB = 2**30


@dataclass
class Report:
    """The facts, in the order they are shown, and the needs they fail."""

    facts: dict[str, Any] = field(default_factory=dict)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (label, text) as printed
    problems: list[str] = field(default_factory=list)  # one line each, naming the key to change

    def add(self, key: str, value: Any, label: str, text: str) -> None:
        self.facts[key] = value
        self.lines.append((label, text))

    def check(self, what, *args) -> bool:
        """Run one of preflight's checks; an InputError it raises becomes a problem. True: it passed."""
        try:
            what(*args)
        except InputError as error:
            self.problems.append(str(error))
            return False
        return True

    def as_json(self) -> dict:
        return {**self.facts, "ok": not self.problems, "problems": self.problems}

    def render(self) -> str:
        width = max(len(label) for label, _ in self.lines)
        return "\n".join(f"{label.ljust(width)}  {text}" for label, text in self.lines)


def environment(config: Optional[ExperimentConfig] = None, address: Optional[str] = None) -> Report:
    """What this machine (and, given a config or an address, its Ray cluster) offers a run."""
    report = Report()
    report.add("python", {"version": platform.python_version(), "executable": sys.executable}, "python",
               f"{platform.python_version()} ({sys.executable})")
    _torch(report)
    _ray(report, config, address)
    if config is not None:
        _stores(report, config)
    return report


def _torch(report: Report) -> None:
    """torch, its CUDA build and cuDNN; the driver; the GPUs torch can use; bf16."""
    import torch

    from trainers.devices import cuda_diagnosis, driver_status, driver_version, needed_driver, torch_cuda_usable

    need = needed_driver()
    cudnn = _cudnn(torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    report.add("torch", {"version": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
                         "needs_driver": f"R{need}+" if need else None}, "torch",
               f"{torch.__version__}, {built}" + (f" (needs NVIDIA driver R{need} or newer)" if need else "")
               + f"; cuDNN {cudnn or 'none'}")
    driver = driver_version()
    report.add("driver", driver, "driver", driver_status())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown_visible = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    usable = torch_cuda_usable()
    gpus = [{"index": i, "name": torch.cuda.get_device_properties(i).name,
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / GIB, 1)}
            for i in range(torch.cuda.device_count())] if usable else []
    report.facts["cuda_visible_devices"] = visible
    if gpus:
        shown = "; ".join(f"{g['index']}: {g['name']}, {g['memory_gib']} GiB" for g in gpus) + f" ({shown_visible})"
    elif driver:  # a GPU is there, and torch cannot use it: why, and what to install
        shown = f"none usable: {cuda_diagnosis(driver)}"
    else:
        shown = f"none: no GPU that torch can use on this machine ({shown_visible})"
    report.add("gpus", gpus, "GPUs", shown)
    bf16 = bool(usable and torch.cuda.is_bf16_supported())
    report.add("bf16", bf16, "bf16", "yes (train.amp auto trains in bf16)" if bf16 else
               f"no (train.amp auto trains in fp32{'' if usable else ' on the CPU'})")


def _cudnn(version: Optional[int]) -> Optional[str]:
    """9.24.0 for cuDNN's 92400 (8.9.2 for 8902: cuDNN 8 counted majors in thousands)."""
    if not version:
        return None
    major, rest = (version // 10000, version % 10000) if version >= 10000 else (version // 1000, version % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _ray(report: Report, config: Optional[ExperimentConfig], address: Optional[str]) -> None:
    """Ray's version and, given a config or an address, the cluster a run would get and what it needs of it."""
    import ray

    from orchestrator.settings import LOCAL_RAY, ray_address_of

    report.add("ray", ray.__version__, "ray", ray.__version__)
    if config is None and address is None:
        return
    joined, source = ray_address_of(config or ExperimentConfig(), address)
    if joined == LOCAL_RAY:
        cpus, gpus = _local_ray_resources()
        cluster = {"address": LOCAL_RAY, "source": "", "cpus": cpus, "gpus": gpus}
        report.add("cluster", cluster, "cluster", f"a local Ray on this machine (ray.address: null) would get "
                                                  f"{cpus:g} CPUs and {gpus:g} GPUs")
    elif not report.check(preflight.check_ray_address, joined, source):
        report.add("cluster", {"address": joined, "source": source, "cpus": None, "gpus": None}, "cluster",
                   f"no Ray cluster answers at {joined} ({source})")
        return
    else:
        resources = _cluster_resources(joined)
        cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
        cluster = {"address": joined, "source": source, "cpus": cpus, "gpus": gpus}
        report.add("cluster", cluster, "cluster",
                   f"the Ray cluster at {joined} ({source}): {cpus:g} CPUs, {gpus:g} GPUs")
    if config is not None:
        _reservation(report, config, cluster)


def _reservation(report: Report, config: ExperimentConfig, cluster: dict) -> None:
    """One trial's reservation, and whether the cluster holds it (preflight.check_cluster_gpus, as `orch run`)."""
    need = config.resources.gpu
    device = "cuda" if need > 0 else "the CPU, CUDA hidden"
    scaling = "; ray.autoscaling: its GPUs are not counted" if config.ray.autoscaling else ""
    report.add("resources", {"cpu": config.resources.cpu, "gpu": need, "autoscaling": config.ray.autoscaling},
               "trial", f"resources.cpu {config.resources.cpu:g}, resources.gpu {need:g}: trains on {device}{scaling}")
    if not config.ray.autoscaling:
        report.check(preflight.check_cluster_gpus, need, {"CPU": cluster["cpus"], "GPU": cluster["gpus"]},
                     cluster["address"], cluster["source"])


def _local_ray_resources() -> tuple[float, float]:
    """The CPUs and GPUs a local Ray would detect here, without starting one: Ray's own CPU count (it
    honours cgroup limits) and its NVML GPU count, cut to CUDA_VISIBLE_DEVICES as Ray does; os.cpu_count
    and torch's count where Ray's helpers are not there."""
    try:
        from ray._private.accelerators import NvidiaGPUAcceleratorManager as nvidia
        from ray._private.utils import get_num_cpus

        cpus, gpus = float(get_num_cpus()), nvidia.get_current_node_num_accelerators()
        visible = nvidia.get_current_process_visible_accelerator_ids()
        return cpus, float(min(gpus, len(visible)) if visible is not None else gpus)
    except (ImportError, AttributeError):  # pragma: no cover - Ray moved its private helpers
        import torch

        return float(os.cpu_count() or 1), float(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _cluster_resources(address: str) -> dict:
    """ray.cluster_resources() of the cluster at `address`: joined for the question, left at once."""
    import ray

    from orchestrator.cluster import auth

    started = not ray.is_initialized()
    if started:
        auth.prepare(address)
        ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=True,
                 logging_level="ERROR")
    try:
        return ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


def _stores(report: Report, config: ExperimentConfig) -> None:
    """The tracking store and the storage, tried as `orch run` tries them, and the prepared data."""
    from orchestrator.cluster.launcher import check_data
    from orchestrator.experiment.plan import make_plan
    from orchestrator.storage import resolve

    uri = config.tracking.uri
    remote = uri.split("://")[0].split("+")[0] in ("http", "https", *preflight.DATABASE_SCHEMES)
    ok = report.check(preflight.check_tracking, uri)
    report.add("tracking", {"uri": uri, "ok": ok}, "tracking",
               f"{uri}: " + (("answers" if ok else "does not answer") if remote else "a local file the run makes"))
    storage = resolve(config.ray.storage)
    ok = report.check(preflight.check_storage, storage)
    report.add("storage", {"uri": storage.uri(), "local": storage.is_local, "ok": ok}, "storage",
               f"{storage.uri()}: " + ("a folder" if storage.is_local else "answers" if ok else "does not answer"))
    ok = report.check(check_data, config, make_plan(config))
    made = config.data.synthetic is not None and not Path(config.data.prepared).exists()
    report.add("data", {"prepared": config.data.prepared, "ok": ok}, "data", f"{config.data.prepared}: " + (
        "made from data.synthetic by the run" if made else "a prepared dataset" if ok else "not a prepared dataset"))
