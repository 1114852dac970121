"""Fixtures for the real-component tests of `orch run`: tiny data, YAML files, a local Ray, MLflow stores.

Everything here is real (Ray, MLflow, training); only the sizes are tiny: 20 synthetic 32 px
images and a 16-wide decoder over a frozen, randomly initialised RegNet, so an epoch takes seconds.
"""

from __future__ import annotations

import copy
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.experiment.keys import deep_merge

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY_EXPERIMENT = {
    "data": {"image_size": 32, "num_workers": 0},
    "model": {"encoder": "regnet_x_400mf", "weights": "none", "fine_tune": False, "encoded_size": 2,
              "embed_dim": 16, "hidden_dim": 16, "attention_dim": 16, "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 8, "lr": 3.0e-3, "seed": 0},
    "decode": {"beam_size": 2, "max_len": 12},
    "eval": {"metrics": ["Bleu", "CIDEr"], "sample_captions": 2},
    "resources": {"cpu": 1},
    "ray": {"max_failures": 0},
}


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared synthetic dataset of 20 images (train 16, val 2, test 2), built once per session."""
    from trainers.data.prepare import prepare_dataset
    from trainers.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny-data")
    write_synthetic_dataset(root / "source", n=20, size=32, seed=0)
    prepare_dataset(root / "source" / "dataset.json", root / "source", root / "prepared", min_word_freq=1,
                    max_len=30, image_size=32)
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_experiment(tiny_prepared) -> Callable[..., dict]:
    """tiny_experiment(name, storage, **sections): a small experiment whose sections override the defaults."""

    def make(name: str, storage: Path, **sections) -> dict:
        config = copy.deepcopy(TINY_EXPERIMENT)
        config["name"] = name
        config["data"]["prepared"] = str(tiny_prepared)
        config["ray"]["storage"] = str(storage)
        return deep_merge(config, sections)

    return make


def write_yaml(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class _WritesMarker:
    """Unpickling this runs `exec`, which writes the marker file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def plant_pickle(path: Path, marker: Path) -> Path:
    """A crafted pickle at `path` whose payload writes `marker` when anything unpickles it."""
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_WritesMarker(marker)))
    return path


def sqlite_uri(folder: Path) -> str:
    """A real sqlite MLflow store in `folder` (created on first use, as `orch run` does)."""
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def invoke_orch(*args):
    """`orch ARGS` in this process, as a user would type it (long lines unwrapped); click's Result."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.console, "width", 400)
        return CliRunner().invoke(cli.app, [str(arg) for arg in args])


@pytest.fixture
def orch() -> Callable[..., "object"]:
    return invoke_orch


# Run first in `python_without_orch`: this interpreter's packages on sys.path as plain folders (no .pth
# file runs, so the editable install's finder of orchestrator/ and trainers/ is never installed), and
# proof that neither package can be imported before the code under test runs.
_WITHOUT_ORCH = """
import sys
sys.path.extend({paths!r})
for name in ("orchestrator", "trainers"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{{name}} is importable: the check would prove nothing")
"""


def python_without_orch(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter where orch is not installed, as in a user's virtualenv with the same
    packages but orch: isolated (-I: no PYTHONPATH, no working folder on sys.path), without `site` (-S:
    no .pth file runs), this interpreter's site-packages appended as plain folders, run from `cwd`."""
    import sysconfig

    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return subprocess.run([sys.executable, "-I", "-S", "-c", _WITHOUT_ORCH.format(paths=paths) + code], cwd=cwd,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------- an S3 bucket (moto)
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "orch-test", "AWS_SECRET_ACCESS_KEY": "orch-test",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free again once closed: nothing listens there


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server started in its own process group (start_new_session): SIGTERM, then SIGKILL."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@dataclass
class S3Server:
    endpoint: str  # host:port
    _buckets = itertools.count()

    def bucket(self, prefix: str = "results") -> str:
        """A new, empty bucket; the `ray.storage` setting of `prefix` in it, as a user writes it for MinIO."""
        import pyarrow.fs

        name = f"orch-{os.getpid()}-{next(self._buckets)}"
        pyarrow.fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", region="us-east-1",
                                allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API (moto's server) on 127.0.0.1, with dummy credentials in the environment for the
    session (subprocesses and the Ray workers they start inherit them); stopped afterwards."""
    try:
        import moto.server  # noqa: F401  (moto[server], in the `test` extra)
    except ImportError as error:
        pytest.skip(f"no S3 server for the bucket tests: moto[server] is not installed ({error})")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            pytest.skip(f"moto's S3 server did not start on 127.0.0.1:{port}: {log_path.read_text()[-2000:]}")
        time.sleep(0.3)
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in MOTO_CREDENTIALS.items():
            patch.setenv(variable, value)
        for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(variable, raising=False)
        yield S3Server(f"127.0.0.1:{port}")
    stop_server(server)


def orch_process(*args, cwd: Path, log: Path) -> subprocess.Popen:
    """`orch ARGS` as a process of its own, with a local Ray of its own (no RAY_ADDRESS) and this session's
    environment, its output (long lines unwrapped) appended to `log`."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO_ROOT), COLUMNS="1000")
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
