"""A production-shaped MLflow: `mlflow server` on a PostgreSQL backend store, serving artifacts,
receives the whole run tree of an `orch run` (parent ► trials ► decode variants).

PostgreSQL comes from Debian's packages (installed here with apt-get when missing and allowed),
in a throwaway cluster: initdb into a temporary folder, pg_ctl on 127.0.0.1 and a free port, run as
the `postgres` user when the tests run as root (PostgreSQL refuses root). Where that cannot be had,
the tests are skipped and say why.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.cluster.preflight import check_tracking
from tests.orchestrator.conftest import free_port, invoke_orch, stop_server, write_yaml
from tests.orchestrator.commands.test_run import artifact_paths, assert_tree_finished, best_checkpoint_files, runs_of

pytestmark = pytest.mark.integration


def postgres_program(name: str) -> str | None:
    """initdb / pg_ctl: on PATH, or in Debian's versioned folder (newest first)."""
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return shutil.which(name) or (installed[-1] if installed else None)


def install_postgres() -> str:
    """apt-get install postgresql (as root only); returns what went wrong, or '' when it worked."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root, or no apt-get, so it cannot be installed here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    for step in ([install], [["apt-get", "update"], install]):  # the package lists may be missing
        results = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=900) for command in step]
        if results[-1].returncode == 0:
            return ""
    return f"`apt-get install postgresql` failed: {results[-1].stderr.strip()[-300:]}"


def run_as(user: str | None, command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300, user=user)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on 127.0.0.1 with an empty `mlflow` database; yields its URI."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg (the test extra) drives PostgreSQL")
    if not (postgres_program("initdb") and postgres_program("pg_ctl")):
        problem = install_postgres()
        if problem:
            pytest.skip(f"PostgreSQL's initdb/pg_ctl are not installed and {problem}")
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no 'postgres' user to run PostgreSQL as")
    folder = Path(tempfile.mkdtemp(prefix="orch-pg-", dir="/tmp"))  # reachable by that user, unlike pytest's
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    name = user.pw_name if user else None
    port = free_port()
    run_as(name, [initdb, "-D", str(folder / "data"), "-U", "orch", "--auth=trust", "-E", "UTF8", "--no-instructions"])
    run_as(name, [pg_ctl, "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-t", "120",
                  "-o", f"-h 127.0.0.1 -p {port} -k {folder} -F", "start"])
    try:
        with psycopg.connect(f"postgresql://orch@127.0.0.1:{port}/postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE mlflow")
        yield f"postgresql://orch@127.0.0.1:{port}/mlflow"
    finally:
        run_as(name, [pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_mlflow(postgres, tmp_path_factory):
    """`mlflow server` on that database, artifacts served from a local folder; yields its URL."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # the first start creates the schema: dozens of migrations
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 300 s"
            time.sleep(0.5)
        yield url
    finally:
        stop_server(server)
        log.close()


def test_preflight_accepts_the_server_and_its_database(postgres, postgres_mlflow):
    check_tracking(postgres_mlflow)
    check_tracking(postgres)


def test_the_whole_run_tree_lands_in_postgresql(local_ray, tiny_experiment, postgres, postgres_mlflow, tmp_path):
    import psycopg

    config = write_yaml(tmp_path / "served.yaml", tiny_experiment(
        "pg", tmp_path / "results", train={"epochs": 1}, tracking={"uri": postgres_mlflow},
        ablation={"model.decoder": ["lstm", "gru"], "decode.length_penalty": [0.0, 1.0]}))
    result = invoke_orch("run", config)
    assert result.exit_code == 0, result.output

    client = MlflowClient(postgres_mlflow)
    kinds = runs_of(client, "pg")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 2, 4)
    assert_tree_finished(kinds)
    (parent,) = kinds["parent"]
    assert {"config/resolved.yaml", "config/plan.json"} <= artifact_paths(client, parent.info.run_id)
    for trial in kinds["trial"]:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "sample_captions.json" in artifact_paths(client, trial.info.run_id)
        assert {"best_model.pt", "meta.json"} <= best_checkpoint_files(client, trial.info.run_id)
        assert {"train_loss", "val/CIDEr"} <= set(trial.data.metrics)
    for variant in kinds["variant"]:
        assert {"test_CIDEr", "test_Bleu_4"} <= set(variant.data.metrics)
    assert not (tmp_path / "results" / "mlflow.db").exists()  # no sqlite on the side

    with psycopg.connect(postgres) as connection:  # the rows are PostgreSQL's, not a cache's
        statuses = dict(connection.execute("select status, count(*) from runs group by status").fetchall())
        kinds_in_db = dict(connection.execute(
            "select value, count(*) from tags where key = 'orch.kind' group by value").fetchall())
    assert statuses == {"FINISHED": 7}
    assert kinds_in_db == {"parent": 1, "trial": 2, "variant": 4}
