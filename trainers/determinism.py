"""Same config and seed, same numbers, in any process and under any load (docs/running.md, Determinism;
docs/architecture.md, contract 8).

What made a CPU training differ from one process to the next, and what removes it:

- **MKL's products depend on where an operand starts in memory.** torch's CPU BLAS is MKL, which
  takes other code paths (and so sums in another order) for other alignments: a (7, 33) x (33, 45)
  product gave other last bits at 12 of 30 offsets. Where a tensor lands depends on what was
  allocated before it, so on timing, DataLoader workers and the machine's load; the differences then
  grow through training (the 4th digit of the first epoch's loss). MKL's conditional numerical
  reproducibility in strict mode (`MKL_CBWR=AUTO,STRICT`) makes a product the same wherever its
  operands lie; it cost nothing measurable on the coursework's decoder step (docs/PERFORMANCE.md).
  MKL reads it once, at its first call in a process, so `request()` sets it when `trainers` is
  imported, before any product (the CLI, each Ray worker and each DataLoader worker import it first).
- **Gradients summed with atomic adds.** Indexing's backward (`x[index]` with repeated rows, as a
  fine-tuned encoder's batch of several captions per image has) accumulates with atomic adds across
  threads on a CPU too: 2 results in 200 on 2 threads. trainers.batching gathers with `index_select`,
  whose gradient sums in order, and torch's deterministic algorithms are on, so any other op with
  such a path takes its ordered one (a warning names an op that has none).
- **oneDNN's convolutions** (a fine-tuned encoder): `torch.backends.mkldnn.deterministic`.

On a GPU, cuBLAS's workspaces and cuDNN's algorithm choice and atomics vary from run to run;
`train.deterministic: true` asks torch for deterministic algorithms there (slower), `auto` does not.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping, Optional

# Read by MKL at its first call, and by cuBLAS when it starts: set before either, in every process.
ENVIRONMENT = {"MKL_CBWR": "AUTO,STRICT", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
_MKL_CBWR_ALL, _MKL_CBWR_STRICT = -1, 0x10000  # mkl_cbwr_get's "every setting", and the strict bit


def request(environ: MutableMapping[str, str] = os.environ) -> None:
    """Ask for reproducible arithmetic in this process (and the processes it starts), unless the user
    chose otherwise in the environment (`MKL_CBWR=OFF` turns it off)."""
    for name, value in ENVIRONMENT.items():
        environ.setdefault(name, value)


def environment() -> dict[str, str]:
    """The variables `request` sets, as this process has them: what a Ray worker must get too."""
    return {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}


def mkl_strict() -> Optional[bool]:
    """Whether torch's MKL runs in strict reproducible mode now; None where torch's BLAS is not MKL."""
    import torch

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(library)).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
    return bool(get(_MKL_CBWR_ALL) & _MKL_CBWR_STRICT)


@dataclass(frozen=True)
class Determinism:
    """What a training promises: `reproducible` when the same config and seed give the same numbers."""

    reproducible: bool
    why: str  # what makes it so, or what does not

    def describe(self) -> str:
        return f"{'yes' if self.reproducible else 'no'}: {self.why}"


def apply(setting: str | bool, device_type: str, environ: Mapping[str, str] = os.environ) -> Determinism:
    """Make this process's training arithmetic reproducible as `train.deterministic` asks (`auto`: on a
    CPU yes, on a GPU not at the price of slower kernels), and say whether it is."""
    import torch
    import torch.utils.deterministic

    wanted = device_type == "cpu" if setting == "auto" else bool(setting)
    if not wanted:
        why = ("train.deterministic: auto leaves a GPU's kernels free to vary (cuBLAS, cuDNN, atomics); "
               "set it to true for reproducible GPU runs" if setting == "auto" else "train.deterministic: false")
        return Determinism(False, why)
    torch.backends.mkldnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # a debugging aid, not part of the promise: it costs
    if device_type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        if environ.get("CUBLAS_WORKSPACE_CONFIG") != ENVIRONMENT["CUBLAS_WORKSPACE_CONFIG"]:
            return Determinism(False, "cuBLAS started before CUBLAS_WORKSPACE_CONFIG was set")
        return Determinism(True, "torch's deterministic algorithms on the GPU (a warning names any op without one)")
    strict = mkl_strict()
    if strict is False:
        warnings.warn("MKL started before MKL_CBWR was set in this process: its products may differ from one "
                      "process to another (import trainers before anything computes, or export "
                      "MKL_CBWR=AUTO,STRICT)", RuntimeWarning, stacklevel=2)
        return Determinism(False, "MKL started before MKL_CBWR=AUTO,STRICT was set in this process")
    return Determinism(True, "MKL's strict reproducible products and torch's deterministic algorithms"
                             if strict else "torch's deterministic algorithms (torch's BLAS is not MKL here)")
