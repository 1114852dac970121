"""The sqlite store: commands that open a new one at the same moment all get the same experiment.
(A server that goes away: tests/orchestrator/tracking/test_journal.py.)"""

import multiprocessing

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
