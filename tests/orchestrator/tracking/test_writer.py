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
