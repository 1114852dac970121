"""The tracking journal against a server that really goes away and comes back, in seconds: MLflow's own
tracking server application served from a thread of the test on 127.0.0.1, stopped (its port then
refuses connections, as a crashed or restarting server's does) and started again on the same port and
store. The integration tests do the same with `mlflow server` processes and whole `orch run`s."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.tracking.journal import Journal
from orchestrator.tracking.recorder import TrialRecorder
from orchestrator.tracking.writer import Tracker, replay_journals
from tests.orchestrator.commands.test_run import runs_of


class LocalServer:
    """MLflow's tracking server (its Flask application, a sqlite store and served artifacts) in a thread."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch):
        import mlflow.server.handlers as handlers
        import mlflow.tracking._model_registry.utils as registry
        import mlflow.tracking._tracking_service.utils as tracking

        # The handlers open their stores once and then make them this process's default tracking and
        # registry URIs (globals and environment variables): all of it is put back when the module ends,
        # or later tests' commands would find their default store here.
        for module, name in ((handlers, "_tracking_store"), (handlers, "_model_registry_store"),
                             (tracking, "_tracking_uri"), (registry, "_registry_uri")):
            monkeypatch.setattr(module, name, getattr(module, name))
        for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            monkeypatch.setenv(variable, os.environ.get(variable, ""))  # records the value (or its absence)
            if not os.environ[variable]:
                monkeypatch.delenv(variable)
        # The server's handlers read their store from these variables, once, when first asked.
        monkeypatch.setenv("_MLFLOW_SERVER_FILE_STORE", f"sqlite:///{folder / 'mlflow.db'}")
        monkeypatch.setenv("_MLFLOW_SERVER_SERVE_ARTIFACTS", "true")
        monkeypatch.setenv("_MLFLOW_SERVER_ARTIFACT_DESTINATION", str(folder / "artifacts"))
        monkeypatch.setenv("_MLFLOW_SERVER_ARTIFACT_ROOT", "mlflow-artifacts:/")
        from mlflow.server import app

        self.app, self.port, self.server = app, _unassigned_port(), None
        self.start()
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import time

        from werkzeug.serving import ThreadedWSGIServer

        deadline = time.monotonic() + 30
        while True:  # a port just closed can be busy for a moment on a loaded machine
            try:
                self.server = ThreadedWSGIServer("127.0.0.1", self.port, self.app)
                break
            except (OSError, SystemExit):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Gone: the port refuses connections until `start`."""
        self.server.shutdown()
        self.server.server_close()


def _unassigned_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999) and above Ray's worker ports (10002-19999):
    while the server is away its port is free, and no outgoing connection or Ray worker is handed it."""
    import random
    import socket

    for port in random.Random().sample(range(20000, 32000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (its handlers keep the store they opened first); each test its experiment."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        local = LocalServer(tmp_path_factory.mktemp("server"), monkeypatch)
        yield local
        local.stop()


@pytest.fixture
def away_then_back(server):
    """The server, started again after the test whatever it left it as."""
    yield server
    try:
        server.stop()
    except Exception:  # noqa: BLE001 - already stopped by the test
        pass
    server.start()


def test_runs_made_while_the_server_is_away_are_created_once_in_order_when_it_returns(away_then_back, tmp_path):
    """A parent, a trial and a variant run made and logged to while the server is away (journaled, with
    placeholder ids); it comes back: one replay makes each run once, nested right, every metric step
    once. A second replay (as `orch status` would) changes nothing; nor does replaying all again."""
    server = away_then_back
    lines: list[str] = []
    journal = tmp_path / "run" / "mlflow-journal.jsonl"
    tracker = Tracker(server.uri, "away", journal=journal, say=lines.append)
    server.stop()

    parent = tracker.parent_run("away/run-1", "orch run run-1")
    recorder = TrialRecorder(tracker, parent, "away/run-1", "c001", "c001 lr=0.1", {"train.lr": 0.1}, {"d01": {}})
    for epoch in (1, 2):
        recorder.record({"epoch": epoch, "train_loss": 1.0 / epoch})
    recorder.complete({"epoch": 2, "train_loss": 0.5, "d01/val_CIDEr": 0.2, "d01/test_CIDEr": 0.15}, None)
    tracker.end(parent)
    assert len(lines) == 1 and "is not answering" in lines[0]  # one line when it goes, not one per write
    assert parent.startswith("pending-") and len(Journal(journal).pending()) > 5
    assert not tracker.flush() and Journal(journal).pending()  # still away: everything kept

    server.start()
    assert tracker.flush() and "is back: replayed" in lines[-1]
    assert not Journal(journal).pending() and replay_journals(server.uri, "away", tmp_path) == 0
    client = MlflowClient(server.uri)
    kinds = runs_of(client, "away")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 1, 1)
    (p,), (t,), (v,) = kinds["parent"], kinds["trial"], kinds["variant"]
    assert t.data.tags["mlflow.parentRunId"] == p.info.run_id
    assert v.data.tags["mlflow.parentRunId"] == t.info.run_id
    assert {run.info.status for run in (p, t, v)} == {"FINISHED"}
    assert t.data.params["train.lr"] == "0.1"
    assert [(m.step, m.value) for m in client.get_metric_history(t.info.run_id, "train_loss")] == [(1, 1.0), (2, 0.5)]
    assert sorted(v.data.metrics.items()) == [("test_CIDEr", 0.15), ("val/CIDEr", 0.2)]
    assert [m.step for m in client.get_metric_history(v.info.run_id, "val/CIDEr")] == [2]

    Journal(journal).mark_done(0)  # replaying everything again: a crash before `.done` was written
    assert Tracker(server.uri, "away", journal=journal, say=lines.append).flush()
    kinds = runs_of(client, "away")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 1, 1)
    assert [m.step for m in client.get_metric_history(t.info.run_id, "train_loss")] == [1, 2]


def test_a_server_that_goes_away_mid_run_loses_nothing_and_keeps_the_order(away_then_back, tmp_path):
    """Writes straight through, then away for two epochs, then back: the run holds every epoch once,
    in order, the earlier ones from before the outage untouched; later writes go straight through again."""
    server = away_then_back
    lines: list[str] = []
    journal = tmp_path / "run" / "mlflow-journal.jsonl"
    tracker = Tracker(server.uri, "mid-run", journal=journal, say=lines.append)
    parent = tracker.parent_run("mid-run/run-1", "orch run run-1")
    recorder = TrialRecorder(tracker, parent, "mid-run/run-1", "c001", "c001", {"train.lr": 0.1}, {})
    recorder.record({"epoch": 1, "train_loss": 1.0})
    assert not Journal(journal).entries() and not lines  # the server answered: nothing journaled

    server.stop()
    recorder.record({"epoch": 2, "train_loss": 0.5})
    recorder.record({"epoch": 3, "train_loss": 0.25})
    assert len(lines) == 1 and len(Journal(journal).pending()) >= 2

    server.start()
    assert tracker.flush() and "is back" in lines[-1]
    recorder.record({"epoch": 4, "train_loss": 0.125})
    recorder.end("FINISHED")
    tracker.end(parent)
    client = MlflowClient(server.uri)
    (trial,) = runs_of(client, "mid-run")["trial"]
    assert [(m.step, m.value) for m in client.get_metric_history(trial.info.run_id, "train_loss")] == [
        (1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125)]
    assert client.get_run(trial.info.run_id).info.status == "FINISHED"


def test_model_writes_journaled_while_the_server_is_away_replay_exactly_once(away_then_back, tmp_path):
    """The writes of a training's logged model (the model with its files, params and tags, metrics linked
    to it, a variant run's link to it, the experiment's tags) made while the server is away wait in the
    journal and reach the store once when it answers, also when the journal is replayed a second time."""
    import mlflow.pyfunc

    class Answering(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    server = away_then_back
    folder = tmp_path / "model"
    mlflow.pyfunc.save_model(str(folder), python_model=Answering())
    journal = tmp_path / "run" / "mlflow-journal.jsonl"
    lines: list[str] = []
    tracker = Tracker(server.uri, "models-away", journal=journal, say=lines.append)
    trial = tracker.parent_run("models-away/run-1", "trial")
    variant = tracker.parent_run("models-away/run-2", "variant")
    tracker.log_metrics(trial, {"val/CIDEr": 0.5}, step=2)

    server.stop()
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

    server.start()
    assert tracker.flush() and "is back: replayed 5" in lines[-1]
    Journal(journal).mark_done(0)  # replayed again from the start: a crash before `.done` was written
    assert Tracker(server.uri, "models-away", journal=journal, say=lines.append).flush()

    client = MlflowClient(server.uri)
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
    assert "MLmodel" in {item.path for item in client.list_logged_model_artifacts(logged.model_id)}


def test_without_a_journal_a_server_away_is_an_error_not_a_silent_loss(away_then_back, tmp_path):
    """A read command's tracker (no journal) does not pretend: the write fails, naming the server."""
    server = away_then_back
    tracker = Tracker(server.uri, "no-journal")
    server.stop()
    with pytest.raises(Exception) as raised:
        tracker.parent_run("no-journal/run-1", "orch run run-1")
    assert "127.0.0.1" in str(raised.value) or "onnection" in str(raised.value)
