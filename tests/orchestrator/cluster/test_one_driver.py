"""One driver per invocation, from a user's seat: two `orch run`s of one file at once are two
invocations with clean runs each; `orch resume` beside a live driver is refused and trains nothing."""

from __future__ import annotations


import pytest
from mlflow import MlflowClient

from orchestrator.lease import LEASE_FILE
from tests.orchestrator.commands.test_run import assert_tree_finished, epochs_logged, runs_of, wait_for_first_epoch
from tests.orchestrator.conftest import invoke_orch, orch_process, sqlite_uri, write_yaml

pytestmark = pytest.mark.integration


def test_two_runs_of_one_file_started_together_are_two_invocations_with_their_own_runs(tiny_experiment, tmp_path):
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "twice.yaml", tiny_experiment("twice", storage))
    drivers = [orch_process("run", config, cwd=tmp_path, log=tmp_path / f"run{i}.log") for i in (1, 2)]
    for i, driver in enumerate(drivers, start=1):
        assert driver.wait(timeout=900) == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]

    invocations = sorted(folder.name for folder in (storage / "twice").iterdir() if folder.name.startswith("run-"))
    assert len(invocations) == 2
    client = MlflowClient(sqlite_uri(storage))
    for invocation in invocations:
        kinds = runs_of(client, "twice", f"twice/{invocation}")
        assert_tree_finished(kinds)
        assert len(kinds["trial"]) == 1 and epochs_logged(client, kinds["trial"][0]) == [1, 2]
        assert not (storage / "twice" / invocation / LEASE_FILE).exists()  # released at the end


def test_resume_beside_a_live_driver_is_refused_and_trains_nothing(tiny_experiment, tmp_path):
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "busy.yaml", tiny_experiment("busy", storage, train={"epochs": 6}))
    driver = orch_process("run", config, cwd=tmp_path, log=tmp_path / "run.log")
    try:
        wait_for_first_epoch(storage / "mlflow.db", driver, tmp_path / "run.log")  # training, epoch 1 recorded
        (folder,) = [f for f in (storage / "busy").iterdir() if f.name.startswith("run-")]
        refused = invoke_orch("resume", folder)
        assert refused.exit_code == 2, refused.output
        assert "its driver is still running (orch run on " in refused.output
        assert f"PID {driver.pid}" in refused.output and f"`kill -INT {driver.pid}`" in refused.output
        assert not [f for f in folder.iterdir() if f.name.startswith("resume-")]  # no study started
        assert driver.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    client = MlflowClient(sqlite_uri(storage))
    kinds = runs_of(client, "busy")
    assert_tree_finished(kinds)
    assert epochs_logged(client, kinds["trial"][0]) == [1, 2, 3, 4, 5, 6]  # each epoch once: trained once
