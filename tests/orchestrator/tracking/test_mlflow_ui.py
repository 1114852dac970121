"""What the MLflow UI lists after a finished run, read through the REST API the UI itself calls.

A real `orch run` (2 trainings x 2 decode variants, one epoch, real local Ray), then a real
`mlflow server` on 127.0.0.1 over the store it wrote; `orch export --register` and `orch report`
find the server through MLFLOW_TRACKING_URI, as an MLflow user points them at it.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from orchestrator.tracking.cost import COST_METRICS
from tests.orchestrator.conftest import free_port, invoke_orch, stop_server, write_yaml
from tests.orchestrator.commands.test_run import start_mlflow_server

GRID = {"model.decoder": ["lstm", "gru"], "decode.length_penalty": [0.0, 1.0]}


def _api(server: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One REST call as the UI makes it: GET with a query, or POST with a JSON body."""
    url = f"{server}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def _params(run: dict) -> dict[str, str]:
    return {param["key"]: param["value"] for param in run["data"].get("params", [])}


@pytest.mark.integration
def test_the_mlflow_ui_lists_the_tree_the_fields_the_cost_and_the_champion(local_ray, tiny_experiment, tmp_path,
                                                                          monkeypatch):
    results = tmp_path / "results"
    config = write_yaml(tmp_path / "ui.yaml", tiny_experiment("ui", results, train={"epochs": 1}, ablation=GRID))
    assert invoke_orch("run", config).exit_code == 0

    port = free_port()
    server = start_mlflow_server(results, port)  # the UI over the store `orch run` wrote (results/mlflow.db)
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    try:
        exported = invoke_orch("export", "ui", "--top-k", "2", "--register", "--out", tmp_path / "exports")
        assert exported.exit_code == 0, exported.output
        # Each orch command is a process of its own; in this one, MLflow's model loading during export
        # resets its tracking URI, and with it the variable: set again, as the user's shell still has it.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        reported = invoke_orch("report", "ui", "--out", tmp_path / "report")
        assert reported.exit_code == 0, reported.output

        experiment = _api(url, "experiments/get-by-name", experiment_name="ui")["experiment"]
        runs = _api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        by_kind: dict[str, list] = {}
        for run in runs:
            by_kind.setdefault(_tags(run).get("orch.kind"), []).append(run)
        (parent,), trials, variants = by_kind["parent"], by_kind["trial"], by_kind["variant"]
        assert (len(trials), len(variants)) == (2, 4)

        # The tree: parent -> trials -> variants, each with its own name.
        trial_ids = {trial["info"]["run_id"] for trial in trials}
        assert all(_tags(trial)["mlflow.parentRunId"] == parent["info"]["run_id"] for trial in trials)
        assert all(_tags(variant)["mlflow.parentRunId"] in trial_ids for variant in variants)
        names = [run["info"]["run_name"] for run in [parent, *trials, *variants]]
        assert all(names) and len(set(names)) == len(names)

        # Params: a trial's are what it trained with; a variant's add its decode keys.
        assert {_params(trial)["model.decoder"] for trial in trials} == {"lstm", "gru"}
        assert not [key for trial in trials for key in _params(trial) if key.startswith("decode.")]
        assert sorted(_params(variant)["decode.length_penalty"] for variant in variants) == ["0.0", "0.0", "1.0", "1.0"]

        # The columns the UI fills from MLflow's own fields: Source, User, Dataset, Description, Models.
        for run in (parent, *trials):
            tags = _tags(run)
            assert tags["mlflow.source.name"] == "orch run ui" and tags["mlflow.user"] and tags["mlflow.note.content"]
            (dataset,) = run["inputs"]["dataset_inputs"]
            assert dataset["dataset"]["digest"] and dataset["dataset"]["source_type"] == "local"
        assert "2 trainings x 2 decode variants" in _tags(parent)["mlflow.note.content"]
        assert all(trial["outputs"]["model_outputs"] for trial in trials)

        # Cost beside every score: per trial, and the ablation's total on the parent.
        for trial in trials:
            metrics = {metric["key"] for metric in trial["data"]["metrics"]}
            assert set(COST_METRICS) <= metrics and "val/CIDEr" in metrics
            assert any(key.startswith("system/") for key in metrics)
            assert _tags(trial)["orch.cost_device"] in ("cpu", "gpu")
        assert set(COST_METRICS) <= {metric["key"] for metric in parent["data"]["metrics"]}

        # The registry: the winner is the champion, whatever order the versions were made in.
        champion = _api(url, "registered-models/alias", name="ui", alias="champion")["model_version"]
        champion_tags = {tag["key"]: tag["value"] for tag in champion["tags"]}
        assert champion_tags["rank"] == "1" and champion_tags["metric"] == "val/CIDEr"
        assert "alias champion" in exported.output.splitlines()[0]

        # The report, in the parent run's artifacts.
        listed = _api(url, "artifacts/list", run_id=parent["info"]["run_id"], path="report")
        assert "report/report.md" in {item["path"] for item in listed["files"]}
    finally:
        stop_server(server)
