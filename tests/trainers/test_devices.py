"""No silent CPU: `train.device: cuda` without a usable CUDA fails at once in one line that names
torch's build, the driver and the torch to install; `auto` says the same on stderr and goes on on
the CPU. The driver is a fake `nvidia-smi` on PATH (or none at all); torch really has no CUDA here."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from trainers.devices import CudaUnavailable, cuda_diagnosis, driver_status, pick_device
from trainers.errors import InputError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="torch can use CUDA here: nothing to diagnose")

TORCH = torch.__version__.split("+")[0]


def fake_nvidia_smi(folder: Path, script: str) -> Path:
    """An executable `nvidia-smi` in `folder` running `script` (sh)."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "nvidia-smi"
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    return folder


@pytest.fixture
def no_driver(tmp_path, monkeypatch):
    """A PATH without nvidia-smi, and no CUDA_VISIBLE_DEVICES."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """driver("535.104.05"): a fake nvidia-smi that reports that driver, alone on PATH."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(version: str) -> None:
        monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", f"echo {version}")))

    return install


def test_cuda_without_a_driver_is_one_line_naming_torch_its_cuda_build_and_the_fix(no_driver):
    with pytest.raises(CudaUnavailable) as raised:
        pick_device("cuda")
    message = str(raised.value)
    assert isinstance(raised.value, InputError)  # the CLI's one line and exit code 2
    assert "\n" not in message
    assert message.startswith("train.device is 'cuda' but torch cannot use CUDA here: ")
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    assert f"torch {torch.__version__} ({built})" in message
    assert "no NVIDIA driver answers (nvidia-smi not found)" in message
    assert f"pip install torch=={TORCH} torchvision==" in message
    assert "--index-url https://download.pytorch.org/whl/" in message


def test_an_old_driver_is_named_with_the_torch_build_made_for_it(driver, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # PyPI's torch 2.14.1
    driver("535.104.05")
    with pytest.raises(CudaUnavailable) as raised:
        pick_device("cuda")
    message = str(raised.value)
    assert "\n" not in message
    assert "(built for CUDA 13.0), which needs NVIDIA driver R580 or newer" in message
    assert "this node's NVIDIA driver is 535.104.05" in message
    assert (f"install torch's CUDA 12.6 build, made for R525-R575 drivers: pip install torch=={TORCH} torchvision=="
            in message)
    assert message.endswith("--index-url https://download.pytorch.org/whl/cu126 (or upgrade the driver to R580+)")


def test_a_cpu_only_torch_on_a_new_driver_is_told_to_install_the_cuda_build(driver, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    driver("580.65.06")
    message = cuda_diagnosis()
    assert "(a CPU-only build)" in message and "this node's NVIDIA driver is 580.65.06" in message
    assert message.endswith("--index-url https://download.pytorch.org/whl/cu130")


def test_a_driver_too_old_for_every_build_is_told_to_upgrade(driver, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    driver("470.256.02")
    assert cuda_diagnosis().endswith("driver R470 is too old for any torch "
                                     f"{TORCH} CUDA build: upgrade it to R525 or newer (R580+ for the PyPI build)")


def test_hidden_gpus_are_named(driver, monkeypatch):
    driver("580.65.06")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_diagnosis().endswith("this node's NVIDIA driver is 580.65.06, CUDA_VISIBLE_DEVICES='': "
                                     "CUDA_VISIBLE_DEVICES hides every GPU: unset it, or name one "
                                     "(CUDA_VISIBLE_DEVICES=0)")


def test_a_hung_nvidia_smi_is_given_up_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", f"exec {shutil.which('sleep')} 120")))
    started = time.monotonic()
    assert driver_status(timeout_s=0.5) == "no NVIDIA driver answers (nvidia-smi did not answer within 0.5 s)"
    assert time.monotonic() - started < 60  # given up on, not waited out, with room for a loaded machine


def test_a_failing_nvidia_smi_says_what_it_said(tmp_path, monkeypatch):
    script = "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9"
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", script)))
    assert driver_status() == ("no NVIDIA driver answers (nvidia-smi exited 9: NVIDIA-SMI has failed because it "
                               "could not communicate with the NVIDIA driver.)")


def test_auto_warns_in_one_line_when_a_gpu_is_there_but_unusable(driver, capsys):
    driver("535.104.05")
    assert pick_device("auto") == torch.device("cpu")
    said = capsys.readouterr()
    assert said.out == ""
    (line,) = said.err.splitlines()
    assert line.startswith("warning: train.device is 'auto' and torch cannot use CUDA here: ")
    assert "this node's NVIDIA driver is 535.104.05" in line and line.endswith("; training on the CPU")


def test_auto_on_a_machine_without_a_gpu_trains_on_the_cpu_quietly(no_driver, capsys):
    assert pick_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""


def test_cpu_is_the_cpu():
    assert pick_device("cpu") == torch.device("cpu")
