"""`ray.address: null` starts a new local Ray for the run; it never joins the cluster Ray's
`ray_current_cluster` file names (a dead one hung `orch run` for minutes; a live one would run the
ablation on somebody else's cluster). Joining is `auto`, an address, `--address` or RAY_ADDRESS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.settings import LOCAL_RAY, ray_address_of
from tests.orchestrator.conftest import REPO_ROOT, free_port, sqlite_uri, write_yaml


def test_null_means_a_new_local_ray_and_joining_is_said(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = ExperimentConfig()
    assert ray_address_of(config, None) == (LOCAL_RAY, "")
    assert ray_address_of(config, "10.0.0.1:6379") == ("10.0.0.1:6379", "--address")
    config.ray.address = "auto"
    assert ray_address_of(config, None) == ("auto", "ray.address")
    config.ray.address = None
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # exported on purpose (Slurm, RayJob): joined
    assert ray_address_of(config, None) == ("head:6379", "RAY_ADDRESS")


@pytest.mark.integration
def test_a_stale_ray_current_cluster_is_not_joined(tiny_experiment, tmp_path):
    """A `ray start --head` that was killed leaves Ray's ray_current_cluster naming a dead GCS; `orch run`
    with address null must start its own Ray and finish, not retry the dead one. Ray's temp folder is a
    private one (RAY_TMPDIR), so no other Ray on this machine is touched."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="orchray", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        (ray_tmp / "ray").mkdir()
        dead = f"127.0.0.1:{free_port()}"
        (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        storage = tmp_path / "results"
        config = write_yaml(tmp_path / "local.yaml", tiny_experiment("local", storage, train={"epochs": 1}))
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(config)], cwd=tmp_path,
                                env={**env, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO_ROOT)},
                                capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        assert "ray: a new local Ray for this run (ray.address: null)" in output
        assert dead not in output  # never tried: the new-Ray line above, not a time limit, says so
        from mlflow import MlflowClient

        client = MlflowClient(sqlite_uri(storage))
        experiment = client.get_experiment_by_name("local")
        (parent,) = client.search_runs([experiment.experiment_id], "tags.`orch.kind` = 'parent'")
        assert parent.data.tags["orch.ray_address"] == "local"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
