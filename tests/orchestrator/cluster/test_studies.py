"""What a resume checks in the invocation's folder before it starts anything: room for a checkpoint."""

from __future__ import annotations

import pytest

from orchestrator.cluster.studies import check_room_to_resume
from orchestrator.storage import resolve
from tests.conftest import fill
from trainers.errors import DiskFull


def test_a_resume_onto_a_disk_without_room_for_a_checkpoint_is_refused_in_one_line(small_disk):
    disk = small_disk(1)
    checkpoint = disk / "full" / "run-1" / "trials" / "c001" / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "meta.json").write_text("{}")
    (checkpoint / "best_model.pt").write_bytes(b"\0" * 300_000)
    storage = resolve(str(disk))
    check_room_to_resume(storage, "full/run-1")  # about 700 kB free: room for another

    ballast = fill(disk)
    with pytest.raises(DiskFull, match=r"disk full: .*/full/run-1 \(\d[\d,]* bytes free; a checkpoint of this run "
                                       r"takes 300,002\)"):
        check_room_to_resume(storage, "full/run-1")
    ballast.unlink()
    check_room_to_resume(storage, "full/run-1")  # space freed: the resume goes ahead
