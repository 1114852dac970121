"""The journal of tracking writes a server did not take: kept in order on the driver's disk, replayed
in order when the server answers again (orchestrator.tracking.writer.Tracker.flush)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

JOURNAL_FILE = "mlflow-journal.jsonl"  # next to the run: the tracking writes a server did not take, in order


class Journal:
    """An ordered, append-only file of tracking writes (JSON lines) and how many were replayed.

    Every entry holds what the write needs and its original timestamps, so replaying one that did
    reach the server after all changes nothing (MLflow drops a metric equal in key, step, time and
    value; params, tags and statuses are set to the same values). Artifacts are copied in beside it,
    since a trial's checkpoint folder may be replaced before the server returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.done_path = self.path.with_name(self.path.name + ".done")
        self.ids_path = self.path.with_name(self.path.name + ".ids")
        self.files = self.path.with_name(self.path.name + ".files")

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    @property
    def done(self) -> int:
        return int(self.done_path.read_text() or 0) if self.done_path.is_file() else 0

    def pending(self) -> list[dict]:
        return self.entries()[self.done:]

    def append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def mark_done(self, count: int) -> None:
        _write_atomically(self.done_path, str(count))

    def ids(self) -> dict[str, str]:
        """Placeholder run ids (runs created while the server was away) -> their real ids."""
        return json.loads(self.ids_path.read_text()) if self.ids_path.is_file() else {}

    def set_id(self, placeholder: str, run_id: str) -> None:
        _write_atomically(self.ids_path, json.dumps({**self.ids(), placeholder: run_id}))

    def keep(self, source: Path) -> str:
        """A copy of a file or folder in the journal's files folder; its path."""
        target = self.files / uuid.uuid4().hex / Path(source).name
        target.parent.mkdir(parents=True)
        (shutil.copytree if Path(source).is_dir() else shutil.copyfile)(source, target)
        return str(target)


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)


