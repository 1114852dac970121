"""A full disk, from a user's seat: `ray.storage` on a small tmpfs that fills up while a run trains.

The run stops with one line naming the disk and exits 2, every run ends FAILED saying so, a resume
while the disk is still full is refused in one line and makes nothing, and once space is freed
`orch resume` finishes with the numbers of a run that was never interrupted. Mounting needs root:
the test skips where the kernel refuses it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import fill
from tests.orchestrator.cluster.test_one_driver import start_orch
from tests.orchestrator.commands.test_run import runs_of, trial_progress
from tests.orchestrator.conftest import sqlite_uri, write_yaml

pytestmark = pytest.mark.integration


def history(client: MlflowClient, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def one_last_error(log: str) -> str:
    assert "Traceback" not in log and "Aborted" not in log, log[-4000:]
    assert log.count("error: ") == 1, log[-4000:]
    last = log.rstrip().splitlines()[-1]
    assert last.startswith("error: disk full: "), log[-4000:]
    return last


def test_a_storage_that_fills_up_stops_in_one_line_and_resume_finishes_it(small_disk, tiny_experiment, tmp_path):
    disk = small_disk(24)
    epochs = 4
    store = tmp_path / "store"  # the MLflow store on the ordinary disk: only ray.storage fills up
    storage = disk / "results"
    sections = {"train": {"epochs": epochs}, "tracking": {"uri": sqlite_uri(store)}}
    config = write_yaml(tmp_path / "full.yaml", tiny_experiment("full", storage, **sections))

    driver = start_orch("run", config, cwd=tmp_path, log=tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 600
        while trial_progress(store / "mlflow.db").get("c001", ("", 0))[1] < 1:  # epoch 1 recorded
            assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ballast = fill(disk)
        assert driver.wait(timeout=600) == 2, (tmp_path / "run.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    last = one_last_error((tmp_path / "run.log").read_text())
    assert str(disk) in last and "orch resume" in last

    client = MlflowClient(sqlite_uri(store))
    kinds = runs_of(client, "full")
    runs = [*kinds["parent"], *kinds["trial"]]
    assert {run.info.status for run in runs} == {"FAILED"}  # nothing left RUNNING
    for run in runs:
        assert run.data.tags["orch.failure_reason"].startswith(f"disk full: {disk}"), run.data.tags
    (folder,) = [f for f in (storage / "full").iterdir() if f.name.startswith("run-")]
    studies = sorted(f.name for f in folder.iterdir() if f.is_dir())

    refused = start_orch("resume", folder, cwd=tmp_path, log=tmp_path / "refused.log")
    assert refused.wait(timeout=300) == 2, (tmp_path / "refused.log").read_text()[-3000:]
    assert "bytes free" in one_last_error((tmp_path / "refused.log").read_text())
    assert sorted(f.name for f in folder.iterdir() if f.is_dir()) == studies  # no resume-* study made

    ballast.unlink()
    resumed = start_orch("resume", folder, cwd=tmp_path, log=tmp_path / "resume.log")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "resume.log").read_text()[-4000:]

    # The same run never interrupted, on the ordinary disk: the resumed one has its numbers.
    whole = write_yaml(tmp_path / "whole.yaml", tiny_experiment("whole", tmp_path / "whole", **{
        **sections, "tracking": {"uri": sqlite_uri(tmp_path / "whole-store")}}))
    uninterrupted = start_orch("run", whole, cwd=tmp_path, log=tmp_path / "whole.log")
    assert uninterrupted.wait(timeout=900) == 0, (tmp_path / "whole.log").read_text()[-4000:]

    (trial,) = runs_of(client, "full")["trial"]
    assert client.get_run(trial.info.run_id).info.status == "FINISHED"
    reference_client = MlflowClient(sqlite_uri(tmp_path / "whole-store"))
    (reference,) = runs_of(reference_client, "whole")["trial"]
    for key in ("train_loss", "val/CIDEr"):
        got = history(client, trial, key)
        assert [step for step, _ in got] == list(range(1, epochs + 1)), (key, got)  # each epoch once
        assert got == history(reference_client, reference, key), key
