"""benchmarks/gpu.sh's verdicts, checked on the CPU: without CUDA it fails at once, in one line; a test
step in which no test passed fails, though pytest exits 0 when every test is skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_pytest", ROOT / "benchmarks" / "gpu_pytest.py")
gpu_pytest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_pytest)


def counts(passed=0, failed=0, errors=0, skip_reasons=None):
    skip_reasons = skip_reasons or {}
    skipped = sum(skip_reasons.values())
    return {"collected": passed + failed + errors + skipped, "passed": passed, "failed": failed, "errors": errors,
            "skipped": skipped, "skip_reasons": skip_reasons}


@pytest.mark.parametrize("dry_run", [False, True])
def test_every_test_skipped_is_a_failure(dry_run):
    ok, line = gpu_pytest.verdict(0, counts(skip_reasons={"scores captions: needs pycocoevalcap": 2}), dry_run)
    assert not ok and line.startswith("every test was skipped (2)")


def test_skipped_for_want_of_cuda_passes_only_the_dry_run():
    no_cuda = counts(skip_reasons={gpu_pytest.NO_CUDA_REASON: 198})
    assert gpu_pytest.verdict(0, no_cuda, dry_run=True)[0]
    assert not gpu_pytest.verdict(0, no_cuda, dry_run=False)[0]


def test_some_passed_and_some_skipped_passes_naming_the_skips():
    ok, line = gpu_pytest.verdict(0, counts(passed=196, skip_reasons={"needs Java": 2}), dry_run=False)
    assert ok and line == "196 passed; skipped: 2 x 'needs Java'"


def test_a_failure_or_nothing_collected_fails():
    assert not gpu_pytest.verdict(1, counts(passed=3, failed=1), dry_run=False)[0]
    assert not gpu_pytest.verdict(5, counts(), dry_run=True)[0]


def test_a_pytest_run_whose_tests_all_skip_exits_1(tmp_path):
    tests = tmp_path / "test_skipping.py"
    tests.write_text("import pytest\n\n\n@pytest.mark.skip(reason='not here')\ndef test_a():\n    pass\n\n\n"
                     "def test_b():\n    pytest.skip('nor here')\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_pytest.py"), "--junit",
                           str(tmp_path / "junit.xml"), str(tests)], capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout)
    assert done.returncode == 1 and result["exit"] == 0  # pytest itself said 0
    assert result["skipped"] == 2 and result["verdict"] == "failed"
    assert result["skip_reasons"] == {"not here": 1, "nor here": 1}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_sh_without_cuda_exits_1_in_one_line_after_naming_the_machine(tmp_path):
    env = {**os.environ, "ORCH_GPU_OUT": str(tmp_path / "out"), "ORCH_GPU_WHEELS": str(tmp_path / "no-wheels"),
           "PYTHON": sys.executable, "ORCH_GPU_DRY": "0"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1
    assert [line.split(":")[0] for line in lines[:3]] == ["device", "driver", "torch"]
    assert lines[-1].startswith("gpu.sh: no usable CUDA device: torch cannot use CUDA here: torch ")
    assert len(lines) == 4 and not (tmp_path / "out" / "gpu.json").exists()  # nothing measured
