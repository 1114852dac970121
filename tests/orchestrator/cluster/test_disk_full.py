"""A full disk, from a user's seat: `ray.storage` on a small tmpfs that fills up while a run trains.

The run stops with one line naming the disk and exits 2, every run ends FAILED saying so, a resume
while the disk is still full is refused in one line and makes nothing, and once space is freed
`orch resume` finishes with the numbers of a run that was never interrupted. Mounting needs root:
the test skips where the kernel refuses it."""

from __future__ import annotations


from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import fill
from tests.orchestrator.commands.test_run import runs_of, wait_for_first_epoch
from tests.orchestrator.conftest import orch_process, sqlite_uri, write_yaml

pytestmark = pytest.mark.integration


def history(client: MlflowClient, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def one_last_error(log: str) -> str:
    assert "Traceback" not in log and "Aborted" not in log, log[-4000:]
    assert log.count("error: ") == 1, log[-4000:]
    last = log.rstrip().splitlines()[-1]
    assert last.startswith("error: disk full: "), log[-4000:]
    return last


def run_until_the_disk_fills(config: Path, db: Path, disk: Path, log: Path, timeout_s: float) -> Path:
    """`orch run CONFIG`, `disk` filled once its first epoch is in the store `db`; the run must then exit 2.
    The ballast file that fills the disk."""
    driver = orch_process("run", config, cwd=log.parent, log=log)
    try:
        wait_for_first_epoch(db, driver, log)
        ballast = fill(disk)
        assert driver.wait(timeout=timeout_s) == 2, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    return ballast


def test_a_storage_that_fills_up_stops_in_one_line_and_resume_finishes_it(small_disk, tiny_experiment, tmp_path):
    disk = small_disk(24)
    epochs = 4
    store = tmp_path / "store"  # the MLflow store on the ordinary disk: only ray.storage fills up
    storage = disk / "results"
    sections = {"train": {"epochs": epochs}, "tracking": {"uri": sqlite_uri(store)}}
    config = write_yaml(tmp_path / "full.yaml", tiny_experiment("full", storage, **sections))

    ballast = run_until_the_disk_fills(config, store / "mlflow.db", disk, tmp_path / "run.log", timeout_s=600)
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

    refused = orch_process("resume", folder, cwd=tmp_path, log=tmp_path / "refused.log")
    assert refused.wait(timeout=300) == 2, (tmp_path / "refused.log").read_text()[-3000:]
    assert "bytes free" in one_last_error((tmp_path / "refused.log").read_text())
    assert sorted(f.name for f in folder.iterdir() if f.is_dir()) == studies  # no resume-* study made

    ballast.unlink()
    resumed = orch_process("resume", folder, cwd=tmp_path, log=tmp_path / "resume.log")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "resume.log").read_text()[-4000:]

    # The same run never interrupted, on the ordinary disk: the resumed one has its numbers.
    whole = write_yaml(tmp_path / "whole.yaml", tiny_experiment("whole", tmp_path / "whole", **{
        **sections, "tracking": {"uri": sqlite_uri(tmp_path / "whole-store")}}))
    uninterrupted = orch_process("run", whole, cwd=tmp_path, log=tmp_path / "whole.log")
    assert uninterrupted.wait(timeout=900) == 0, (tmp_path / "whole.log").read_text()[-4000:]

    (trial,) = runs_of(client, "full")["trial"]
    assert client.get_run(trial.info.run_id).info.status == "FINISHED"
    reference_client = MlflowClient(sqlite_uri(tmp_path / "whole-store"))
    (reference,) = runs_of(reference_client, "whole")["trial"]
    for key in ("train_loss", "val/CIDEr"):
        got = history(client, trial, key)
        assert [step for step, _ in got] == list(range(1, epochs + 1)), (key, got)  # each epoch once
        assert got == history(reference_client, reference, key), key


def test_a_full_sqlite_store_loses_nothing_and_says_so_in_one_line(small_disk, tiny_experiment, tmp_path):
    """The sqlite store on a tmpfs that fills up while the run trains: training goes on, every tracking
    write waits in the journal (on the storage's disk), the run ends with one line naming the store and
    what replays it, exit 2; once there is space, `orch status` replays them: every run FINISHED, each
    epoch logged once."""
    disk = small_disk(24)
    epochs = 3
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "store.yaml", tiny_experiment("store", storage, train={"epochs": epochs},
                                                                  tracking={"uri": sqlite_uri(disk)}))
    ballast = run_until_the_disk_fills(config, disk / "mlflow.db", disk, tmp_path / "run.log", timeout_s=900)
    log = (tmp_path / "run.log").read_text()
    last = one_last_error(log)
    assert f"disk full: {disk / 'mlflow.db'}, the MLflow store (" in last and "orch status store" in last
    assert log.count(f"MLflow store sqlite:///{disk / 'mlflow.db'} is full") == 1, log[-3000:]

    ballast.unlink()
    status = orch_process("status", "store", "--config", config, cwd=tmp_path, log=tmp_path / "status.log")
    assert status.wait(timeout=300) == 0, (tmp_path / "status.log").read_text()[-3000:]
    client = MlflowClient(sqlite_uri(disk))
    kinds = runs_of(client, "store")
    assert {run.info.status for runs in kinds.values() for run in runs} == {"FINISHED"}, kinds
    (trial,) = kinds["trial"]
    assert [step for step, _ in history(client, trial, "val/CIDEr")] == list(range(1, epochs + 1))
