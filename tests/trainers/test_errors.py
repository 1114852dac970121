"""What counts as a full disk: the OS's ENOSPC, and SQLite's "database or disk is full" however deep
SQLAlchemy and MLflow wrap it."""

from __future__ import annotations

import errno
import sqlite3

from trainers.errors import DiskFull, disk_full


def test_enospc_names_its_file_and_a_wrapped_sqlite_full_store_counts_too():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device", "/data/ckpt/best_model.pt")) == \
        "/data/ckpt/best_model.pt"
    assert disk_full(OSError(errno.ENOSPC, "No space left on device")) == ""
    assert disk_full(DiskFull("/data")) == "/data"
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as error:
            raise RuntimeError("(sqlite3.OperationalError) while logging a batch") from error
    except RuntimeError as wrapped:
        assert disk_full(wrapped) == ""


def test_other_errors_are_not_a_full_disk():
    assert disk_full(OSError(errno.EACCES, "Permission denied", "/data")) is None
    assert disk_full(ValueError("no space for a decoder named 'x'")) is None
    assert disk_full(None) is None
    assert str(DiskFull("/data/results")) == "disk full: /data/results"
