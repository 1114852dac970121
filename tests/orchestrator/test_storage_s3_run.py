"""`orch run`, `orch resume` and `orch export` with `ray.storage` in a bucket, end to end.

The bucket is moto's S3 server on 127.0.0.1, named as a user names MinIO
(`s3://bucket/prefix?endpoint_override=...&scheme=http`); the MLflow store is a local sqlite file,
so MLflow keeps its artifacts in the bucket too (s3://.../mlartifacts). The driver is a real
`orch run` subprocess with the bucket's credentials in its environment only, as on a cluster: it
starts its own Ray, whose workers write the checkpoints straight to the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.storage import resolve
from tests.orchestrator.conftest import invoke_orch, orch_process, sqlite_uri, write_yaml
from tests.orchestrator.commands.test_run import assert_tree_finished, epochs_logged, runs_of, wait_for_first_epoch
from trainers.inference import caption_images, load_model


def finish(process: subprocess.Popen, log: Path, timeout_s: float = 600) -> tuple[int, str]:
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"orch did not end in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
    return code, log.read_text()


@pytest.mark.integration
def test_a_run_on_a_bucket_is_interrupted_resumed_from_it_and_exported(s3_server, tiny_experiment, tiny_prepared,
                                                                         tmp_path):
    setting = s3_server.bucket("team/results")
    storage = resolve(setting)
    db = tmp_path / "mlflow" / "mlflow.db"
    config = write_yaml(tmp_path / "bucketed.yaml", tiny_experiment(
        "bucketed", setting, train={"epochs": 3}, tracking={"uri": sqlite_uri(db.parent)}))

    # ---- run, Ctrl-C once epoch 1 is recorded
    log = tmp_path / "run.log"
    driver = orch_process("run", config, cwd=tmp_path, log=log)
    wait_for_first_epoch(db, driver, log, timeout_s=400)
    os.kill(driver.pid, signal.SIGINT)
    code, output = finish(driver, log)
    assert code == 1, output
    (run,) = storage.folders("bucketed")
    run_uri = storage.locate(f"bucketed/{run}")
    assert f"interrupted: 1 trial(s) did not finish; continue with `orch resume '{run_uri}'`" in output
    assert f"results: s3://{storage.root}/bucketed/{run}" in output
    assert not list(tmp_path.glob("s3*")), "a bucket setting must not become a local folder"
    assert storage.is_file(f"bucketed/{run}/orch.yaml") and storage.is_file(f"bucketed/{run}/plan.json")
    assert storage.is_file(f"bucketed/{run}/trials/tuner.pkl")
    assert storage.find(f"bucketed/{run}/trials", "meta.json"), "no checkpoint reached the bucket"

    # ---- resume from the bucket, by the URI the run printed
    log = tmp_path / "resume.log"
    code, output = finish(orch_process("resume", run_uri, cwd=tmp_path, log=log), log)
    assert code == 0, output
    assert f"resuming s3://{storage.root}/bucketed/{run}" in output
    client = MlflowClient(sqlite_uri(db.parent))
    kinds = runs_of(client, "bucketed")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 1, 1)
    assert_tree_finished(kinds)
    (trial,) = kinds["trial"]
    assert epochs_logged(client, trial) == [1, 2, 3]
    # The resume is a fresh Tuner in a `resume-*` study beside `trials/` (Ray's pickles are never read).
    results = [json.loads(line) for path in storage.find(f"bucketed/{run}", "result.json")
               for line in storage.read_text(path).splitlines() if line.strip()]
    restarts = [r["epoch"] for r in results if r["iterations_since_restore"] == 1]
    assert max(restarts) > 1, f"the trial restarted from scratch, not from its checkpoint in the bucket: {restarts}"
    (trial_folder,) = storage.folders(f"bucketed/{run}/trials")
    checkpoints = storage.folders(f"bucketed/{run}/trials/{trial_folder}")
    assert [c for c in checkpoints if c.startswith("checkpoint_")], checkpoints

    # MLflow kept the best checkpoint in the bucket as well (a serverless store: artifacts under ray.storage)
    experiment = client.get_experiment_by_name("bucketed")
    assert experiment.artifact_location == f"s3://{storage.root}/mlartifacts"
    assert storage.find("mlartifacts", "best_model.pt")

    # ---- export from it; the export captions exactly as the run's last checkpoint in the bucket
    exported = invoke_orch("export", "bucketed", "--config", config, "--out", tmp_path / "exports")
    assert exported.exit_code == 0, exported.output
    (folder,) = (tmp_path / "exports").iterdir()
    last = f"bucketed/{run}/trials/{trial_folder}/{max(c for c in checkpoints if c.startswith('checkpoint_'))}"
    checkpoint = load_model(storage.download(last, tmp_path / "from-bucket"))
    export = load_model(folder)
    images = sorted((tiny_prepared.parent / "source" / "images").glob("*.png"))[:4]
    decode = export.config.decode
    assert [r.caption for r in caption_images(export, images, decode)] == \
        [r.caption for r in caption_images(checkpoint, images, decode)]

    status = invoke_orch("status", "bucketed", "--config", config, "--json")
    assert status.exit_code == 0, status.output
    assert {cell["status"] for cell in json.loads(status.stdout)["bucketed"]["cells"]} == {"FINISHED"}


@pytest.mark.integration
def test_orch_train_on_a_bucket_killed_in_epoch_2_resumes_from_the_bucket_on_another_machine(
        s3_server, tiny_experiment, tmp_path, monkeypatch):
    """Each whole epoch reaches the bucket, so losing the driver's machine costs only the epoch in
    flight: the resume starts on an empty local disk (another ORCH_STATE_DIR) from the bucket."""
    setting = s3_server.bucket("team/trains")
    storage = resolve(setting)
    db = tmp_path / "mlflow" / "mlflow.db"
    config = write_yaml(tmp_path / "trained.yaml", tiny_experiment(
        "trained", setting, train={"epochs": 3}, tracking={"uri": sqlite_uri(db.parent)}))
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path / "machine-a"))
    log = tmp_path / "train.log"
    driver = orch_process("train", config, cwd=tmp_path, log=log)
    deadline = time.monotonic() + 400
    while True:  # epoch 1's checkpoint is in the bucket: epoch 2 is in flight
        metas = storage.find("trained", "meta.json") if storage.folders("trained") else []
        if metas and json.loads(storage.read_text(metas[0]))["epoch"] == 1:
            break
        assert driver.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no epoch reached the bucket in 400 s:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    (run,) = storage.folders("trained")
    assert (tmp_path / "machine-a" / "storage" / "s3").is_dir(), "the run folder was not kept on local disk"

    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path / "machine-b"))
    log = tmp_path / "resume.log"
    code, output = finish(orch_process("resume", storage.locate(f"trained/{run}"), cwd=tmp_path, log=log), log)
    assert code == 0, output
    assert "from its epoch checkpoint" in " ".join(output.split())
    client = MlflowClient(sqlite_uri(db.parent))
    kinds = runs_of(client, "trained")
    (trial,) = kinds["trial"]
    assert trial.info.status == "FINISHED"
    assert epochs_logged(client, trial) == [1, 2, 3]
    assert json.loads(storage.read_text(storage.find(f"trained/{run}", "metrics.json")[0]))["best_epoch"] >= 1
