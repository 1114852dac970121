"""One driver per invocation: ids that never collide, a lease a live driver keeps and a dead one loses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.lease import (LEASE_FILE, STALE_AFTER_S, DriverAlive, DriverLease, holder_alive, new_invocation,
                                read_lease, refuse_a_live_driver)
from orchestrator.storage import resolve

FOLDER = "grid/run-1"


def test_invocations_started_in_the_same_second_differ_and_sort_by_time():
    ids = [new_invocation("run") for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(a.split("-")[1:3] <= b.split("-")[1:3] for a, b in zip(ids, ids[1:]))
    assert sorted(["run-20261206-160501", ids[0]], key=lambda i: i.split("-", 1)[1])[0] == "run-20261206-160501"


def plant(storage, **holder) -> None:
    storage.write_text(f"{FOLDER}/{LEASE_FILE}", json.dumps({"host": socket.gethostname(), "pid": 1, "token": "x",
                                                             "command": "orch run", "heartbeat": time.time(),
                                                             **holder}))


def test_a_live_driver_keeps_its_invocation_and_is_named(tmp_path):
    storage = resolve(str(tmp_path))
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant(storage, pid=alive.pid)
        with pytest.raises(DriverAlive, match=rf"its driver is still running \(orch run on {socket.gethostname()}, "
                                              rf"PID {alive.pid}, heartbeat \d+ s ago\).*`kill -INT {alive.pid}`"):
            DriverLease.acquire(storage, FOLDER, "orch resume")
        assert read_lease(storage, FOLDER)["pid"] == alive.pid  # left as it was
    finally:
        alive.kill()
        alive.wait()


def test_a_dead_drivers_lease_is_taken_over_and_released_at_the_end(tmp_path):
    storage = resolve(str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a SIGKILLed driver: its process is gone, its lease is still there
    plant(storage, pid=gone.pid)
    with DriverLease.acquire(storage, FOLDER, "orch resume") as lease:
        assert read_lease(storage, FOLDER)["token"] == lease.holder["token"]
        refuse = pytest.raises(DriverAlive)
        with refuse:
            refuse_a_live_driver(storage, FOLDER)  # we hold it now
    assert read_lease(storage, FOLDER) is None


def test_a_lease_from_another_host_holds_until_its_heartbeat_is_old():
    now = time.time()
    fresh = {"host": "node-7", "pid": 4242, "heartbeat": now - 5}
    assert holder_alive(fresh, now)
    assert not holder_alive({**fresh, "heartbeat": now - STALE_AFTER_S - 1}, now)


def test_the_heartbeat_is_refreshed_while_the_driver_lives(tmp_path, monkeypatch):
    import orchestrator.lease as lease_module

    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    storage = resolve(str(tmp_path))
    with DriverLease.acquire(storage, FOLDER, "orch run"):
        first = read_lease(storage, FOLDER)["heartbeat"]
        time.sleep(0.3)
        assert read_lease(storage, FOLDER)["heartbeat"] > first
