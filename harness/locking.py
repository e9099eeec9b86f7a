"""Locks that hold on cluster file systems: an O_EXCL lock file with a heartbeat.

`flock`/`fcntl` locks are unreliable or disabled on some network file systems (NFS without lockd, some
Lustre and GPFS mounts), so concurrent Slurm array tasks could both "hold" one. Creating a file with O_EXCL
is atomic on NFSv3+ and parallel file systems, so the lock is a file that exactly one process creates. Its
owner rewrites its modification time every `heartbeat` seconds; a lock whose owner is gone (same host and the
process is dead) or whose heartbeat is older than `stale_after` seconds is broken and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any


class LockHeld(Exception):
    """Raised by try-only acquisition when another live process holds the lock."""

    def __init__(self, owner: dict[str, Any]) -> None:
        super().__init__(describe_owner(owner))
        self.owner = owner


def describe_owner(owner: dict[str, Any]) -> str:
    started = owner.get("time")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {when}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HeartbeatLock:
    """An exclusive lock file; use as a context manager (blocking) or with `acquire(wait=False)`."""

    def __init__(self, path: Path | str, heartbeat: float = 15.0, stale_after: float = 300.0) -> None:
        self.path = Path(path)
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> dict[str, Any] | None:
        """Who holds the lock now (None when nobody does)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now

    def _stale(self, owner: dict[str, Any]) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _pid_alive(owner["pid"]) or age > self.stale_after
        return age > self.stale_after

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": self.token}, fh)
        return True

    def _break_stale(self, owner: dict[str, Any]) -> None:
        """Move a stale lock aside; only the process whose rename succeeds removes it."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            taken = json.loads(aside.read_text() or "{}")
        except (OSError, ValueError):
            taken = {}
        if taken.get("token") != owner.get("token"):  # a fresh lock was created meanwhile: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def acquire(self, wait: bool = True, poll: float = 0.5, timeout: float | None = None) -> HeartbeatLock:
        """Take the lock; with wait=False raise LockHeld at once when a live owner has it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try_create():
                self._start_heartbeat()
                return self
            owner = self.owner()
            if owner is not None and owner and self._stale(owner):
                self._break_stale(owner)
                continue
            if not wait:
                raise LockHeld(owner or {})
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"lock {self.path} is held by {describe_owner(owner or {})}")
            time.sleep(poll)

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat-{self.path.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        owner = self.owner()
        if owner and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> HeartbeatLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
