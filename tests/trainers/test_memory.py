"""reuse_freed_memory: big per-step tensors come back from the heap instead of fresh mmaps."""

import ctypes.util
import subprocess
import sys
import textwrap

import pytest

GLIBC = ctypes.util.find_library("c") is not None and hasattr(ctypes.CDLL(ctypes.util.find_library("c")),
                                                             "gnu_get_libc_version")

# Allocates and frees a 77 MB tensor (a batch-64 beam step's attention energies) 10 times to settle
# the heap, then 20 times more, and prints the minor page faults of those 20: with the thresholds
# raised the memory is reused, so the steady state faults in no new pages.
PROGRAM = textwrap.dedent("""
    import resource, sys, torch
    if sys.argv[1] == "reuse":
        from trainers.memory import reuse_freed_memory
        assert reuse_freed_memory()
    for _ in range(10):
        torch.ones(64 * 3, 196, 512)  # (B*K, P, A) float32: 77 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(64 * 3, 196, 512)  # (B*K, P, A) float32: 77 MB
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="the mmap/trim thresholds are glibc's")
def test_repeated_large_tensors_stop_faulting_in_fresh_pages():
    default, reuse = _page_faults("default"), _page_faults("reuse")
    pages_per_tensor = 64 * 3 * 196 * 512 * 4 // 4096
    assert default > 15 * pages_per_tensor  # every allocation maps and faults in new pages
    assert reuse < pages_per_tensor  # not even one tensor's worth: the heap is reused
