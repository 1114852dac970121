"""Reservations mean what they say: a trial trains on the device Ray reserved for it (its GPU, or the
CPU with CUDA hidden), and `orch run` refuses, before it writes anything, a plan whose trials reserve
a GPU the Ray cluster does not have (unless the cluster autoscales).

The unit tests fake Ray's answers (its assigned resources, its cluster's resources); the integration
tests ask a real local Ray, one with a declared GPU (Ray only counts it), one with none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import ray
import torch

from orchestrator.cluster import launcher as launch_module
from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.settings import RunSettings
from orchestrator.cluster.launcher import check_gpus, run_plan, trainer_base
from orchestrator.experiment.plan import make_plan
from orchestrator.cluster.preflight import PreflightError, check_cluster_gpus
from orchestrator.cluster.trainable import hide_unreserved_gpus, reserved_device
from tests.orchestrator.conftest import REPO_ROOT, write_yaml

NO_GPU_HERE = pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use CUDA on this machine")


# ---------------------------------------------------------------------- the trial's own device
def test_a_trial_without_a_gpu_runs_with_cuda_hidden(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hide_unreserved_gpus({"CPU": 1.0})  # what Ray assigns a 0-GPU trial: no GPU key at all
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert reserved_device({"CPU": 1.0}) == "cpu"


@pytest.mark.parametrize("gpu", [0.25, 0.5, 1.0])
def test_a_trial_with_a_gpu_keeps_the_one_ray_gave_it_and_trains_on_cuda(monkeypatch, gpu):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # set by Ray for a task with GPUs
    hide_unreserved_gpus({"CPU": 4.0, "GPU": gpu})
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert reserved_device({"CPU": 4.0, "GPU": gpu}) == "cuda"


@pytest.mark.parametrize("gpu, device", [(0, "cpu"), (0.5, "cuda"), (1, "cuda")])
def test_the_trials_base_config_says_the_reserved_device(gpu, device):
    config = ExperimentConfig.model_validate({"resources": {"gpu": gpu}}, context={"check_files": False})
    assert trainer_base(config)["train"]["device"] == device  # what every trial starts from, and MLflow records


# ------------------------------------------------------------------- the cluster's GPUs, before the run
def test_a_local_ray_without_gpus_is_named_with_both_figures_and_the_keys():
    with pytest.raises(PreflightError) as raised:
        check_cluster_gpus(1.0, {"CPU": 2.0}, "local")
    assert str(raised.value) == (
        "resources.gpu: 1 per trial, but the local Ray on this machine (ray.address: null) has 0 GPUs: run on a "
        "machine with a GPU, join a GPU cluster (--address or ray.address), or set resources.gpu: 0 to train on "
        "CPUs. Nothing was started.")


def test_a_joined_cluster_without_enough_gpus_points_at_autoscaling_too():
    with pytest.raises(PreflightError) as raised:
        check_cluster_gpus(0.5, {"CPU": 64.0, "GPU": 0.0}, "10.0.0.5:6379", "--address")
    assert str(raised.value) == (
        "resources.gpu: 0.5 per trial, but the Ray cluster at 10.0.0.5:6379 (--address) has 0 GPUs: join a cluster "
        "with GPU nodes, set resources.gpu: 0 to train on CPUs, or set ray.autoscaling: true if its autoscaler adds "
        "GPU nodes on demand. Nothing was started.")


def test_a_cluster_with_the_gpus_passes():
    check_cluster_gpus(1.0, {"CPU": 16.0, "GPU": 8.0}, "head:6379", "ray.address")
    check_cluster_gpus(0.0, {"CPU": 2.0}, "local")  # nothing reserved, nothing to count


@NO_GPU_HERE
def test_a_local_gpu_torch_cannot_use_is_diagnosed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(PreflightError) as raised:
        check_cluster_gpus(0.5, {"CPU": 8.0, "GPU": 1.0}, "local")  # Ray counts a GPU; this torch cannot use it
    message = str(raised.value)
    assert message.startswith("resources.gpu: 0.5 per trial, but torch cannot use CUDA here: torch ")
    assert "no NVIDIA driver answers (nvidia-smi not found)" in message and "\n" not in message


class FakeRay:
    """ray's init / is_initialized / cluster_resources / shutdown, recorded; the cluster has `resources`."""

    def __init__(self, resources: dict):
        self.resources, self.calls, self.up = resources, [], False

    def install(self, monkeypatch) -> "FakeRay":
        for name in ("init", "is_initialized", "cluster_resources", "shutdown"):
            monkeypatch.setattr(ray, name, getattr(self, name))
        return self

    def init(self, **kwargs):
        self.calls.append(("init", kwargs["address"]))
        self.up = True

    def is_initialized(self):
        return self.up

    def cluster_resources(self):
        self.calls.append(("cluster_resources",))
        return self.resources

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.up = False


def experiment(tiny_experiment, tmp_path: Path, **sections) -> ExperimentConfig:
    from orchestrator.experiment.loader import load_config

    return load_config(write_yaml(tmp_path / "gpu.yaml", tiny_experiment("gpu", tmp_path / "results", **sections)))


def test_too_few_gpus_stop_the_run_before_its_folder_or_mlflow_and_the_ray_it_started_stops(
        tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = FakeRay({"CPU": 2.0}).install(monkeypatch)
    monkeypatch.setattr(launch_module, "_run", lambda *args: pytest.fail("the run went on"))
    config = experiment(tiny_experiment, tmp_path, resources={"gpu": 1})
    with pytest.raises(PreflightError, match=r"^resources.gpu: 1 per trial, but the local Ray on this machine"):
        run_plan(RunSettings.resolve(config), make_plan(config), console=None)
    assert fake.calls == [("init", "local"), ("cluster_resources",), ("shutdown",)]
    assert not (tmp_path / "results").exists()  # no invocation folder, no mlflow.db


def test_a_ray_the_check_did_not_start_is_left_running(tiny_experiment, tmp_path, monkeypatch):
    fake = FakeRay({"CPU": 2.0}).install(monkeypatch)
    fake.up = True  # already up (a notebook, the tests' session Ray)
    config = experiment(tiny_experiment, tmp_path, resources={"gpu": 0.5})
    with pytest.raises(PreflightError):
        check_gpus(RunSettings.resolve(config))
    assert fake.calls == [("cluster_resources",)]


@pytest.mark.parametrize("sections", [{"resources": {"gpu": 0}},
                                      {"resources": {"gpu": 1}, "ray": {"autoscaling": True}}])
def test_no_gpu_reserved_or_an_autoscaling_cluster_skip_the_count(tiny_experiment, tmp_path, monkeypatch, sections):
    fake = FakeRay({"CPU": 2.0}).install(monkeypatch)
    config = experiment(tiny_experiment, tmp_path, **sections)
    check_gpus(RunSettings.resolve(config))
    assert fake.calls == []  # Ray not even started: the run starts it when its first study does


def test_orch_run_says_it_in_one_line_and_exits_2(orch, tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    FakeRay({"CPU": 2.0}).install(monkeypatch)
    config = write_yaml(tmp_path / "gpu.yaml", tiny_experiment("gpu", Path("results")))
    result = orch("run", config, "resources.gpu=1")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: resources.gpu: 1 per trial, but the local Ray on this machine (ray.address: null) has "
                      "0 GPUs: run on a machine with a GPU, join a GPU cluster (--address or ray.address), or set "
                      "resources.gpu: 0 to train on CPUs. Nothing was started."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.yaml"]


def test_the_dry_run_shows_each_trials_gpu_and_device(orch, tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "gpu.yaml", tiny_experiment("gpu", Path("results")))
    on_gpu = orch("run", config, "resources.gpu=0.25", "ray.autoscaling=true", "--dry-run")
    assert on_gpu.exit_code == 0, on_gpu.output
    assert "gpu 0.25/trial: up to 4 trials per GPU (each trains on cuda)" in on_gpu.output
    assert "(autoscaling: its GPUs are not counted before the run)" in on_gpu.output
    on_cpu = orch("run", config, "--dry-run")
    assert "cpu 1/trial, no GPU (each trial trains on the CPU, CUDA hidden)" in on_cpu.output


@NO_GPU_HERE
def test_orch_train_on_cuda_without_cuda_is_one_line_before_anything_is_written(orch, tiny_experiment, tmp_path,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "one.yaml", tiny_experiment("one", Path("results")))
    result = orch("train", config, "train.device=cuda")
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error: train.device is 'cuda' but torch cannot use CUDA here: torch ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.yaml"]


# ------------------------------------------------------------------------------ a real local Ray
def run_python(code: str, tmp_path: Path) -> dict:
    """`code` in a fresh Python with its own Ray temp folder (no other Ray on this machine is touched);
    the JSON object it prints last."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="orchgpu", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**env, "RAY_TMPDIR": str(ray_tmp),
                                                           "PYTHONPATH": str(REPO_ROOT)})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.integration
def test_ray_tasks_get_the_device_of_their_reservation(tmp_path):
    """Ray declares one GPU here (it only counts it): a 0-GPU task sees CUDA hidden and trains on the CPU;
    a half-GPU task keeps the GPU Ray gives it and trains on cuda."""
    seen = run_python("""
        import json, os, ray
        from orchestrator.cluster.trainable import _assigned_resources, hide_unreserved_gpus, reserved_device

        def trial():
            assigned = _assigned_resources()
            hide_unreserved_gpus(assigned)
            return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": reserved_device(assigned)}

        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
        print(json.dumps({str(gpu): ray.get(ray.remote(num_cpus=1, num_gpus=gpu)(trial).remote())
                          for gpu in (0, 0.5)}))
    """, tmp_path)
    assert seen == {"0": {"visible": "", "device": "cpu"}, "0.5": {"visible": "0", "device": "cuda"}}


@pytest.mark.integration
def test_a_real_local_ray_without_gpus_refuses_a_gpu_plan_and_is_shut_down(tiny_experiment, tmp_path):
    config = write_yaml(tmp_path / "gpu.yaml", tiny_experiment("gpu", tmp_path / "results", resources={"gpu": 1}))
    seen = run_python(f"""
        import json, ray
        from orchestrator.experiment.loader import load_config
        from orchestrator.cluster.launcher import run_plan
        from orchestrator.experiment.plan import make_plan
        from orchestrator.settings import RunSettings
        from trainers.errors import InputError

        config = load_config({str(config)!r})
        try:
            run_plan(RunSettings.resolve(config), make_plan(config), console=None)
            said = None
        except InputError as error:
            said = str(error)
        print(json.dumps({{"error": said, "ray_up": ray.is_initialized()}}))
    """, tmp_path)
    assert seen["error"].startswith("resources.gpu: 1 per trial, but the local Ray on this machine (ray.address: "
                                    "null) has 0 GPUs: ")
    assert seen["ray_up"] is False
    assert not (tmp_path / "results").exists()
