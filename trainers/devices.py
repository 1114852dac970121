"""Where a training runs: `train.device` resolved against what torch can use here, and why not.

A torch wheel runs CUDA only with an NVIDIA driver new enough for the CUDA it was built for; the
pinned torch 2.14.1 from PyPI is built for CUDA 13.0, which needs driver R580 or newer. On an older
driver `torch.cuda.is_available()` is simply False, and a GPU job would train on the CPU 10-50x
slower while reporting nothing. So:

- `cuda` with no usable CUDA fails at once: one line naming torch's version and CUDA build, the
  driver nvidia-smi reports (or that none answers), and the torch build to install for that driver;
- `auto` trains on the CPU, but says the same on stderr when nvidia-smi reports a GPU torch cannot use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Optional

import torch

from trainers.errors import InputError, first_line

NVIDIA_SMI_TIMEOUT_S = 5.0
# torch 2.14's CUDA builds, newest first: (CUDA, the oldest driver branch it runs on, the index tag at
# download.pytorch.org/whl/<tag>, the drivers to use it for). NVIDIA's minor-version compatibility:
# CUDA 13.x needs R580+, CUDA 12.x R525+. PyPI's torch 2.14.1 is the CUDA 13.0 build.
TORCH_CUDA_BUILDS = (("13.0", 580, "cu130", "R580+"), ("12.6", 525, "cu126", "R525-R575"))
DRIVER_FOR_CUDA = {"13": 580, "12": 525, "11": 450}  # a CUDA major version -> the oldest driver branch it runs on


class CudaUnavailable(InputError):
    """`train.device` is `cuda` and torch cannot use CUDA here; the message says why and what to install."""


def pick_device(name: str) -> torch.device:
    """`train.device` as a torch device: `cuda` only when usable (else CudaUnavailable, one line);
    `auto` is CUDA when usable, else the CPU, with a warning on stderr when a GPU is there unused."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        driver = driver_version()
        if driver is not None:  # a GPU node whose torch cannot use it: said, never silent
            print(f"warning: train.device is 'auto' and {cuda_diagnosis(driver)}; training on the CPU",
                  file=sys.stderr, flush=True)
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CudaUnavailable(f"train.device is 'cuda' but {cuda_diagnosis()}")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """A device as a run records it: `cpu`, or the CUDA device with its index (`cuda:0`)."""
    if device.type != "cuda":
        return device.type
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def torch_cuda_usable() -> bool:
    """Whether torch can run CUDA here (the GPUs CUDA_VISIBLE_DEVICES leaves, a driver new enough for its build)."""
    return torch.cuda.is_available()


def driver_version(timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> Optional[str]:
    """The NVIDIA driver's version as nvidia-smi reports it (e.g. 535.104.05); None when none answers."""
    return _nvidia_smi(timeout_s)[0]


def driver_status(timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> str:
    """The driver in words: `NVIDIA driver 535.104.05`, or why none answers."""
    version, reason = _nvidia_smi(timeout_s)
    return f"NVIDIA driver {version}" if version else f"no NVIDIA driver answers ({reason})"


def _nvidia_smi(timeout_s: float) -> tuple[Optional[str], str]:
    """(the driver version, or None, and why not). Bounded: a hung driver must not hang a trial."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None, "nvidia-smi not found"
    try:
        done = subprocess.run([program, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"nvidia-smi did not answer within {timeout_s:g} s"
    except OSError as error:
        return None, f"nvidia-smi did not run: {first_line(error)}"
    versions = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not versions:
        said = first_line(RuntimeError(done.stdout + done.stderr)) if (done.stdout + done.stderr).strip() else ""
        return None, f"nvidia-smi exited {done.returncode}" + (f": {said}" if said else "")
    return versions[0], ""


def torch_build() -> str:
    """torch's version and the CUDA it was built for: `torch 2.14.1+cu130 (built for CUDA 13.0)`."""
    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({f'built for CUDA {cuda}' if cuda else 'a CPU-only build'})"


def needed_driver(cuda: Optional[str] = None) -> Optional[int]:
    """The oldest driver branch (580 for R580) that runs torch's CUDA build; None for a CPU-only build."""
    cuda = cuda if cuda is not None else torch.version.cuda
    return DRIVER_FOR_CUDA.get(cuda.split(".")[0]) if cuda else None


def cuda_diagnosis(driver: Optional[str] = None) -> str:
    """Why torch cannot use CUDA here, in one line: torch's build, the driver, and the fix.

    `driver`: the version nvidia-smi reported, when the caller already asked it."""
    reason = ""
    if driver is None:
        driver, reason = _nvidia_smi(NVIDIA_SMI_TIMEOUT_S)
    need = needed_driver()
    build = torch_build() + (f", which needs NVIDIA driver R{need} or newer" if need else "")
    said = f"this node's NVIDIA driver is {driver}" if driver else f"no NVIDIA driver answers ({reason})"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None:
        said += f", CUDA_VISIBLE_DEVICES={hidden!r}"
    return f"torch cannot use CUDA here: {build}; {said}: {_fix(driver, need, hidden)}"


def _fix(driver: Optional[str], need: Optional[int], hidden: Optional[str]) -> str:
    """What to do about it, for this driver."""
    if hidden is not None and not hidden.strip(", "):
        return "CUDA_VISIBLE_DEVICES hides every GPU: unset it, or name one (CUDA_VISIBLE_DEVICES=0)"
    branch = _branch(driver)
    if branch is None:
        builds = [build for build in TORCH_CUDA_BUILDS if need is None or build[1] < need]
        return (f"run it on a node with an NVIDIA GPU and driver{f' R{need}+' if need else ''}, or set "
                f"train.device: cpu; for {'an older' if need else 'a'} driver install torch's build for it: "
                + "; ".join(f"{_install(build)} for {build[3]}" for build in builds))
    if need is not None and branch >= need:
        return (f"the driver is new enough, so in torch's words: {_torch_reason()} (nvidia-smi shows whether "
                "the GPU is in use, in MIG mode or faulty)")
    fitting = next((build for build in TORCH_CUDA_BUILDS if branch >= build[1]), None)
    if fitting is None:
        return (f"driver R{branch} is too old for any torch {_base(torch.__version__)} CUDA build: upgrade it to "
                f"R{TORCH_CUDA_BUILDS[-1][1]} or newer (R{TORCH_CUDA_BUILDS[0][1]}+ for the PyPI build)")
    return (f"install torch's CUDA {fitting[0]} build, made for {fitting[3]} drivers: {_install(fitting)}"
            + (f" (or upgrade the driver to R{need}+)" if need else ""))


def _install(build: tuple[str, int, str, str]) -> str:
    """The pip command that installs the pinned torch (and torchvision) built for `build`'s CUDA."""
    vision = _vision_version()
    packages = f"torch=={_base(torch.__version__)}" + (f" torchvision=={vision}" if vision else "")
    return f"pip install {packages} --index-url https://download.pytorch.org/whl/{build[2]}"


def _torch_reason() -> str:
    """torch's own first line on why CUDA does not initialise."""
    try:
        torch.cuda.init()
    except Exception as error:  # torch raises RuntimeError, AssertionError or its own types here
        return first_line(error)
    return "CUDA initialised on a second try"


def _branch(driver: Optional[str]) -> Optional[int]:
    """580 for driver 580.65.06; None when unknown."""
    try:
        return int(driver.split(".")[0]) if driver else None
    except ValueError:
        return None


def _base(version: str) -> str:
    """2.14.1 for 2.14.1+cu130."""
    return version.split("+")[0]


def _vision_version() -> Optional[str]:
    try:
        return _base(metadata.version("torchvision"))
    except metadata.PackageNotFoundError:
        return None
