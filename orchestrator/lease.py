"""One driver per invocation: a lease in the invocation's folder, refreshed while its driver lives.

Two drivers of one invocation (an `orch resume` started beside the `orch run` still training it)
would train every trial twice and log each epoch twice. So the driver of `orch run`, `orch resume`
or `orch train` holds `driver.json` in the invocation's folder: who it is (host, PID, command) and
a heartbeat it rewrites every HEARTBEAT_S from a thread. Another driver refuses the invocation, in
one line naming the holder and how to stop it, while that holder lives: its heartbeat is fresh and,
on the same host, its process exists. A lease whose holder is dead (a SIGKILLed driver: its process
gone, or its heartbeat older than STALE_AFTER_S on another host) is taken over.

It works on a shared mount and on a bucket, which offers no atomic create: a driver writes its
lease, waits a moment and reads it back, and only the one whose lease it finds goes on. Invocation
ids are made unique (time to the millisecond and a random suffix, `new_invocation`), so two
`orch run`s started in the same second are two invocations and never meet here.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

import psutil

from orchestrator.storage import Storage
from trainers.errors import InputError

LEASE_FILE = "driver.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0  # a heartbeat this old means its driver is gone, wherever it ran
SETTLE_S = 0.5  # between writing a lease and reading it back (a bucket's last writer wins)


class DriverAlive(InputError):
    """Another driver holds the invocation: the message names it and how to stop it."""


def new_invocation(command: str) -> str:
    """`run-20261206-160501-123-a1b2c3`: the time to the millisecond, then a random suffix, so ids
    never collide and still sort by when they began."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{command}-{stamp}-{int(now * 1000) % 1000:03d}-{secrets.token_hex(3)}"


@dataclass
class DriverLease:
    """The lease this process holds on an invocation's folder (`folder`, relative to the storage)."""

    storage: Storage
    folder: str
    holder: dict
    _stop: Optional[threading.Event] = None

    @property
    def path(self) -> str:
        return f"{self.folder}/{LEASE_FILE}"

    @classmethod
    def acquire(cls, storage: Storage, folder: str, command: str) -> "DriverLease":
        """Take the invocation, or raise DriverAlive naming the driver that holds it."""
        refuse_a_live_driver(storage, folder)
        current = read_lease(storage, folder)
        lease = cls(storage, folder, {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                                      "started": time.time(), "token": secrets.token_hex(8)})
        lease._write()
        time.sleep(SETTLE_S)
        found = read_lease(storage, folder)
        if found is None or found.get("token") != lease.holder["token"]:  # another driver wrote after us
            raise DriverAlive(_refusal(storage, folder, found or current or {}))
        lease._stop = threading.Event()
        threading.Thread(target=lease._beat, name="orch-driver-lease", daemon=True).start()
        return lease

    def _write(self) -> None:
        self.storage.write_text(self.path, json.dumps({**self.holder, "heartbeat": time.time()}))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:  # a full disk or a bucket that did not answer: the next beat tries again
                pass

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, unless another driver took it over meanwhile."""
        if self._stop is not None:
            self._stop.set()
        current = read_lease(self.storage, self.folder)
        if current is not None and current.get("token") == self.holder["token"]:
            self.storage.delete(self.path)

    def __enter__(self) -> "DriverLease":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def refuse_a_live_driver(storage: Storage, folder: str) -> None:
    """DriverAlive when a live driver holds the invocation: checked first, before a resume starts anything."""
    current = read_lease(storage, folder)
    if current is not None and holder_alive(current):
        raise DriverAlive(_refusal(storage, folder, current))


def read_lease(storage: Storage, folder: str) -> Optional[dict]:
    """The lease of an invocation's folder; None when it holds none (or one cut short)."""
    if not storage.is_file(f"{folder}/{LEASE_FILE}"):
        return None
    try:
        return json.loads(storage.read_text(f"{folder}/{LEASE_FILE}"))
    except (InputError, ValueError):
        return None


def holder_alive(lease: dict, now: Optional[float] = None) -> bool:
    """Whether a lease's driver still runs: its heartbeat is fresh and, on this host, its process exists."""
    now = time.time() if now is None else now
    if now - float(lease.get("heartbeat", 0.0)) > STALE_AFTER_S:
        return False
    if lease.get("host") == socket.gethostname():
        return psutil.pid_exists(int(lease.get("pid", -1)))
    return True


def _refusal(storage: Storage, folder: str, lease: dict) -> str:
    host, pid = lease.get("host", "?"), lease.get("pid", "?")
    age = time.time() - float(lease.get("heartbeat", time.time()))
    return (f"{storage.uri(folder)}: its driver is still running ({lease.get('command', 'orch')} on {host}, PID {pid}, "
            f"heartbeat {age:.0f} s ago): let it finish, or stop it (Ctrl-C in its terminal, or `kill -INT {pid}` "
            f"on {host}) and resume then")
