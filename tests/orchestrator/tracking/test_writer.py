"""The sqlite store: commands that open a new one at the same moment all get the same experiment.
A server that goes away: the writes it missed are journaled and replayed once, in order."""

import multiprocessing

import pytest
from mlflow import MlflowClient

from orchestrator.tracking.writer import Tracker


def _open(uri: str, answers) -> None:
    try:
        answers.put(Tracker(uri, "race").experiment_id)
    except Exception as error:  # noqa: BLE001 - the parent asserts on what came back
        answers.put(f"{type(error).__name__}: {error}")


def test_commands_opening_a_new_sqlite_store_at_once_share_one_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    processes = [context.Process(target=_open, args=(uri, answers)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    ids = [answers.get(timeout=5) for _ in processes]
    assert len(set(ids)) == 1, ids  # no "table already exists", no second experiment
    assert sorted(e.name for e in MlflowClient(uri).search_experiments()) == ["Default", "race"]


@pytest.mark.integration
def test_runs_made_while_the_server_is_away_are_created_once_in_order_when_it_returns(tmp_path):
    """A real `mlflow server` is stopped; a parent, a trial and a variant run are made and logged to
    (journaled, with placeholder ids), one write of them twice; the server comes back on the same
    store: one replay makes each run once, nested right, every metric step once. A second replay
    (as `orch status` would) changes nothing."""
    from orchestrator.tracking.journal import Journal
    from orchestrator.tracking.recorder import TrialRecorder
    from orchestrator.tracking.writer import replay_journals
    from tests.orchestrator.conftest import free_port, stop_server
    from tests.orchestrator.commands.test_run import runs_of, start_mlflow_server

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path / "server", port)
    lines: list[str] = []
    journal = tmp_path / "run" / "mlflow-journal.jsonl"
    tracker = Tracker(uri, "away", journal=journal, say=lines.append)
    stop_server(server)

    parent = tracker.parent_run("away/run-1", "orch run run-1")
    recorder = TrialRecorder(tracker, parent, "away/run-1", "c001", "c001 lr=0.1", {"train.lr": 0.1}, {"d01": {}})
    for epoch in (1, 2):
        recorder.record({"epoch": epoch, "train_loss": 1.0 / epoch, "d01/val_CIDEr": 0.1 * epoch})
    recorder.end("FINISHED")
    tracker.end(parent)
    assert len(lines) == 1 and "is not answering" in lines[0]
    assert parent.startswith("pending-") and len(Journal(journal).pending()) > 5

    server = start_mlflow_server(tmp_path / "server", port)
    try:
        assert tracker.flush() and "is back: replayed" in lines[-1]
        assert replay_journals(uri, "away", tmp_path) == 0  # nothing left
        client = MlflowClient(uri)
        kinds = runs_of(client, "away")
        assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 1, 1)
        (p,), (t,), (v,) = kinds["parent"], kinds["trial"], kinds["variant"]
        assert t.data.tags["mlflow.parentRunId"] == p.info.run_id
        assert v.data.tags["mlflow.parentRunId"] == t.info.run_id
        assert {run.info.status for run in (p, t, v)} == {"FINISHED"}
        assert [m.step for m in client.get_metric_history(t.info.run_id, "epoch")] == [1, 2]
        assert [m.value for m in client.get_metric_history(v.info.run_id, "val/CIDEr")] == pytest.approx([0.1, 0.2])
        Journal(journal).mark_done(0)  # replaying everything again (a crash before `.done` was written)
        assert Tracker(uri, "away", journal=journal, say=lines.append).flush()
        kinds = runs_of(client, "away")
        assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 1, 1)
        assert [m.step for m in client.get_metric_history(t.info.run_id, "epoch")] == [1, 2]
    finally:
        stop_server(server)


def test_model_writes_journaled_while_the_server_is_away_replay_exactly_once(tmp_path, monkeypatch):
    """The writes of a training's logged model (the model with its files, params and tags, metrics linked
    to it, a variant run's link to it, the experiment's tags) made while the server is away wait in the
    journal and reach the store once when it answers, also when the journal is replayed a second time."""
    import mlflow.pyfunc

    from orchestrator.tracking.journal import Journal

    class Answering(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    folder = tmp_path / "model"
    mlflow.pyfunc.save_model(str(folder), python_model=Answering())
    uri, journal = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run" / "mlflow-journal.jsonl"
    lines: list[str] = []
    tracker = Tracker(uri, "away", journal=journal, say=lines.append)
    trial = tracker.parent_run("away/run-1", "trial")
    variant = tracker.parent_run("away/run-2", "variant")
    tracker.log_metrics(trial, {"val/CIDEr": 0.5}, step=2)

    def refused(*args, **kwargs):
        raise ConnectionError("Connection refused")

    with monkeypatch.context() as away:  # every write the client tries now fails as a server that went away does
        away.setattr(MlflowClient, "search_logged_models", refused)
        away.setattr(MlflowClient, "log_batch", refused)
        model = tracker.log_model(trial, folder, "c001", 2, params={"train.lr": 0.1}, tags={"orch.trial": "c001"},
                                  model_type="captioner")
        tracker.link_step_metrics(trial, model, 2, "val/", {"name": "synthetic", "digest": "abc"})
        tracker.log_metrics(variant, {"test_CIDEr": 0.4}, step=2, model_id=model,
                            dataset={"name": "synthetic", "digest": "abc"})
        tracker.link_model(variant, model)
        tracker.set_experiment_tags({"mlflow.experimentKind": "custom_model_development"})
    assert model.startswith("pending-") and "is not answering" in lines[0]
    assert [entry["op"] for entry in Journal(journal).pending()] == [
        "log_model", "link_metrics", "log_batch", "link_model", "set_experiment_tags"]

    assert tracker.flush() and "is back: replayed 5" in lines[-1]
    Journal(journal).mark_done(0)  # replayed again from the start: a crash before `.done` was written
    assert Tracker(uri, "away", journal=journal, say=lines.append).flush()

    client = MlflowClient(uri)
    (logged,) = client.search_logged_models([tracker.experiment_id])
    assert (logged.name, logged.model_type, logged.params, logged.status) == ("c001", "captioner", {"train.lr": "0.1"},
                                                                              "READY")
    assert sorted((m.key, m.step, m.value, m.dataset_name) for m in logged.metrics) == [
        ("test_CIDEr", 2, 0.4, "synthetic"), ("val/CIDEr", 2, 0.5, "synthetic")]
    assert [output.model_id for output in client.get_run(trial).outputs.model_outputs] == [logged.model_id]
    assert [item.model_id for item in client.get_run(variant).inputs.model_inputs] == [logged.model_id]
    assert [m.value for m in client.get_metric_history(trial, "val/CIDEr")] == [0.5]
    assert [m.value for m in client.get_metric_history(variant, "test_CIDEr")] == [0.4]
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    files = {item.path for item in client.list_logged_model_artifacts(logged.model_id)}
    assert "MLmodel" in files
