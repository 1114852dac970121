"""What one training batch launches, counted the same way before and after a change.

A GPU kernel costs 5-10 µs to launch whatever it computes, so a step that launches thousands of
small kernels is bound by launches, not FLOPs: `ceiling` turns a count into the captions/s it caps.

- `dispatched(step)`: the aten ops an eager step dispatches, views and other metadata-only ops left
  out (torch's dispatcher sees each once; on a GPU each is a kernel launch, or more).
- `profiled(step, device)`: under torch.profiler. On a GPU, the launches the CUDA runtime saw: kernel
  launches and CUDA-graph replays. On a CPU, the kernels that ran, split into those inside compiled
  graphs (inductor's generated kernels and the library calls it makes) and those outside them, and
  the compiled graphs called: a graph captured by CUDA graphs (`train.compile` on a GPU) replays with
  one launch, so `outside + graph calls` is what the step launches with CUDA graphs, and
  `outside + inside` what it launches without.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only describe a tensor anew (views, reshapes, allocations) or move it between devices:
# they launch no compute kernel.
METADATA = {"view", "as_strided", "expand", "t", "transpose", "select", "slice", "unsqueeze", "squeeze", "permute",
            "reshape", "alias", "split", "split_with_sizes", "chunk", "unbind", "narrow", "detach", "detach_",
            "_unsafe_view", "_reshape_alias", "resolve_conj", "resolve_neg", "empty", "empty_strided", "empty_like",
            "lift_fresh", "contiguous", "to", "_to_copy", "result_type", "set_", "is_nonzero", "item",
            "_local_scalar_dense", "expand_as", "view_as", "unsafe_split", "unflatten", "flatten", "zeros",
            "zeros_like", "ones", "ones_like", "full", "new_zeros", "new_empty", "new_full", "record_stream"}
RUNTIME_KERNEL_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC",
                           "cudaLaunchCooperativeKernel")
RUNTIME_GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")
COMPILED_REGIONS = ("Torch-Compiled Region", "CompiledFunction")  # forward and backward of a compiled graph
GRAPH_CALL = "## Call CompiledFxGraph"
FOREACH = "aten::_foreach_"  # a multi-tensor op: one kernel launch for all its tensors on a GPU, one per tensor here


def _is_metadata(name: str) -> bool:
    return name.split("::")[-1].split(".")[0] in METADATA


class DispatchCounter(TorchDispatchMode):
    """Counts the non-metadata aten ops dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not _is_metadata(func.overloadpacket.__name__):
            self.ops += 1
        return func(*args, **(kwargs or {}))


def dispatched(step: Callable[[], object]) -> int:
    """Non-metadata aten ops one call of `step` dispatches (eager code only)."""
    with DispatchCounter() as counter:
        step()
    return counter.ops


def profiled(step: Callable[[], object], device: torch.device) -> dict:
    """One call of `step` under the profiler: launches on a GPU, kernels and graph calls on a CPU."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}), profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    graph_calls = sum(e.name.startswith(GRAPH_CALL) for e in events)
    if device.type == "cuda":
        kernels = sum(e.name in RUNTIME_KERNEL_LAUNCHES for e in events)
        graphs = sum(e.name in RUNTIME_GRAPH_LAUNCHES for e in events)
        return {"kernel_launches": kernels, "graph_launches": graphs, "launches": kernels + graphs,
                "compiled_graph_calls": graph_calls}
    inside = outside = 0
    for event in events:
        if not _is_kernel(event) or _within(event, (FOREACH,)):
            continue  # not a kernel, or one a multi-tensor op runs (one launch on a GPU, counted there)
        if not event.name.startswith(FOREACH) and any(_is_kernel(child) for child in event.cpu_children):
            continue  # an op that runs others, which are counted themselves
        if _within(event, COMPILED_REGIONS):
            inside += 1
        else:
            outside += 1
    return {"kernels_outside_graphs": outside, "kernels_inside_graphs": inside, "compiled_graph_calls": graph_calls,
            "launches_without_cuda_graphs": outside + inside,
            "launches_with_cuda_graphs": outside + graph_calls if graph_calls else outside + inside}


def _is_kernel(event) -> bool:
    """An inductor-generated kernel, or an aten op that computes (not a view or an allocation)."""
    name = event.name
    return "cpp_fused" in name or name.startswith("triton_") or (name.startswith("aten::") and not _is_metadata(name))


def _within(event, regions: tuple[str, ...]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if any(region in parent.name for region in regions):
            return True
        parent = parent.cpu_parent
    return False


def ceiling(launches: int, captions_per_batch: int, microseconds: float) -> float:
    """Captions/s a step of `launches` launches can reach at `microseconds` per launch, however fast
    its kernels: the launch-bound ceiling."""
    return round(captions_per_batch / (launches * microseconds * 1e-6), 1) if launches else float("inf")
