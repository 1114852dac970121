"""Same config and seed, same numbers, in another process and beside a busy one (trainers.determinism).

Each training runs in a fresh Python, as `orch train` and every trial do: a process's first matrix
product fixes how MKL computes, so only separate processes show whether the numbers repeat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import tiny_trainer_dict

REPO = Path(__file__).resolve().parents[2]


def python(code: str, environ: dict | None = None, timeout: float = 600) -> dict:
    """The JSON object `code` prints last, run in a fresh Python; `environ` adds variables (None removes one)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(environ or {})}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={k: v for k, v in env.items() if v is not None})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PRODUCTS = """
    import json{first}
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x, w, b = torch.randn(7, 33), torch.randn(45, 33), torch.randn(45)
    results = []
    for offset in range(16):  # the same input, starting at 16 places in memory
        buffer = torch.empty(x.numel() + offset)
        moved = buffer[offset:].view(7, 33)
        moved.copy_(x)
        results.append(F.linear(moved, w, b))
    print(json.dumps({{"differ": sum(not torch.equal(r, results[0]) for r in results)}}))
"""


def test_a_product_is_the_same_wherever_its_operand_lies_once_trainers_is_imported():
    assert python(PRODUCTS.format(first="\n    import trainers"))["differ"] == 0


def test_without_mkls_strict_mode_the_same_product_gives_other_bits():
    """What trainers.determinism removes: with MKL's reproducibility off, where an operand starts in
    memory changes the result (on this CPU's MKL; where it does not, there is nothing to show)."""
    differ = python(PRODUCTS.format(first=""), {"MKL_CBWR": None})["differ"]  # MKL's default, as before orch set it
    if differ == 0:
        pytest.skip("this CPU's MKL gives the same bits at every alignment even without strict mode")
    assert differ > 0


TRAIN = """
    import json, sys
    from pathlib import Path
    from trainers.config import TrainerConfig
    from trainers.checkpoint import load_checkpoint
    from trainers.training import run_training

    config = TrainerConfig.model_validate(json.loads(sys.argv[1]))
    final = run_training(config, Path(sys.argv[2]))
    history = load_checkpoint(Path(sys.argv[2]) / "checkpoint").training_state()["history"]
    measured = ("epoch_time_s", "checkpoint_time_s")
    print(json.dumps({"history": [{k: v for k, v in epoch.items() if k not in measured} for epoch in history],
                      "test": {k: v for k, v in final.metrics.items() if k.startswith("test_")},
                      "deterministic": final.deterministic}))
"""


def train_in_a_new_process(config: dict, run_dir: Path, busy: bool) -> dict:
    """One training in a fresh Python; `busy`: beside a process that keeps a core busy all along."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN), json.dumps(config), str(run_dir)],
                              capture_output=True, text=True, timeout=900, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model, data", [({"fine_tune": False}, {"num_workers": 0}),
                                         ({"fine_tune": True}, {"num_workers": 1})],
                         ids=["frozen-no-workers", "fine-tuned-one-worker"])
def test_a_training_repeats_bit_for_bit_in_another_process_beside_a_busy_one(prepared_dir, tmp_path, model, data):
    config = tiny_trainer_dict(prepared_dir, model=model, data=data, train={"epochs": 2},
                               eval={"val_images": 4})
    quiet = train_in_a_new_process(config, tmp_path / "quiet", busy=False)
    loaded = train_in_a_new_process(config, tmp_path / "loaded", busy=True)
    assert quiet["deterministic"].startswith("yes")
    assert loaded["history"] == quiet["history"]  # every epoch's losses and val scores, bit for bit
    assert loaded["test"] == quiet["test"]


def test_the_switch_says_what_a_training_promises():
    from trainers import determinism

    assert determinism.apply("auto", "cpu").reproducible
    assert not determinism.apply(False, "cpu").reproducible
    gpu = determinism.apply("auto", "cuda")  # asks nothing of torch: a GPU's kernels stay free
    assert not gpu.reproducible and "set it to true" in gpu.why


def test_a_process_whose_mkl_started_first_is_told_its_products_may_vary():
    said = python("""
        import json, warnings
        import torch
        torch.randn(4, 4) @ torch.randn(4, 4)  # MKL starts here, before trainers asks for strict mode
        from trainers import determinism
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = determinism.apply("auto", "cpu")
        print(json.dumps({"strict": determinism.mkl_strict(), "reproducible": found.reproducible,
                          "warned": [str(w.message) for w in caught]}))
    """, {"MKL_CBWR": ""})
    if said["strict"] is None:
        pytest.skip("torch's BLAS is not MKL here")
    assert said == {"strict": False, "reproducible": False, "warned": [said["warned"][0]]}
    assert said["warned"][0].startswith("MKL started before MKL_CBWR was set")
