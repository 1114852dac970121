"""`orch train` killed in epoch 2 (SIGKILL: no cleanup) is continued by `orch resume <train folder>` from
its epoch-1 checkpoint, in the same MLflow runs, and ends with the metrics an uninterrupted training has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.orchestrator.conftest import REPO_ROOT, invoke_orch, sqlite_uri, write_yaml

EPOCHS = 3
COMPARED = ("train_loss", "val/loss", "val/bleu/Bleu_4", "val/CIDEr")  # MLflow keys


def trial_run(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], "tags.`orch.kind` = 'trial'")
    assert len(runs) == 1, [run.info.run_name for run in runs]  # never a second training run
    return runs[0]


def history(client: MlflowClient, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.integration
def test_a_killed_orch_train_resumes_to_the_metrics_of_an_uninterrupted_one(tiny_experiment, tmp_path):
    storage = tmp_path / "results"
    whole = write_yaml(tmp_path / "whole.yaml", tiny_experiment("whole", storage, train={"epochs": EPOCHS}))
    killed = write_yaml(tmp_path / "killed.yaml", tiny_experiment("killed", storage, train={"epochs": EPOCHS}))
    assert invoke_orch("train", whole).exit_code == 0

    log = (tmp_path / "train.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "train", str(killed)], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.monotonic() + 300
    while True:  # the epoch-1 checkpoint is written: epoch 2 is in flight
        metas = list((storage / "killed").glob("train-*/checkpoint/meta.json"))
        try:
            if metas and json.loads(metas[0].read_text())["epoch"] == 1:
                break
        except (ValueError, OSError):
            pass  # being replaced
        assert driver.poll() is None, (tmp_path / "train.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    log.close()
    (folder,) = (storage / "killed").glob("train-*")
    assert json.loads((folder / "checkpoint" / "meta.json").read_text())["epoch"] == 1  # killed in epoch 2

    resumed = invoke_orch("resume", folder)
    assert resumed.exit_code == 0, resumed.output
    assert "from its epoch checkpoint" in " ".join(resumed.output.split())

    client = MlflowClient(sqlite_uri(storage))
    before, after = trial_run(client, "whole"), trial_run(client, "killed")
    assert after.info.status == "FINISHED"
    assert [step for step, _ in history(client, after, "epoch")] == list(range(1, EPOCHS + 1))  # each epoch once
    for key in COMPARED:  # bit for bit: the same config and seed give the same numbers (trainers.determinism)
        assert history(client, after, key) == history(client, before, key), key
    tests = {k: v for k, v in before.data.metrics.items() if k.startswith("test_")}
    assert tests and {k: after.data.metrics[k] for k in tests} == tests
    parents = client.search_runs([client.get_experiment_by_name("killed").experiment_id],
                                 "tags.`orch.kind` = 'parent'")
    assert [run.info.status for run in parents] == ["FINISHED"]

    again = invoke_orch("resume", folder)  # finished: nothing to resume, said in one line
    assert again.exit_code == 2 and "already finished" in again.output
