"""`ray.storage` as a folder, a file:// URI or a bucket URI: where results go and how resume finds them.

Buckets are not reachable here (nothing beyond 127.0.0.1), so s3:// is checked for what resolving
it promises without a request; everything that reads or writes runs on file:// and plain folders,
through the same pyarrow filesystem calls a bucket gets, Ray Tune's checkpoints and restore included.
"""

from __future__ import annotations

import json

import pyarrow.fs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.storage import (CONFIG_FILE, PLAN_FILE, find_invocation, invocations, resolve,
                                  save_invocation)
from trainers.errors import InputError

S3 = "s3://orch-results/team/coursework?region=eu-west-1&endpoint_override=127.0.0.1:9&scheme=http"


def test_a_relative_folder_becomes_absolute_so_trials_elsewhere_find_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = resolve("results")
    assert storage.is_local and storage.root == str(tmp_path / "results")
    assert storage.uri("grid/run-1") == str(tmp_path / "results" / "grid" / "run-1")
    assert storage.for_ray("grid/run-1") == (str(tmp_path / "results" / "grid" / "run-1"), storage.filesystem)
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
