"""`ray.storage` as a folder, a file:// URI or a bucket URI: where results go and how resume finds them.

The bucket is real S3 API: moto's server on 127.0.0.1 (`s3_server`, skipped with its reason when
moto cannot start), reached as a user reaches MinIO, `s3://bucket/prefix?endpoint_override=...`.
The same reads and writes also run on file:// and plain folders, Ray Tune's checkpoints and restore
included; `orch run`, resume and export on a bucket are in test_storage_s3_run.py.
"""

from __future__ import annotations

import json
import os

import pyarrow.fs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.storage import CONFIG_FILE, PLAN_FILE, Storage, find_invocation, invocations, resolve, save_invocation
from orchestrator.locations import share_endpoint_with_mlflow
from tests.orchestrator.conftest import invoke_orch, sqlite_uri, write_yaml
from trainers.errors import InputError

S3 = "s3://orch-results/team/coursework?region=eu-west-1&endpoint_override=127.0.0.1:9&scheme=http"


def test_a_relative_folder_becomes_absolute_so_trials_elsewhere_find_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = resolve("results")
    assert storage.is_local and storage.root == str(tmp_path / "results")
    assert storage.uri("grid/run-1") == str(tmp_path / "results" / "grid" / "run-1")
    assert storage.for_ray("grid/run-1") == (str(tmp_path / "results" / "grid" / "run-1"), None)
    assert storage.artifact_location() == (tmp_path / "results" / "mlartifacts").as_uri()


def test_a_file_uri_is_the_same_local_folder(tmp_path):
    assert resolve((tmp_path / "shared").as_uri()).root == resolve(str(tmp_path / "shared")).root
    assert resolve((tmp_path / "shared").as_uri()).is_local


def test_an_s3_uri_keeps_its_options_out_of_paths_and_its_scheme_in_uris():
    storage = resolve(S3)
    assert isinstance(storage.filesystem, pyarrow.fs.S3FileSystem) and not storage.is_local
    assert storage.filesystem.region == "eu-west-1"
    assert storage.path("grid/run-1") == "orch-results/team/coursework/grid/run-1"
    assert storage.uri("grid") == "s3://orch-results/team/coursework/grid"
    assert storage.artifact_location() == "s3://orch-results/team/coursework/mlartifacts"
    assert storage.for_ray("grid") == ("orch-results/team/coursework/grid", storage.filesystem)


@pytest.mark.parametrize("setting, message", [
    ("http://example.org/results", "ray.storage: 'http://example.org/results' is neither a folder nor a storage URI"),
    ("s3://", "ray.storage: 's3://' names no bucket: write s3://bucket/prefix"),
])
def test_a_setting_pyarrow_cannot_open_names_ray_storage(setting, message):
    with pytest.raises(InputError, match="ray.storage") as error:
        resolve(setting)
    assert message in str(error.value)


@settings(max_examples=25, deadline=None)
@given(folder=st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(lambda f: f not in (".", "..")),
       text=st.text(max_size=200))
def test_small_files_round_trip_and_their_folders_are_listed(tmp_path_factory, folder, text):
    storage = resolve(tmp_path_factory.mktemp("store").as_uri())
    storage.write_text(f"{folder}/deep/{CONFIG_FILE}", text)
    assert storage.read_text(f"{folder}/deep/{CONFIG_FILE}") == text
    assert storage.is_file(f"{folder}/deep/{CONFIG_FILE}") and not storage.is_file(f"{folder}/deep")
    assert storage.folders() == [folder] and storage.folders(folder) == ["deep"]
    assert storage.folders("missing") == []


def test_reading_a_missing_file_names_it(tmp_path):
    storage = resolve(str(tmp_path))
    with pytest.raises(InputError, match=f"{tmp_path}/grid/run-1/orch.yaml: no such file"):
        storage.read_text("grid/run-1/orch.yaml")


@pytest.fixture
def two_runs(tmp_path):
    """Experiment `grid` with two runs under a file:// storage, and an unfinished folder without config."""
    storage = resolve((tmp_path / "results").as_uri())
    for run in ("run-20260101-000000", "run-20260102-000000"):
        save_invocation(storage, "grid", run, f"name: grid\n# {run}\n", json.dumps({"cells": []}))
    storage.filesystem.create_dir(storage.path("grid/run-20260103-000000"))  # a driver died before writing
    return storage


def test_a_saved_invocation_holds_its_config_and_plan(two_runs):
    assert two_runs.read_text(f"grid/run-20260102-000000/{CONFIG_FILE}") == "name: grid\n# run-20260102-000000\n"
    assert json.loads(two_runs.read_text(f"grid/run-20260102-000000/{PLAN_FILE}")) == {"cells": []}
    assert invocations(two_runs, "grid") == ["run-20260101-000000", "run-20260102-000000"]


def test_resume_by_name_takes_the_newest_run_with_a_config(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage, name, run = find_invocation("grid", two_runs.setting)
    assert (storage.root, name, run) == (two_runs.root, "grid", "run-20260102-000000")


@pytest.mark.parametrize("as_uri", [False, True])
def test_resume_by_run_folder_finds_its_storage(two_runs, as_uri):
    folder = two_runs.path("grid/run-20260101-000000")
    storage, name, run = find_invocation(f"file://{folder}" if as_uri else folder, "elsewhere")
    assert (storage.root, name, run) == (two_runs.root, "grid", "run-20260101-000000")
    assert storage.read_text(f"{name}/{run}/{CONFIG_FILE}").startswith("name: grid")


def test_resume_of_an_unknown_name_says_where_it_looked(two_runs):
    with pytest.raises(InputError, match=r"'nope': neither a run folder \(with orch.yaml\) nor an experiment "
                                         rf"with runs under {two_runs.root}/"):
        find_invocation("nope", two_runs.setting)


def test_find_lists_a_file_name_at_any_depth_relative_to_the_root(two_runs):
    two_runs.write_text("grid/run-20260101-000000/trials/c001-a/checkpoint_000001/meta.json", "{}")
    two_runs.write_text("grid/run-20260101-000000/trials/c001-a/checkpoint_000000/meta.json", "{}")
    assert two_runs.find("grid/run-20260101-000000", "meta.json") == [
        "grid/run-20260101-000000/trials/c001-a/checkpoint_000000/meta.json",
        "grid/run-20260101-000000/trials/c001-a/checkpoint_000001/meta.json"]
    assert two_runs.find("grid", CONFIG_FILE) == [f"grid/run-2026010{d}-000000/{CONFIG_FILE}" for d in (1, 2)]
    assert two_runs.find("missing", "meta.json") == []


def test_download_gives_config_readers_a_local_file(two_runs, tmp_path):
    copy = two_runs.download(f"grid/run-20260101-000000/{CONFIG_FILE}", tmp_path)
    assert copy == tmp_path / CONFIG_FILE and copy.read_text().startswith("name: grid")


# ------------------------------------------------------------------------ a bucket (moto's S3)
def test_a_bucket_holds_small_files_and_lists_its_folders(s3_server):
    storage = resolve(s3_server.bucket("team/results"))
    bucket = storage.root.split("/")[0]
    assert not storage.is_local and storage.root == f"{bucket}/team/results"
    storage.write_text("grid/run-1/orch.yaml", "name: grid\n")
    storage.write_text("grid/run-1/trials/c001-a/checkpoint_000000/meta.json", '{"epoch": 1}')
    storage.write_text("grid/run-2/plan.json", "{}")
    assert storage.read_text("grid/run-1/orch.yaml") == "name: grid\n"
    assert storage.is_file("grid/run-1/orch.yaml") and not storage.is_file("grid/run-1")
    assert storage.folders() == ["grid"] and storage.folders("grid") == ["run-1", "run-2"]
    assert storage.folders("missing") == [] and storage.find("missing", "meta.json") == []
    assert storage.find("grid", "meta.json") == ["grid/run-1/trials/c001-a/checkpoint_000000/meta.json"]
    with pytest.raises(InputError, match=rf"^s3://{bucket}/team/results/grid/run-3/orch.yaml: no such file$"):
        storage.read_text("grid/run-3/orch.yaml")


def test_folders_travel_to_and_from_a_bucket_byte_for_byte(s3_server, tmp_path):
    storage = resolve(s3_server.bucket())
    checkpoint = tmp_path / "checkpoint_000001"
    (checkpoint / "predictions").mkdir(parents=True)
    (checkpoint / "best_model.pt").write_bytes(bytes(range(256)) * 4096)  # 1 MiB, not text
    (checkpoint / "predictions" / "test_d01.json").write_text("[]")
    storage.upload(checkpoint, "grid/run-1/trials/c001-a/checkpoint_000001")
    assert storage.find("grid", "best_model.pt") == ["grid/run-1/trials/c001-a/checkpoint_000001/best_model.pt"]

    copy = storage.local("grid/run-1/trials/c001-a/checkpoint_000001", tmp_path / "copy")
    assert copy == tmp_path / "copy" / "checkpoint_000001"
    assert (copy / "best_model.pt").read_bytes() == (checkpoint / "best_model.pt").read_bytes()
    assert (copy / "predictions" / "test_d01.json").read_text() == "[]"

    storage.upload(checkpoint / "predictions", "flat/predictions")  # a folder of files only, no subfolder
    assert (storage.download("flat/predictions", tmp_path / "flat") / "test_d01.json").read_text() == "[]"
    assert storage.download("flat/predictions/test_d01.json", tmp_path / "one").read_text() == "[]"


def test_resume_finds_a_run_in_a_bucket_by_name_or_by_its_uri(s3_server):
    setting = s3_server.bucket()
    storage = resolve(setting)
    for run in ("run-20260101-000000", "run-20260102-000000"):
        save_invocation(storage, "grid", run, f"name: grid\n# {run}\n", json.dumps({"cells": []}))
    assert invocations(storage, "grid") == ["run-20260101-000000", "run-20260102-000000"]

    found, name, run = find_invocation("grid", setting)
    assert (found.setting, name, run) == (setting, "grid", "run-20260102-000000")

    run_uri = storage.locate("grid/run-20260101-000000")  # what `orch run` tells users to resume
    assert run_uri.startswith(f"s3://{storage.root}/grid/run-20260101-000000?endpoint_override={s3_server.endpoint}")
    found, name, run = find_invocation(run_uri, "elsewhere")
    assert (found.root, name, run) == (storage.root, "grid", "run-20260101-000000")
    assert found.locate() == setting  # the endpoint and the other options come along
    assert found.read_text(f"{name}/{run}/{CONFIG_FILE}") == "name: grid\n# run-20260101-000000\n"

    with pytest.raises(InputError, match=rf"'nope': neither a run folder \(with orch.yaml\) nor an experiment "
                                         rf"with runs under s3://{storage.root}/$"):
        find_invocation("nope", setting)


def test_a_serverless_mlflow_store_keeps_its_artifacts_in_the_bucket(s3_server, tmp_path, monkeypatch):
    """sqlite runs, artifacts in s3://.../mlartifacts; MLflow's boto3 finds moto through the setting's endpoint."""
    from orchestrator.tracking.writer import Tracker

    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    setting = s3_server.bucket()
    storage = resolve(setting)
    tracker = Tracker(sqlite_uri(tmp_path), "served-by-a-bucket", artifact_root=resolve(str(setting)))
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == f"http://{s3_server.endpoint}"
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == f"s3://{storage.root}/mlartifacts"
    run = tracker.parent_run("grid/run-1", "orch run run-1")
    tracker.log_text(run, "a caption\n", "samples/note.txt")
    tracker.end(run)
    (stored,) = storage.find("mlartifacts", "note.txt")
    assert storage.read_text(stored) == "a caption\n"
    copy = tracker.client.download_artifacts(run, "samples/note.txt", str(tmp_path))
    assert open(copy).read() == "a caption\n"


def test_orch_train_on_a_bucket_uploads_its_run_folder_when_it_ends(s3_server, tiny_experiment, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    setting = s3_server.bucket()
    storage = resolve(setting)
    config = write_yaml(tmp_path / "one.yaml", tiny_experiment("one", setting, train={"epochs": 1},
                                                               tracking={"uri": sqlite_uri(tmp_path)}))
    result = invoke_orch("train", config, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    (run,) = storage.folders("one")
    assert summary["results"] == f"s3://{storage.root}/one/{run}"
    assert summary["predictions"].startswith(f"s3://{storage.root}/one/{run}/")
    predictions = summary["predictions"][len(f"s3://{storage.root}/"):]
    assert {"image_id", "caption"} <= set(json.loads(storage.read_text(predictions))[0])
    assert json.loads(storage.read_text(f"one/{run}/metrics.json"))["results"] == summary["results"]
    assert storage.find("mlartifacts", "best_model.pt")  # MLflow's copy of the best checkpoint, in the bucket
    assert not list(tmp_path.glob("s3*")), "a bucket setting must not become a local folder"


def test_a_driver_keeps_a_buckets_journal_on_local_disk_and_a_local_storages_in_its_folder(tmp_path, monkeypatch):
    from orchestrator.settings import RunSettings
    from orchestrator.locations import driver_folder

    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path / "state"))
    assert driver_folder(str(tmp_path / "results")) == tmp_path / "results"
    assert driver_folder("s3://team/results?endpoint_override=127.0.0.1:9&scheme=http") == \
        tmp_path / "state" / "storage" / "s3" / "team" / "results"
    config = ExperimentConfig.model_validate({"name": "cw", "ray": {"storage": "s3://team/results"},
                                              "tracking": {"uri": "http://127.0.0.1:5000"}})
    launch = RunSettings.resolve(config, storage=Storage("s3://team/results", None, "team/results"))
    assert launch.journal == tmp_path / "state" / "storage" / "s3" / "team" / "results" / launch.folder / \
        "mlflow-journal.jsonl"


def test_a_tracking_server_keeps_its_own_artifacts_and_a_local_storage_its_folder(tmp_path):
    from orchestrator.tracking.store import artifact_location

    bucket = "s3://orch/results?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    assert artifact_location("https://mlflow.example.org", resolve(bucket)) is None  # --serve-artifacts decides
    assert artifact_location("http://127.0.0.1:5000", resolve(str(tmp_path))) is None
    assert artifact_location("postgresql://mlflow@db/mlflow", resolve(bucket)) == "s3://orch/results/mlartifacts"
    assert artifact_location(sqlite_uri(tmp_path), resolve(str(tmp_path / "r"))) == (tmp_path / "r" / "mlartifacts").as_uri()


@pytest.mark.parametrize("environment, expected", [
    ({}, "http://minio.internal:9000"),
    ({"AWS_ENDPOINT_URL": "http://elsewhere:9000"}, None),  # boto3 reads this one itself
    ({"MLFLOW_S3_ENDPOINT_URL": "http://elsewhere:9000"}, "http://elsewhere:9000"),
])
def test_mlflow_is_given_the_endpoint_of_the_setting_unless_the_environment_names_one(monkeypatch, environment,
                                                                                       expected):
    for variable in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    share_endpoint_with_mlflow("s3://orch/results?endpoint_override=minio.internal:9000&scheme=http")
    assert os.environ.get("MLFLOW_S3_ENDPOINT_URL") == expected
    share_endpoint_with_mlflow("s3://orch/results")  # real S3: nothing to hand over
    share_endpoint_with_mlflow("/mnt/results")
    assert os.environ.get("MLFLOW_S3_ENDPOINT_URL") == expected


def test_a_bucket_storage_without_a_tracking_uri_is_a_config_error_naming_both(tiny_experiment, tmp_path):
    bucket = "s3://orch/results?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    config = write_yaml(tmp_path / "bucket.yaml", tiny_experiment("bucket", bucket))
    result = invoke_orch("run", config, "--dry-run")
    assert result.exit_code == 2, result.output
    assert f"ray.storage is '{bucket}', where no sqlite file can live: set tracking.uri (an MLflow server, or " \
           "sqlite:///PATH)" in result.output


@pytest.mark.parametrize("command", [["status", "--json"], ["report", "grid"], ["export", "grid"]])
def test_readers_given_a_bucket_for_their_store_are_told_to_pass_the_config(command):
    result = invoke_orch(*command, "--storage", "s3://orch/results")
    assert result.exit_code == 2, result.output
    assert "--storage is 's3://orch/results', where no sqlite file can live: pass --config with the " \
           "experiment's YAML (its tracking.uri)" in result.output


# ------------------------------------------------------------------- Ray Tune on a resolved storage
def _counting_trainable(config):
    """Three reported steps with a checkpoint each; fails at step 2 while the marker file says so."""
    import os
    import tempfile

    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = int(open(os.path.join(folder, "step")).read())
    for step in range(start + 1, 4):
        if step == 2 and os.path.exists(config["fail_marker"]):
            raise RuntimeError("failing at step 2")
        with tempfile.TemporaryDirectory() as folder:
            open(os.path.join(folder, "step"), "w").write(str(step))
            tune.report({"step": step}, checkpoint=tune.Checkpoint.from_directory(folder))


@pytest.mark.integration
def test_tune_checkpoints_into_the_storage_and_restores_from_it(local_ray, tmp_path):
    """An errored study restored from a file:// storage continues from its checkpoint, not from scratch."""
    from ray import tune

    storage = resolve((tmp_path / "results").as_uri())
    marker = tmp_path / "fail"
    marker.write_text("1")
    storage_path, filesystem = storage.for_ray("grid/run-1")
    tuner = tune.Tuner(_counting_trainable, param_space={"fail_marker": str(marker)},
                       run_config=tune.RunConfig(name="trials", storage_path=storage_path,
                                                 storage_filesystem=filesystem, verbose=0))
    (first,) = tuner.fit()
    assert first.error is not None and first.metrics["step"] == 1
    assert storage.is_file("grid/run-1/trials/tuner.pkl")
    (trial,) = storage.folders("grid/run-1/trials")
    assert storage.folders(f"grid/run-1/trials/{trial}") == ["checkpoint_000000"]

    marker.unlink()
    assert tune.Tuner.can_restore(storage.path("grid/run-1/trials"), storage_filesystem=filesystem)
    restored = tune.Tuner.restore(storage.path("grid/run-1/trials"), _counting_trainable, resume_errored=True,
                                  storage_filesystem=filesystem)
    (second,) = restored.fit()
    assert second.error is None and second.metrics["step"] == 3
    assert second.metrics["iterations_since_restore"] == 2  # steps 2 and 3: resumed after step 1
    assert storage.folders(f"grid/run-1/trials/{trial}")[-1] == "checkpoint_000002"
