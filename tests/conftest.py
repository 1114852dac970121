"""Fixtures every test package shares: a tiny synthetic dataset and a tiny trainer config."""

from __future__ import annotations

import os

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import configuration, settings
from hypothesis.database import InMemoryExampleDatabase

from trainers.data.synthetic import write_synthetic_dataset

# Hypothesis keeps what it finds in memory and its caches in a temporary folder, not in a
# `.hypothesis/` folder of the checkout: tests write only under temporary folders.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="orch-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("orch", database=InMemoryExampleDatabase())
settings.load_profile("orch")


@pytest.fixture(scope="session", autouse=True)
def driver_state_in_a_temporary_folder(tmp_path_factory):
    """What a driver keeps on local disk for a bucket storage (orchestrator.locations.driver_folder) goes
    to a folder of the session, never the user's ~/.local/state; subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORCH_STATE_DIR", str(tmp_path_factory.mktemp("orch-state")))
        yield


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray (2 CPUs) for the in-process runs; `orch run` sees it is up and joins it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def meteor_freed_after_the_module():
    """The METEOR JVM a scoring module's tests start (1 GB) ends with the module rather than at exit, so
    a mutation tester's forks do not all inherit one from its first run."""
    from trainers.metrics import stop_meteor

    yield
    stop_meteor()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """orch synth output, 40 images of 32 px (32 train, 4 val, 4 test)."""
    out = tmp_path_factory.mktemp("synth") / "synth"
    write_synthetic_dataset(out, n=40, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_dir(synth_dir, tmp_path_factory) -> Path:
    from trainers.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_dataset(synth_dir / "dataset.json", synth_dir, out, min_word_freq=1, max_len=30, image_size=32)
    return out


def tiny_trainer_dict(prepared: Path, **sections) -> dict:
    """A trainer config small enough to train in seconds on one CPU core."""
    config = {
        "name": "tiny",
        "data": {"prepared": str(prepared), "image_size": 32, "num_workers": 0},
        "model": {"encoder": "resnet18", "weights": "none", "fine_tune": False, "encoded_size": 2,
                  "decoder": "lstm", "attention": "soft", "embed_dim": 16, "hidden_dim": 16,
                  "attention_dim": 16, "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "seed": 0},
        "decode": {"beam_size": 2, "max_len": 12},
        "eval": {"metrics": ["Bleu", "CIDEr"]},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(megabytes): a tmpfs of that size under tmp_path, unmounted afterwards. Mounting needs
    root: the test skips where the kernel refuses it."""
    import subprocess

    mounted: list[Path] = []

    def mount(megabytes: int) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(disk)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Every free byte of `disk` taken by one file (its path): what the disk then refuses is a full disk's."""
    ballast = disk / "ballast"
    descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for block in (1 << 20, 4096, 1):
            try:
                while os.write(descriptor, b"\0" * block):
                    pass
            except OSError:
                pass
    finally:
        os.close(descriptor)
    return ballast
