"""`orch env`: the environment a run would get, said plainly (no GPU here is said as such), as text
or one JSON object; with a config, exit 2 and the failing line when a need is not met. The driver is
a fake `nvidia-smi` on PATH, or none; the Ray cluster is the local Ray a run would start (counted,
not started), or the tests' session Ray (integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.orchestrator.conftest import free_port, write_yaml
from tests.trainers.test_devices import fake_nvidia_smi

NO_GPU_HERE = pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use CUDA on this machine")


@pytest.fixture
def no_driver(tmp_path, monkeypatch):
    (tmp_path / "no-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    for name in ("CUDA_VISIBLE_DEVICES", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def lines(output: str) -> dict[str, str]:
    """The report's `label  text` lines as {label: text}; error lines are left out."""
    found = {}
    for line in output.splitlines():
        if not line.startswith("error:"):
            label, _, text = line.partition("  ")
            found[label] = text.strip()
    return found


@NO_GPU_HERE
def test_without_a_gpu_it_says_so_plainly(orch, no_driver):
    result = orch("env")
    assert result.exit_code == 0, result.output
    shown = lines(result.output)
    assert list(shown) == ["python", "torch", "driver", "GPUs", "bf16", "ray"]
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    assert shown["torch"].startswith(f"{torch.__version__}, {built}")
    assert shown["driver"] == "no NVIDIA driver answers (nvidia-smi not found)"
    assert shown["GPUs"] == "none: no GPU that torch can use on this machine (CUDA_VISIBLE_DEVICES unset)"
    assert shown["bf16"] == "no (train.amp auto trains in fp32 on the CPU)"


@NO_GPU_HERE
def test_a_gpu_torch_cannot_use_is_diagnosed(orch, no_driver, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", "echo 535.104.05")))
    shown = lines(orch("env").output)
    assert shown["driver"] == "NVIDIA driver 535.104.05"
    assert shown["GPUs"].startswith("none usable: torch cannot use CUDA here: torch ")
    assert "this node's NVIDIA driver is 535.104.05" in shown["GPUs"]


@NO_GPU_HERE
def test_json_is_one_object_of_the_same_facts(orch, no_driver):
    result = orch("env", "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["torch"]["version"] == torch.__version__ and facts["torch"]["cuda"] == torch.version.cuda
    assert (facts["driver"], facts["gpus"], facts["bf16"], facts["cuda_visible_devices"]) == (None, [], False, None)
    assert facts["ok"] is True and facts["problems"] == [] and "cluster" not in facts


@NO_GPU_HERE
def test_a_config_reserving_a_gpu_here_exits_2_with_the_failing_line(orch, no_driver, tiny_experiment, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "gpu.yaml", tiny_experiment("gpu", Path("results")))
    fine = orch("env", config)
    assert fine.exit_code == 0, fine.output
    shown = lines(fine.output)
    assert shown["cluster"].startswith("a local Ray on this machine (ray.address: null) would get ")
    assert shown["cluster"].endswith(" CPUs and 0 GPUs")
    assert shown["trial"] == "resources.cpu 1, resources.gpu 0: trains on the CPU, CUDA hidden"
    assert shown["tracking"].endswith(": a local file the run makes") and shown["data"].endswith(": a prepared dataset")

    refused = orch("env", config, "resources.gpu=1")
    assert refused.exit_code == 2
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: resources.gpu: 1 per trial, but the local Ray on this machine (ray.address: null) has "
                      "0 GPUs: run on a machine with a GPU, join a GPU cluster (--address or ray.address), or set "
                      "resources.gpu: 0 to train on CPUs. Nothing was started."]
    facts = json.loads(orch("env", config, "resources.gpu=1", "--json").stdout)
    assert facts["ok"] is False and facts["problems"] == [errors[0].removeprefix("error: ")]
    assert facts["cluster"]["gpus"] == 0 and facts["resources"]["gpu"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "no-bin") == ["gpu.yaml"]  # nothing written


def test_an_unreachable_tracking_server_is_the_failing_line(orch, no_driver, tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "x.yaml", tiny_experiment("x", Path("results")))
    uri = f"http://127.0.0.1:{free_port()}"
    result = orch("env", config, f"tracking.uri={uri}")
    assert result.exit_code == 2
    assert lines(result.output)["tracking"] == f"{uri}: does not answer"
    assert f"error: tracking.uri: cannot reach the MLflow server at {uri}" in result.output


def test_an_autoscaling_cluster_is_not_counted(orch, no_driver, tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "x.yaml", tiny_experiment("x", Path("results")))
    result = orch("env", config, "resources.gpu=0.5", "ray.autoscaling=true")
    assert result.exit_code == 0, result.output
    assert lines(result.output)["trial"] == ("resources.cpu 1, resources.gpu 0.5: trains on cuda; ray.autoscaling: "
                                             "its GPUs are not counted")


@pytest.mark.integration
def test_an_address_is_joined_and_its_resources_read(orch, no_driver, local_ray, tiny_experiment, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    facts = json.loads(orch("env", "--address", local_ray, "--json").stdout)
    assert facts["cluster"] == {"address": local_ray, "source": "--address", "cpus": 2.0, "gpus": 0.0}
    config = write_yaml(tmp_path / "x.yaml", tiny_experiment("x", Path("results")))
    refused = orch("env", config, "resources.gpu=0.5", "--address", local_ray)
    assert refused.exit_code == 2
    assert (f"error: resources.gpu: 0.5 per trial, but the Ray cluster at {local_ray} (--address) has 0 GPUs: "
            in refused.output)
    closed = orch("env", "--address", f"127.0.0.1:{free_port()}")
    assert closed.exit_code == 2 and "error: --address: no Ray cluster answers at 127.0.0.1:" in closed.output
