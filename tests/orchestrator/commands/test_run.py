"""`orch run`, `orch resume` and `orch status` end to end: real Ray Tune trials, real MLflow, tiny training.

One module-scoped grid (2 trainings x 3 length penalties) feeds the checks of the plan split, the
MLflow run tree and the single-writer design; the other scenarios (an MLflow server, a driver killed
mid-trial, Ctrl-C, injected failures, ASHA) each run one small experiment of their own. The
in-process runs join the session's local Ray (`local_ray`); the killed driver is a real `orch run`
subprocess that joins it too. The resume bookkeeping is also checked case by case, without training.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.cluster.trainable import _work_root as work_root
from tests.orchestrator.conftest import REPO_ROOT, invoke_orch, plant_pickle, sqlite_uri, stop_server, write_yaml
from orchestrator.storage import resolve

GRID = {"model.decoder": ["lstm", "gru"], "decode.length_penalty": [0.0, 0.5, 1.0]}


# --------------------------------------------------------------------------------------- helpers
def runs_of(client: MlflowClient, experiment: str, invocation: str = "") -> dict[str, list]:
    """The experiment's runs (of one invocation, when given) by their `orch.kind` tag: parent, trial, variant."""
    found = client.get_experiment_by_name(experiment)
    query = f"tags.`orch.invocation` = '{invocation}'" if invocation else ""
    runs = client.search_runs([found.experiment_id], query, max_results=1000)
    kinds: dict[str, list] = {"parent": [], "trial": [], "variant": []}
    for run in runs:
        kinds[run.data.tags["orch.kind"]].append(run)
    return kinds


def epochs_logged(client: MlflowClient, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch"))


def artifact_paths(client: MlflowClient, run_id: str, folder: str = "") -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, folder or None):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


def best_checkpoint_files(client: MlflowClient, run_id: str) -> set[str]:
    """The best checkpoint's files in MLflow, which a captioner trial keeps in its logged model only."""
    assert not client.list_artifacts(run_id, "best_checkpoint")  # not a second copy among the run's artifacts
    outputs = client.get_run(run_id).outputs
    (model_id,) = [output.model_id for output in outputs.model_outputs]
    return {Path(item.path).name for item in client.list_logged_model_artifacts(model_id, "artifacts/checkpoint")}


def trial_folders(storage: Path, name: str) -> list[Path]:
    """Every trial folder: the first run's (`trials/`) and each resume's (`resume-*/`)."""
    return sorted(p for p in storage.glob(f"{name}/run-*/*/c*") if p.is_dir())


def tune_results(folder: Path) -> list[dict]:
    """What Ray Tune recorded of a trial, one dict per reported epoch (result.json)."""
    return [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]


def assert_tree_finished(kinds: dict[str, list]) -> None:
    statuses = {run.info.status for runs in kinds.values() for run in runs}
    assert statuses == {"FINISHED"}, statuses


@dataclass
class GridRun:
    exit_code: int
    output: str
    storage: Path
    client: MlflowClient


@pytest.fixture(scope="module")
def grid_run(local_ray, tiny_experiment, tmp_path_factory) -> GridRun:
    root = tmp_path_factory.mktemp("grid")
    config = write_yaml(root / "grid.yaml", tiny_experiment("grid", root / "results", ablation=GRID))
    result = invoke_orch("run", config)
    return GridRun(result.exit_code, result.output, root / "results", MlflowClient(sqlite_uri(root / "results")))


# ------------------------------------------------------------------------------ the shared grid
@pytest.mark.integration
def test_decode_variants_are_evaluated_per_trained_model_never_retrained(grid_run):
    assert grid_run.exit_code == 0, grid_run.output
    assert "2 trainings (2 grid cells); 6 evaluations (2 trainings x 3 decode variants)" in grid_run.output
    assert len(trial_folders(grid_run.storage, "grid")) == 2
    kinds = runs_of(grid_run.client, "grid")
    assert len(kinds["parent"]) == 1 and len(kinds["trial"]) == 2 and len(kinds["variant"]) == 6
    for trial in kinds["trial"]:
        variants = [v for v in kinds["variant"] if v.data.tags["mlflow.parentRunId"] == trial.info.run_id]
        assert sorted(v.data.params["decode.length_penalty"] for v in variants) == ["0.0", "0.5", "1.0"]
        assert {v.data.params["model.decoder"] for v in variants} == {trial.data.params["model.decoder"]}


@pytest.mark.integration
def test_mlflow_holds_parent_trial_and_variant_runs_all_finished(grid_run, tmp_path):
    client, kinds = grid_run.client, runs_of(grid_run.client, "grid")
    assert_tree_finished(kinds)
    (parent,) = kinds["parent"]
    assert {"config/resolved.yaml", "config/plan.json", "environment/packages.json"} <= \
        artifact_paths(client, parent.info.run_id)
    assert parent.data.tags["orch.git_commit"]
    plan = json.loads(Path(client.download_artifacts(parent.info.run_id, "config/plan.json", str(tmp_path))).read_text())
    assert (plan["n_trainings"], plan["n_evaluations"]) == (2, 6)

    for trial in kinds["trial"]:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"model.decoder", "model.encoder", "train.lr", "train.epochs", "train.scheduled_sampling.max_rate",
                "eval.select_by", "data.prepared"} <= set(trial.data.params)
        assert not [key for key in trial.data.params if key.startswith("decode.")]  # the variant runs' params
        for metric in ("train_loss", "val/loss", "val/CIDEr"):
            assert [m.step for m in client.get_metric_history(trial.info.run_id, metric)] == [1, 2], metric
        assert "sample_captions.json" in artifact_paths(client, trial.info.run_id)
        assert {"best_model.pt", "meta.json"} <= best_checkpoint_files(client, trial.info.run_id)
    for variant in kinds["variant"]:
        assert "decode.length_penalty" in variant.data.params
        assert {"val/CIDEr", "val/bleu/Bleu_4", "test_CIDEr", "test_Bleu_4", "test_mean_caption_length"} <= \
            set(variant.data.metrics)


@pytest.mark.integration
def test_each_trial_keeps_one_checkpoint_without_the_frozen_encoder_and_no_stray_copy(grid_run):
    from ray.train.constants import _get_ray_train_session_dir

    for trial in trial_folders(grid_run.storage, "grid"):
        folders = sorted(p.name for p in trial.iterdir() if p.is_dir())
        assert folders == ["checkpoint_000001"], folders  # Tune's newest; no working or restored copy
        best = (trial / "checkpoint_000001" / "best_model.pt").stat().st_size
        assert best < 1_000_000  # the decoder only: the frozen RegNet (21 MB) is left out
    (study,) = {t.parent for t in trial_folders(grid_run.storage, "grid")}
    assert len(list(study.glob("frozen_encoder-*.safetensors"))) == 1  # the random one, once for the run
    staged = list(Path(_get_ray_train_session_dir()).glob("*/trials/driver_artifacts/c*"))
    assert not [p for p in staged if p.name in {t.name for t in trial_folders(grid_run.storage, "grid")}]


@pytest.mark.integration
def test_the_driver_is_the_only_mlflow_writer(grid_run):
    """Two trials ran at once on sqlite: no lock errors, and every run was written by this process."""
    assert "database is locked" not in grid_run.output
    kinds = runs_of(grid_run.client, "grid")
    writers = {run.data.tags["orch.driver"] for runs in kinds.values() for run in runs}
    assert writers == {f"{socket.gethostname()}:{os.getpid()}"}


@pytest.mark.integration
def test_one_id_per_training_and_variant_in_progress_mlflow_and_the_table(grid_run):
    """c001 is the lstm training everywhere, c001-d02 its β 0.5 variant: in the progress lines (with
    epoch k/N, elapsed and ETA), the MLflow run names (id first, then the values), and the final table."""
    progress = [line for line in grid_run.output.splitlines() if line.startswith("c001 decoder=lstm: epoch ")]
    assert [line.split(": epoch ")[1].split(",")[0] for line in progress] == ["1/2", "2/2"]
    assert all(re.search(r", val_CIDEr \d\.\d{3}, elapsed \d+s, ETA (\d+s|\d+m\d\ds)\b", line) for line in progress), progress
    assert ", ETA 0s" in progress[-1]
    kinds = runs_of(grid_run.client, "grid")
    assert sorted(run.info.run_name for run in kinds["trial"]) == ["c001 decoder=lstm", "c002 decoder=gru"]
    assert {run.info.run_name for run in kinds["variant"]} == {
        f"c00{cell}-d0{variant} length_penalty={beta}" for cell in (1, 2)
        for variant, beta in ((1, "0.0"), (2, "0.5"), (3, "1.0"))}
    rows = {line.split()[0] for line in grid_run.output.splitlines() if re.match(r"\s*c00\d-d0\d ", line)}
    assert rows == {f"c00{cell}-d0{variant}" for cell in (1, 2) for variant in (1, 2, 3)}
    assert "scores: pycocoevalcap scale" in grid_run.output


@pytest.mark.integration
def test_status_shows_every_cell_of_the_latest_run(grid_run):
    result = invoke_orch("status", "grid", "--storage", grid_run.storage, "--json")
    assert result.exit_code == 0, result.output
    cells = json.loads(result.stdout)["grid"]["cells"]
    assert len(cells) == 6 and {cell["status"] for cell in cells} == {"FINISHED"}
    assert {cell["varying"]["decode.length_penalty"] for cell in cells} == {"0.0", "0.5", "1.0"}


# --------------------------------------------------------------------------- an MLflow server
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` (sqlite backend and served artifacts in `folder`),
    in its own process group, once it answers /health."""
    folder.mkdir(exist_ok=True)
    with (folder / "server.log").open("a") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sqlite_uri(folder),
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        assert server.poll() is None, (folder / "server.log").read_text()
        assert time.monotonic() < deadline, "mlflow server did not answer /health in 180 s"
        time.sleep(0.5)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, served artifacts), stopped afterwards."""
    port = _free_port()
    server = start_mlflow_server(tmp_path / "server", port)
    yield f"http://127.0.0.1:{port}"
    stop_server(server)


@pytest.mark.integration
def test_a_whole_run_lands_in_an_mlflow_server(local_ray, tiny_experiment, mlflow_server, tmp_path):
    config = write_yaml(tmp_path / "served.yaml", tiny_experiment(
        "served", tmp_path / "results", train={"epochs": 1}, tracking={"uri": mlflow_server},
        ablation={"decode.length_penalty": [0.0, 1.0]}))
    result = invoke_orch("run", config)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "results" / "mlflow.db").exists()
    client = MlflowClient(mlflow_server)
    kinds = runs_of(client, "served")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 1, 2)
    assert_tree_finished(kinds)
    (parent,), (trial,) = kinds["parent"], kinds["trial"]
    assert "config/resolved.yaml" in artifact_paths(client, parent.info.run_id)
    assert "best_model.pt" in best_checkpoint_files(client, trial.info.run_id)
    assert epochs_logged(client, trial) == [1]


@pytest.mark.integration
def test_an_mlflow_server_that_goes_away_mid_run_loses_nothing(local_ray, tiny_experiment, tmp_path):
    """The server is SIGKILLed once epoch 1 is recorded and started again (same store, same port) 20 s
    later: the trial trains on, the writes the server did not take are journaled and replayed in
    order, each epoch is in MLflow once, no run is left RUNNING, and the final table is printed."""
    port = _free_port()
    folder = tmp_path / "server"
    server = start_mlflow_server(folder, port)
    uri = f"http://127.0.0.1:{port}"
    config = write_yaml(tmp_path / "flaky.yaml", tiny_experiment(
        "flaky", tmp_path / "results", train={"epochs": 4}, tracking={"uri": uri},
        ablation={"decode.length_penalty": [0.0, 1.0]}))
    restarted: list[subprocess.Popen] = []

    def kill_then_restart() -> None:
        if not first_epoch_recorded(folder / "mlflow.db"):
            return
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(20)
        restarted.append(start_mlflow_server(folder, port))

    watcher = threading.Thread(target=kill_then_restart, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        result = invoke_orch("run", config)
        watcher.join(timeout=300)
    finally:
        for process in restarted or [server]:
            if process.poll() is None:
                stop_server(process)
    output = " ".join(result.output.split())
    assert restarted, "the server was never killed: the run ended before epoch 1 was recorded"
    assert result.exit_code == 0, result.output
    # A driver that sat out MLflow's own retries (over 4 minutes per write, several writes per epoch)
    # takes far longer; 800 s leaves a loaded 2-core machine room, under pytest's 900 s timeout.
    assert time.monotonic() - started < 800
    assert output.count(f"MLflow server {uri} is not answering") == 1, result.output
    assert output.count(f"MLflow server {uri} is back: replayed") == 1, result.output
    assert "every ablation cell" in output  # the final table
    (journal,) = (tmp_path / "results" / "flaky").glob("run-*/mlflow-journal.jsonl")
    from orchestrator.tracking.journal import Journal

    assert Journal(journal).entries() and not Journal(journal).pending()

    restarted.append(start_mlflow_server(folder, port))  # read what the server holds
    try:
        client = MlflowClient(uri)
        kinds = runs_of(client, "flaky")
        assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 1, 2)
        assert_tree_finished(kinds)
        (trial,) = kinds["trial"]
        assert epochs_logged(client, trial) == [1, 2, 3, 4]  # each once: no step lost, none twice
        assert sorted(m.step for m in client.get_metric_history(trial.info.run_id, "val/CIDEr")) == [1, 2, 3, 4]
        for run in kinds["variant"]:  # a variant's scores are those of the kept checkpoint, logged once
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val/CIDEr")] == [4]
            assert "test_CIDEr" in run.data.metrics
        assert "best_model.pt" in best_checkpoint_files(client, trial.info.run_id)
    finally:
        stop_server(restarted[-1])


# ------------------------------------------------------------------- a driver killed mid-trial
TRIAL_PROGRESS = """
    select cell.value, runs.status, epoch.value from runs
    join tags kind on kind.run_uuid = runs.run_uuid and kind.key = 'orch.kind' and kind.value = 'trial'
    join params cell on cell.run_uuid = runs.run_uuid and cell.key = 'orch.cell'
    left join latest_metrics epoch on epoch.run_uuid = runs.run_uuid and epoch.key = 'epoch'
"""


def trial_progress(db: Path) -> dict[str, tuple[str, float]]:
    """cell -> (status, last epoch) read straight from the sqlite file, read-only: a poller must not
    race the driver's own schema set-up."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return {cell: (status, epoch or 0) for cell, status, epoch in connection.execute(TRIAL_PROGRESS)}
    except sqlite3.Error:
        return {}


def first_epoch_recorded(db: Path, timeout_s: float = 300) -> bool:
    """Waits until c001's first epoch is in the sqlite store `db`; False when the time ran out first."""
    deadline = time.monotonic() + timeout_s
    while trial_progress(db).get("c001", ("", 0))[1] < 1:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_for_first_epoch(db: Path, driver: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    """Until `driver` (an `orch` process writing `log`) has recorded c001's first epoch in the sqlite store
    `db`; fails with the log's tail when the driver ends or the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while trial_progress(db).get("c001", ("", 0))[1] < 1:
        assert driver.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"no epoch recorded in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)


@pytest.mark.integration
def test_resume_after_a_killed_driver_continues_without_duplicates(local_ray, tiny_experiment, tmp_path):
    """c001 (1 epoch) finishes, c002 (8 epochs) is mid-way when the driver gets SIGKILL.

    8, not 4: a tiny epoch takes well under a second, and with 4 the trial could end between the
    poll that saw its epoch 2 and the kill (seen once in a full integration run)."""
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "killed.yaml", tiny_experiment(
        "killed", storage, ablation={"train.epochs": [1, 8], "decode.length_penalty": [0.0, 1.0]}))
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(config), "--address", local_ray],
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.monotonic() + 400
    while True:
        progress = trial_progress(storage / "mlflow.db")
        if progress.get("c001", ("", 0))[0] == "FINISHED" and progress.get("c002", ("", 0))[1] >= 2:
            break
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, f"no progress to kill at: {progress}"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    log.close()

    client = MlflowClient(sqlite_uri(storage))
    before = {run.data.params["orch.cell"]: run for run in runs_of(client, "killed")["trial"]}
    status = invoke_orch("status", "killed", "--storage", storage)
    assert status.exit_code == 0, status.output
    # the parent and c002 (its decode variants get runs only when they are evaluated, at its end)
    assert "marked 2 run(s) left RUNNING by a dead driver as KILLED" in status.output
    killed = runs_of(client, "killed")
    assert not [run for runs in killed.values() for run in runs if run.info.status == "RUNNING"]
    assert {run.data.params["orch.cell"]: run.info.status for run in killed["trial"]} == \
        {"c001": "FINISHED", "c002": "KILLED"}

    # A colleague's (or an intruder's) pickles in the shared results folder, where Ray Tune keeps its
    # own state: `orch resume` must not run them.
    marker = tmp_path / "unpickled-marker"
    (invocation,) = (storage / "killed").glob("run-*")
    planted = [plant_pickle(invocation / "trials" / name, marker) for name in ("tuner.pkl", "trainable.pkl")]
    planted += [plant_pickle(folder / "params.pkl", marker) for folder in trial_folders(storage, "killed")]
    planted += [plant_pickle(invocation / name, marker) for name in ("tuner.pkl", "orch.pkl")]
    resumed = invoke_orch("resume", "killed", "--storage", storage)
    assert resumed.exit_code == 0, resumed.output
    assert not marker.exists(), f"orch resume unpickled one of {planted}"
    kinds = runs_of(client, "killed")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 2, 4)
    assert_tree_finished(kinds)
    after = {run.data.params["orch.cell"]: run for run in kinds["trial"]}
    assert after["c001"].info.run_id == before["c001"].info.run_id
    assert after["c001"].info.end_time == before["c001"].info.end_time
    assert epochs_logged(client, after["c001"]) == [1]
    assert after["c002"].info.run_id == before["c002"].info.run_id
    assert epochs_logged(client, after["c002"]) == list(range(1, 9))
    assert "orch.failure_reason" not in after["c002"].data.tags  # the kill is history once it resumed
    restarts = [r["epoch"] for folder in trial_folders(storage, "killed") if folder.name.startswith("c002")
                for r in tune_results(folder) if r["iterations_since_restore"] == 1]
    assert max(restarts) > 1, f"c002 restarted from scratch, not from its checkpoint: {restarts}"


PARENT_EXISTS = "select count(*) from tags where key = 'orch.kind' and value = 'parent'"


def _parent_exists(db: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return connection.execute(PARENT_EXISTS).fetchone()[0] > 0
    except sqlite3.Error:
        return False


KILL_POINTS = {  # when the driver gets SIGKILL, read from MLflow as it runs
    "before any trial run": lambda db: _parent_exists(db),
    "trial runs made, nothing reported": lambda db: any(epoch == 0 for _, epoch in trial_progress(db).values()),
    "after a first report": lambda db: any(epoch >= 1 for _, epoch in trial_progress(db).values()),
}


@pytest.mark.integration
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_driver_killed_at_any_point_resumes_without_a_duplicate_training(local_ray, tiny_experiment, tmp_path,
                                                                            point):
    """SIGKILL at each point of a trial's start, then `orch resume`: one training run per grid cell,
    every epoch logged once, all FINISHED."""
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "k.yaml", tiny_experiment(
        "k", storage, train={"epochs": 2}, ablation={"model.decoder": ["lstm", "gru"]}))
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(config), "--address", local_ray],
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.monotonic() + 300
    while not KILL_POINTS[point](storage / "mlflow.db"):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, f"never reached {point}"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    log.close()

    resumed = invoke_orch("resume", "k", "--storage", storage)
    assert resumed.exit_code == 0, resumed.output
    client = MlflowClient(sqlite_uri(storage))
    kinds = runs_of(client, "k")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 2, 2), point
    assert sorted(run.data.params["orch.cell"] for run in kinds["trial"]) == ["c001", "c002"]
    assert_tree_finished(kinds)
    for run in kinds["trial"]:
        assert epochs_logged(client, run) == [1, 2], (point, run.data.params["orch.cell"])


@pytest.mark.integration
def test_a_search_resumed_after_a_killed_driver_keeps_each_samples_values(local_ray, tiny_experiment, tmp_path):
    """Random search, 2 samples: SIGKILL after a first report; the resume continues each unfinished
    sample with the learning rate it drew, in its own run, and draws none extra."""
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "s.yaml", tiny_experiment(
        "s", storage, train={"epochs": 2}, search={"algorithm": "random", "num_samples": 2,
                                                    "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}}))
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(config), "--address", local_ray],
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    deadline = time.monotonic() + 300
    while not KILL_POINTS["after a first report"](storage / "mlflow.db"):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    log.close()
    client = MlflowClient(sqlite_uri(storage))
    drawn = {run.data.tags["orch.trial"]: run.data.params["train.lr"] for run in runs_of(client, "s")["trial"]}

    resumed = invoke_orch("resume", "s", "--storage", storage)
    assert resumed.exit_code == 0, resumed.output
    kinds = runs_of(client, "s")
    assert len(kinds["trial"]) == 2
    assert_tree_finished(kinds)
    after = {run.data.tags["orch.trial"]: run.data.params["train.lr"] for run in kinds["trial"]}
    assert {k: v for k, v in after.items() if k in drawn} == drawn  # same sample, same values
    for run in kinds["trial"]:
        assert epochs_logged(client, run) == [1, 2]


@pytest.mark.integration
def test_ctrl_c_ends_the_runs_killed_and_resume_finishes_them(local_ray, tiny_experiment, tmp_path):
    """SIGINT, what Ctrl-C sends, reaches the driver (this process) once epoch 1 is recorded."""
    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "interrupted.yaml", tiny_experiment("interrupted", storage, train={"epochs": 3}))

    def interrupt_after_the_first_epoch() -> None:
        if not first_epoch_recorded(storage / "mlflow.db"):
            return
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_the_first_epoch, daemon=True).start()
    result = invoke_orch("run", config)
    assert result.exit_code == 1, result.output
    assert "interrupted: 1 trial(s) did not finish; continue with `orch resume " in result.output
    client = MlflowClient(sqlite_uri(storage))
    kinds = runs_of(client, "interrupted")
    for run in [*kinds["parent"], *kinds["trial"], *kinds["variant"]]:
        assert (run.info.status, run.data.tags["orch.failure_reason"]) == \
            ("KILLED", "interrupted (Ctrl-C) before this run ended")
    (invocation,) = [folder.name for folder in (storage / "interrupted").iterdir() if folder.name.startswith("run-")]
    assert not work_root(f"interrupted/{invocation}").exists()  # the trial's scratch folder is gone

    resumed = invoke_orch("resume", "interrupted", "--storage", storage)
    assert resumed.exit_code == 0, resumed.output
    after = runs_of(client, "interrupted")
    assert_tree_finished(after)
    assert after["trial"][0].info.run_id == kinds["trial"][0].info.run_id
    assert epochs_logged(client, after["trial"][0]) == [1, 2, 3]


# ----------------------------------------- resume bookkeeping, each case at once (no training)
def _checkpoint(folder: Path, epoch: int, whole: bool = True) -> Path:
    """A checkpoint folder as the trainer writes it, with empty weight files (only meta.json is read)."""
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"epoch": epoch}))
    for name in ("training_state.pt", "best_model.pt")[:2 if whole else 1]:
        (folder / name).write_bytes(b"")
    return folder


def test_a_resumed_trial_takes_the_newest_recorded_checkpoint_with_epochs_left(tmp_path):
    from orchestrator.cluster.studies import stored_checkpoints
    from orchestrator.storage import resolve
    from orchestrator.cluster.trainable import _stored_checkpoint
    from trainers.checkpoint import resume_point

    storage = resolve(str(tmp_path))
    trial = tmp_path / "grid" / "run-1" / "trials" / "c002-ab12c_00001"
    for epoch in (1, 2, 3, 4):
        _checkpoint(trial / f"checkpoint_00000{epoch - 1}", epoch)
    (trial / "checkpoint_000004").mkdir()  # cut short by the kill: no meta.json yet
    _checkpoint(trial / "working" / "checkpoint_000009", 9)  # deeper: the trainer's own folder, not Tune's
    stored = stored_checkpoints(storage, "grid/run-1", recorded={"ab12c_00001": 3})
    assert stored == {"ab12c_00001": [f"grid/run-1/trials/c002-ab12c_00001/checkpoint_00000{i}"
                                      for i in (2, 1, 0)]}  # epoch 4: unrecorded

    tune_restored = _checkpoint(tmp_path / "restored", 1)
    for epochs, newest_left in ((4, "checkpoint_000002"), (3, "checkpoint_000001")):  # the last epoch: not resumed
        from_storage = _stored_checkpoint(storage, stored["ab12c_00001"], tmp_path / "run", epochs)
        assert from_storage == trial / newest_left  # a local storage's own folder, not a copy
        assert resume_point([tune_restored, from_storage], epochs) == trial / newest_left  # beats Tune's epoch 1
    assert resume_point([None, _checkpoint(tmp_path / "half", 2, whole=False)], epochs=4) is None


def test_a_reopened_trial_run_logs_each_epoch_once_and_a_finished_one_is_left_alone(tmp_path):
    from orchestrator.tracking.writer import Tracker
    from orchestrator.tracking.recorder import TrialRecorder

    tracker = Tracker(sqlite_uri(tmp_path), "bookkeeping", artifact_root=resolve(str(tmp_path / "artifacts")))
    parent = tracker.parent_run("bookkeeping/run-1", "orch run run-1")

    def recorder(trial: str) -> TrialRecorder:
        return TrialRecorder(tracker, parent, "bookkeeping/run-1", trial, trial, {"train.lr": 0.1}, {"d01": {}})

    def report(epoch: int) -> dict:
        return {"epoch": epoch, "train_loss": 1.0 / epoch, "d01/val_CIDEr": 0.1 * epoch}

    killed, done = recorder("t1"), recorder("t2")
    for epoch in (1, 2):
        killed.record(report(epoch))
    killed.end("KILLED", "driver host:1 ended without closing this run")
    done.record(report(1))
    done.complete(report(1), checkpoint=None)
    finished_at = tracker.client.get_run(done.run_id).info.end_time

    again, done_again = recorder("t1"), recorder("t2")
    assert again.run_id == killed.run_id and done_again.run_id == done.run_id
    run = tracker.client.get_run(again.run_id)
    assert run.info.status == "RUNNING" and "orch.failure_reason" not in run.data.tags
    for epoch in (2, 3):  # epoch 2 again: Tune restored a checkpoint older than the last report
        again.record(report(epoch))
    assert [m.step for m in tracker.client.get_metric_history(again.run_id, "epoch")] == [1, 2, 3]
    done_again.record(report(1))
    done_again.end("KILLED", "the driver stopped before this run ended")
    run = tracker.client.get_run(done.run_id)
    assert (run.info.status, run.info.end_time) == ("FINISHED", finished_at)
    assert [m.step for m in tracker.client.get_metric_history(done.run_id, "epoch")] == [1]


def test_resume_rebuilds_the_trials_from_mlflow_alone(tiny_experiment, tmp_path):
    """Which trials a resume starts, and as what, from MLflow's runs only (no Ray state): a search
    continues each unfinished sample with its own values and draws only what a cell is missing; a
    grid continues its unfinished cells and adds the ones never started; done trials stay done."""
    from orchestrator.experiment.schema import ExperimentConfig
    from orchestrator.settings import RunSettings
    from orchestrator.cluster.studies import resume_studies
    from orchestrator.experiment.plan import make_plan
    from orchestrator.storage import resolve
    from orchestrator.tracking.writer import Tracker
    from orchestrator.tracking.recorder import TrialRecorder

    def launch_of(name: str, **sections) -> tuple[RunSettings, Tracker, str, object]:
        config = ExperimentConfig.model_validate(tiny_experiment(name, tmp_path / "results", **sections))
        launch = RunSettings.resolve(config, invocation="run-1", storage=resolve(str(tmp_path / "r")))
        tracker = Tracker(sqlite_uri(tmp_path), name)
        return launch, tracker, tracker.parent_run(launch.run_key, "orch run run-1"), make_plan(config)

    def trial(tracker, parent, launch, key: str, cell: str, status: str, reason: str = "", **params) -> None:
        recorder = TrialRecorder(tracker, parent, launch.run_key, key, key, {"orch.cell": cell, **params}, {})
        recorder.end(status, reason)

    launch, tracker, parent, plan = launch_of("searched", ablation={"model.decoder": ["lstm", "gru"]},
                                        search={"algorithm": "random", "num_samples": 2,
                                                "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}})
    trial(tracker, parent, launch, "a_00000", "c001", "FINISHED", **{"train.lr": 0.001})
    trial(tracker, parent, launch, "a_00001", "c001", "KILLED", "driver h:1 ended without closing this run",
          **{"train.lr": 0.0031622776601683794})
    trial(tracker, parent, launch, "a_00002", "c002", "KILLED", "stopped early by the scheduler after epoch 1",
          **{"train.lr": 0.002})
    studies = resume_studies(launch, plan, tracker.runs(invocation=launch.run_key, kind="trial"))
    assert [(study.resumed, study.samples, study.cells) for study in studies] == [
        ([{"trial": "a_00001", "cell": "c001", "search": {"train.lr": 0.0031622776601683794}}], None, ["c001"]),
        (None, 1, ["c002"])]  # the scheduler-stopped sample counts: c002 lacks one

    launch, tracker, parent, plan = launch_of("grid", ablation={"model.decoder": ["lstm", "gru", "rnn"]})
    trial(tracker, parent, launch, "c001", "c001", "FINISHED")
    trial(tracker, parent, launch, "c002", "c002", "FAILED", "RuntimeError: boom")
    (study,) = resume_studies(launch, plan, tracker.runs(invocation=launch.run_key, kind="trial"))
    assert study.name.startswith("resume-")
    assert study.resumed == [{"trial": "c002", "cell": "c002"}, {"trial": "c003", "cell": "c003"}]


def test_a_planted_pickle_really_runs_when_unpickled(tmp_path):
    """The resume and loader tests' bait works: unpickling it writes the marker."""
    import pickle

    marker = tmp_path / "marker"
    pickle.loads(plant_pickle(tmp_path / "bait.pkl", marker).read_bytes())
    assert marker.read_text() == "unpickled"


# --------------------------------------------------------------------------- injected failures
@pytest.mark.integration
def test_a_failed_trial_is_retried_from_its_checkpoint(local_ray, tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_FAIL_ONCE_AT_EPOCH", "1")
    config = write_yaml(tmp_path / "retried.yaml", tiny_experiment("retried", tmp_path / "results",
                                                                    ray={"max_failures": 1}))
    result = invoke_orch("run", config)
    assert result.exit_code == 0, result.output
    client = MlflowClient(sqlite_uri(tmp_path / "results"))
    kinds = runs_of(client, "retried")
    assert_tree_finished(kinds)
    (trial,) = kinds["trial"]
    assert trial.data.tags["orch.retries"] == "1"
    assert "injected failure at epoch 1" in trial.data.tags["orch.last_error"]
    assert epochs_logged(client, trial) == [1, 2]
    (folder,) = trial_folders(tmp_path / "results", "retried")
    assert [(r["epoch"], r["iterations_since_restore"]) for r in tune_results(folder)] == [(1, 1), (2, 1)]


@pytest.mark.integration
def test_without_retries_a_failure_exits_1_and_names_its_reason(local_ray, tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_FAIL_ONCE_AT_EPOCH", "1")
    config = write_yaml(tmp_path / "failed.yaml", tiny_experiment(
        "failed", tmp_path / "results", ablation={"decode.length_penalty": [0.0, 1.0]}))
    result = invoke_orch("run", config)
    assert result.exit_code == 1, result.output
    assert "failed c001: " in result.output and "injected failure at epoch 1" in result.output
    kinds = runs_of(MlflowClient(sqlite_uri(tmp_path / "results")), "failed")
    for run in [*kinds["parent"], *kinds["trial"], *kinds["variant"]]:
        assert run.info.status == "FAILED"
        assert "injected failure at epoch 1" in run.data.tags["orch.failure_reason"]


# ------------------------------------------------------------------------------------- ASHA
@pytest.mark.integration
def test_asha_stops_the_weak_trials_early_and_says_so(local_ray, tiny_experiment, tmp_path):
    """Ranked by val loss (2 val images make CIDEr ties); lr 1e-9 learns nothing and starts last,
    when the first trials have set the bar at epoch 1 (ASHA's only rung below max_t 2)."""
    config = write_yaml(tmp_path / "asha.yaml", tiny_experiment(
        "asha", tmp_path / "results", eval={"select_by": "neg_loss"},
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        ablation={"train.lr": [1.0e-2, 3.0e-3, 1.0e-3, 1.0e-9]}))
    result = invoke_orch("run", config)
    assert result.exit_code == 0, result.output
    client = MlflowClient(sqlite_uri(tmp_path / "results"))
    kinds = runs_of(client, "asha")
    trained = {run.data.params["train.lr"]: (run, epochs_logged(client, run)) for run in kinds["trial"]}
    assert trained["1e-09"][1] == [1]
    for run, epochs in trained.values():
        if epochs == [1]:
            assert run.info.status == "KILLED"
            assert run.data.tags["orch.failure_reason"] == "stopped early by the scheduler after epoch 1"
            # Decode variant runs are made when their evaluation runs: a training stopped early had none.
            assert not [v for v in kinds["variant"] if v.data.tags["mlflow.parentRunId"] == run.info.run_id]
        else:
            assert run.info.status == "FINISHED" and epochs == [1, 2]
    assert kinds["parent"][0].info.status == "FINISHED"


# ----------------------------------------------------------------- bad input: exit 2, nothing started
CONFIG_ERRORS = [
    ({"train": {"epoch": 2}}, "unknown key 'train.epoch' — did you mean 'train.epochs'?"),
    ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
    ({"ablation": {"model.decoder": ["lstm", "transformer"]}},
     "ablation value \"transformer\" is invalid: model.decoder: Input should be 'rnn', 'lstm', 'gru' or 'mrnn'"),
]


@pytest.mark.parametrize("sections, message", CONFIG_ERRORS)
def test_a_bad_config_exits_2_before_anything_starts(orch, tiny_experiment, tmp_path, monkeypatch, sections, message):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "bad.yaml", tiny_experiment("bad", Path("results"), **sections))
    result = orch("run", config)
    assert result.exit_code == 2, result.output
    assert message in result.output and "bad.yaml" in result.output
    assert not (tmp_path / "results").exists()


def test_a_missing_config_file_exits_2(orch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = orch("run", "missing.yaml")
    assert result.exit_code == 2 and "config file not found: missing.yaml" in result.output
    assert not (tmp_path / "results").exists()


def test_orch_train_points_a_grid_to_orch_run(orch, tiny_experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "grid.yaml", tiny_experiment("grid", Path("results"), ablation=GRID))
    result = orch("train", config)
    assert result.exit_code == 2 and "run it with `orch run`" in result.output
    assert not (tmp_path / "results").exists()


COURSEWORK = {  # the coursework's grid (docs/coursework.md): 2 encoders x 2 decoders x 3 sampling rates x 4 β
    "name": "coursework",
    "ablation": {"model.encoder": ["resnet101", "vgg16"], "model.decoder": ["lstm", "gru"],
                 "train.scheduled_sampling.max_rate": [0.0, 0.1, 0.25],
                 "decode.length_penalty": [0.0, 0.5, 1.0, 1.5]},
    "scheduler": {"kind": "asha", "grace_period": 2, "reduction_factor": 3},
    "resources": {"cpu": 4, "gpu": 0.5},
}


def test_dry_run_prints_the_plan_and_starts_nothing(orch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = orch("run", write_yaml(tmp_path / "coursework.yaml", COURSEWORK), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "12 trainings (12 grid cells); 48 evaluations (12 trainings x 4 decode variants)" in result.output
    assert "up to 2 trials per GPU" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coursework.yaml"]
