"""Token authentication on every Ray orch starts or joins (orchestrator.cluster.auth), and no secret
written anywhere (orchestrator.credentials).

The clusters are real: a head started in a process of its own with RAY_AUTH_MODE=token (or without
it), its own Ray temp folder and HOME, so neither this machine's ~/.ray/auth_token nor another Ray on
it takes part. `orch` runs as a user types it, in a subprocess: the token is process state.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.cluster.auth import given_token
from orchestrator.credentials import masked
from tests.orchestrator.commands.test_run import _free_port, start_mlflow_server
from tests.orchestrator.conftest import REPO_ROOT, stop_server, write_yaml
from trainers.errors import InputError

TOKEN = "a" * 24 + "0123456789abcdef" * 2 + "b" * 8
MARKERS = {"MLFLOW_TRACKING_PASSWORD": "marker-mlflow-password-5c1e", "MLFLOW_TRACKING_TOKEN": "marker-mlflow-token-77d0",
           "AWS_SECRET_ACCESS_KEY": "marker-aws-secret-9b2f", "RAY_AUTH_TOKEN": "marker-ray-token-3a8e"}
URI_PASSWORD = "marker-uri-password-e41d"

HEAD = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""

# A client as any other process on the machine would make one; Ray's GCS wait cut to 2 s.
OUTSIDER = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
except Exception as error:  # its cause names why: the GCS refused the token, or its absence
    print("REFUSED", "InvalidAuthToken" in f"{error} {error.__cause__}")
else:
    print("CONNECTED")
"""


def clean_environment(home: Path, ray_tmp: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any Ray token, RAY_ADDRESS or credential, plus `extra`."""
    dropped = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", *MARKERS)
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    return {**env, "HOME": str(home), "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO_ROOT), **extra}


@contextlib.contextmanager
def ray_head(token: str | None):
    """A Ray head in a process of its own (token authentication on when `token` is given); its GCS address."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="orchauth", dir="/tmp"))  # short: Ray's socket paths must fit
    home = ray_tmp / "home"
    home.mkdir()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=clean_environment(home, ray_tmp, **auth))
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def orch(*args, env: dict[str, str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def outsider(address: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", OUTSIDER, address], capture_output=True, text=True,
                            timeout=120, env={**env, "RAY_gcs_server_port_wait_time_s": "2"})
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]


# ------------------------------------------------------------------------------------------ unit
def test_a_token_comes_from_ray_auth_token_then_the_file_ray_auth_token_path_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    assert given_token({}) == (None, "")
    assert given_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == (TOKEN, f"RAY_AUTH_TOKEN_PATH ({token_file})")
    assert given_token({"RAY_AUTH_TOKEN": "x" * 32, "RAY_AUTH_TOKEN_PATH": str(token_file)}) == ("x" * 32,
                                                                                                  "RAY_AUTH_TOKEN")
    with pytest.raises(InputError, match=r"^RAY_AUTH_TOKEN_PATH: cannot read the Ray token file .*missing"):
        given_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InputError, match=r"^RAY_AUTH_TOKEN_PATH: the Ray token file .*empty is empty"):
        given_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})


# ------------------------------------------------------------------------------ joining a cluster
@pytest.mark.integration
def test_orch_joins_a_token_cluster_with_its_token_and_is_refused_without_it(tiny_experiment, tmp_path):
    home, ray_tmp = tmp_path / "home", Path(tempfile.mkdtemp(prefix="orchjoin", dir="/tmp"))
    home.mkdir()
    token_file = tmp_path / "ray-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    config = write_yaml(tmp_path / "joined.yaml", tiny_experiment("joined", tmp_path / "results",
                                                                  train={"epochs": 1}))
    try:
        with ray_head(TOKEN) as address:
            refusals = {
                "none": (clean_environment(home, ray_tmp), rf"--address: the Ray cluster at {address} asks for a "
                         r"token and none of RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH is set: set RAY_AUTH_TOKEN"),
                "mode only": (clean_environment(home, ray_tmp, RAY_AUTH_MODE="token"), "asks for a token and none"),
                "wrong": (clean_environment(home, ray_tmp, RAY_AUTH_TOKEN="f" * 64),
                          rf"--address: the Ray cluster at {address} refused the token in RAY_AUTH_TOKEN: set "
                          r"RAY_AUTH_TOKEN to the cluster's token"),
            }
            for case, (env, said) in refusals.items():
                started = time.monotonic()
                refused = orch("run", config, "--address", address, env=env, cwd=tmp_path)
                output = refused.stdout + refused.stderr
                errors = [line for line in output.splitlines() if line.startswith("error:")]
                assert refused.returncode == 2, (case, output[-3000:])
                assert len(errors) == 1 and errors[0] == output.strip().splitlines()[-1], (case, output[-3000:])
                assert re.search(said, errors[0]), (case, errors[0])
                assert "Traceback" not in output and "gcs_client" not in output, (case, output[-3000:])
                assert time.monotonic() - started < 60, case
            assert not (tmp_path / "results").exists()  # nothing written

            counted = orch("env", "--address", address, env=clean_environment(
                home, ray_tmp, RAY_AUTH_TOKEN_PATH=str(token_file)), cwd=tmp_path)  # the token from a file
            assert counted.returncode == 0, counted.stdout + counted.stderr
            assert f"the Ray cluster at {address} (--address): 2 CPUs" in counted.stdout

            joined = orch("run", config, "--address", address, env=clean_environment(
                home, ray_tmp, RAY_AUTH_TOKEN=TOKEN), cwd=tmp_path, timeout=600)  # a token given turns the mode on
            output = joined.stdout + joined.stderr
            assert joined.returncode == 0, output[-3000:]
            assert f"joining {address} (--address)" in output and "no token authentication" not in output
            assert TOKEN not in output
        assert not (home / ".ray").exists()  # no token file made
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.integration
def test_joining_a_cluster_without_authentication_is_said_in_one_line_and_trains(tiny_experiment, tmp_path):
    """The note comes with the preflight, and the run trains on the open cluster without a token, also
    where Ray left its own ~/.ray/auth_token from a local Ray (a job sending it lost every trial's actor)."""
    home, ray_tmp = tmp_path / "home", Path(tempfile.mkdtemp(prefix="orchopen", dir="/tmp"))
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-ray-wrote-for-a-local-ray\n")
    config = write_yaml(tmp_path / "open.yaml", tiny_experiment("open", tmp_path / "results"))
    try:
        with ray_head(None) as address:
            result = orch("run", config, "--address", address, env=clean_environment(home, ray_tmp), cwd=tmp_path)
        output = result.stdout + result.stderr
        notes = [line for line in output.splitlines() if "no token authentication" in line]
        assert notes == [f"note: --address: the Ray cluster at {address} has no token authentication: anyone who "
                         f"reaches it can run code on it (docs/cluster.md, Security)"], output[-3000:]
        assert result.returncode == 0, output[-3000:]
        assert "failed" not in output, output[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------------ the local Ray of a run
def test_a_uri_is_shown_with_its_password_masked():
    assert masked("postgresql://orch:hunter2@db:5432/mlflow") == "postgresql://orch:***@db:5432/mlflow"
    assert masked("http://alice:p%40ss:w@mlflow.example.org:5000/x?y=1") == "http://alice:***@mlflow.example.org:5000/x?y=1"
    assert masked("https://mlflow.example.org") == "https://mlflow.example.org"
    assert masked("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_resume_takes_a_masked_password_back_from_mlflow_tracking_uri(monkeypatch):
    from orchestrator.commands.resume import with_password

    saved = "postgresql://orch:***@db:5432/mlflow"  # what orch.yaml holds
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://orch:hunter2@db:5432/mlflow")
    assert with_password(saved) == "postgresql://orch:hunter2@db:5432/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://orch:hunter2@elsewhere:5432/mlflow")
    with pytest.raises(InputError, match=r"^tracking.uri: orch.yaml holds postgresql://orch:\*\*\*@db:5432/mlflow, its "
                                         r"password masked: export MLFLOW_TRACKING_URI with the whole URI"):
        with_password(saved)


def files_holding(folder: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {secret}" for secret in secrets if secret.encode() in data]
    return found


@pytest.mark.integration
def test_a_runs_local_ray_takes_only_its_own_token_and_no_secret_is_written(tiny_experiment, tmp_path):
    """One `orch run` on a new local Ray, credentials in its environment (markers) and a password in its
    tracking.uri: while it trains, another process cannot join its Ray, neither without a token nor with
    the RAY_AUTH_TOKEN the user exported; afterwards no file of the storage, the MLflow server's store or
    its artifacts, and no line of the output, holds a marker; no ~/.ray/auth_token was made."""
    home, ray_tmp = tmp_path / "home", Path(tempfile.mkdtemp(prefix="orchlocal", dir="/tmp"))
    home.mkdir()
    port = _free_port()
    server_folder = tmp_path / "server"
    server = start_mlflow_server(server_folder, port)
    uri = f"http://orch:{URI_PASSWORD}@127.0.0.1:{port}"
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "guarded.yaml", tiny_experiment("guarded", storage, train={"epochs": 3},
                                                                   tracking={"uri": uri}))
    env = clean_environment(home, ray_tmp, MLFLOW_TRACKING_USERNAME="orch", **MARKERS)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(config)], cwd=tmp_path, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        ports = []
        while not ports and driver.poll() is None and time.monotonic() < deadline:
            ports = list((ray_tmp / "ray").glob("session_*/gcs_server_port_*"))
            time.sleep(0.5)
        assert ports, (tmp_path / "driver.log").read_text()[-3000:]
        time.sleep(1)
        address = f"127.0.0.1:{ports[0].read_text().strip()}"  # Ray listens on every interface
        outsiders = {"no token": clean_environment(home, ray_tmp),
                     "the exported token": clean_environment(home, ray_tmp, RAY_AUTH_MODE="token",
                                                             RAY_AUTH_TOKEN=MARKERS["RAY_AUTH_TOKEN"])}
        answers = {case: outsider(address, outsider_env) for case, outsider_env in outsiders.items()}
        assert driver.poll() is None, "the run ended before the outsiders tried: lengthen it"
        assert answers == {case: "REFUSED True" for case in outsiders}
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
            driver.wait()
        log.close()
        stop_server(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    output = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 0, output[-3000:]  # the trials reached their Ray
    secrets = [*MARKERS.values(), URI_PASSWORD]
    assert [secret for secret in secrets if secret in output] == []
    assert files_holding(storage, secrets) == []
    assert files_holding(server_folder, secrets) == []  # the store (mlflow.db) and the artifacts
    assert f"orch:***@127.0.0.1:{port}" in (next(storage.glob("guarded/run-*/orch.yaml"))).read_text()
    assert not (home / ".ray").exists()
