"""Locks that hold on cluster file systems: an O_EXCL lock file with a heartbeat.

`flock`/`fcntl` locks are unreliable or disabled on some network file systems (NFS without lockd, some
Lustre and GPFS mounts), so concurrent Slurm array tasks could both "hold" one. Creating a file with O_EXCL
is atomic on NFSv3+ and parallel file systems, so the lock is a file that exactly one process creates. It
names its owner (host, pid, kernel boot id and pid namespace, Slurm job) and a random token. The owner
rewrites its modification time every `heartbeat` seconds, retrying transient errors (ESTALE, EIO) sooner.

A lock is abandoned (stale) when its heartbeat is older than `stale_after` seconds, when its owner is a
dead process of this kernel and pid namespace (a host name alone is not enough: containers share them),
or when it belongs to an earlier attempt of this Slurm job or array task (a requeued task takes its own
lock back at once). An empty or unreadable lock file is judged by its age alone.

No file system offers "delete this file if unchanged", so removing a lock is a rename checked afterwards:
breaking and releasing take `<lock>.break` (O_EXCL; abandoned after BREAK_STALE seconds or when its creator
is dead), look at the lock again, rename it aside, and delete it only if the file moved is the one judged;
any other file goes back. If it cannot go back (a new lock took the path meanwhile), its holder has lost
the lock. The file at the lock's path names the one holder: the heartbeat stops when it names another, and
`held()`/`check()` read it, so callers check before they commit work only the holder may commit.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

log = logging.getLogger(__name__)

BREAK_STALE = 60.0
"""Seconds after which a `<lock>.break` file is abandoned: breaking or releasing a lock takes milliseconds."""
RETRY_FIRST = 0.5
"""Seconds before a failed heartbeat is retried; doubled after each further failure, up to `heartbeat`."""


class LockHeld(Exception):
    """Raised by try-only acquisition when another live process holds the lock."""

    def __init__(self, owner: dict[str, Any]) -> None:
        super().__init__(describe_owner(owner))
        self.owner = owner


class LockLost(HarnessError):
    """Raised by `HeartbeatLock.check()` when this process no longer holds the lock it took."""


def describe_owner(owner: dict[str, Any]) -> str:
    """'pid N on HOST since T' (and the Slurm job when there is one) for a lock's owner record."""
    started = owner.get("time")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    text = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {when}"
    slurm = owner.get("slurm")
    if isinstance(slurm, dict) and slurm.get("job_id"):
        array = slurm.get("array_job_id"), slurm.get("array_task_id")
        text += f", Slurm job {'_'.join(map(str, array)) if all(array) else slurm['job_id']}"
    return text


def describe_lock(path: Path | str) -> str | None:
    """'pid N on HOST since T, heartbeat 12 s ago' for the lock file at path; None when there is none."""
    try:
        seen = _look(Path(path))
    except OSError:
        return None
    if seen is None:
        return None
    return f"{describe_owner(seen.owner)}, heartbeat {max(0.0, time.time() - seen.mtime):.0f} s ago"


def lock_abandoned(path: Path | str, stale_after: float = 300.0) -> bool | None:
    """Whether the lock file at path is abandoned by its holder (no heartbeat for stale_after s, or a dead owner
    on this host); None when there is no lock file. For a watcher that never takes the lock (a sweep summary)."""
    try:
        seen = _look(Path(path))
    except OSError:
        return None
    return None if seen is None else HeartbeatLock(path, stale_after=stale_after)._stale(seen)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@cache
def namespace_identity() -> dict[str, str | None]:
    """This kernel's boot id and this process's pid namespace: a pid names the same process only where both match."""
    try:
        boot_id: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        boot_id = None
    try:
        pid_ns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"boot_id": boot_id, "pid_ns": pid_ns}


def slurm_identity() -> dict[str, Any] | None:
    """The Slurm job (and array task) this process runs in, with its restart count; None outside Slurm."""
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return None
    try:
        restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    return {
        "job_id": env["SLURM_JOB_ID"],
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "restarts": restarts,
    }


def _pid_comparable(owner: dict[str, Any]) -> bool:
    """Whether the owner's pid can be looked up here: same host name, kernel boot and pid namespace."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    mine = namespace_identity()
    if sys.platform.startswith("linux") and None in mine.values():
        return False  # this container cannot be told from another of the same name
    return all(owner.get(key) == value for key, value in mine.items())


def _earlier_attempt(owner: dict[str, Any]) -> bool:
    """Whether the owner is an earlier attempt of this Slurm job or array task (requeued: that attempt ended).

    Steps and tasks of one attempt share the job id, so only a lower restart count marks the owner as gone.
    """
    mine, theirs = slurm_identity(), owner.get("slurm")
    if mine is None or not isinstance(theirs, dict) or not isinstance(theirs.get("restarts"), int):
        return False
    same_job = all(theirs.get(key) == mine[key] for key in ("job_id", "array_job_id", "array_task_id"))
    return same_job and theirs["restarts"] < mine["restarts"]


@dataclass(frozen=True)
class _Seen:
    """One look at a lock file: which file it is, its last heartbeat, and its owner ({} when empty or unreadable)."""

    dev: int
    ino: int
    mtime: float
    owner: dict[str, Any]

    def same(self, other: _Seen) -> bool:
        """Whether two looks saw the same lock: the same file and token (an empty one also not touched since)."""
        if (self.dev, self.ino, self.owner.get("token")) != (other.dev, other.ino, other.owner.get("token")):
            return False
        return self.owner.get("token") is not None or self.mtime == other.mtime


def _look(path: Path) -> _Seen | None:
    """The lock file at path now (None when there is none); transient errors are retried briefly, then raised."""
    for attempt in range(4):
        try:
            with open(path, "rb") as fh:  # identity and content from one open file, never from two
                st = os.fstat(fh.fileno())
                text = fh.read()
        except FileNotFoundError:
            return None
        except OSError:
            if attempt == 3:
                raise
            time.sleep(0.05 * 2**attempt)
            continue
        try:
            owner = json.loads(text) if text.strip() else {}
        except ValueError:
            owner = {}
        return _Seen(st.st_dev, st.st_ino, st.st_mtime, owner if isinstance(owner, dict) else {})
    raise AssertionError("unreachable")


class HeartbeatLock:
    """An exclusive lock file; use as a context manager (blocking) or with `acquire(wait=False)`."""

    def __init__(self, path: Path | str, heartbeat: float = 15.0, stale_after: float = 300.0) -> None:
        self.path = Path(path)
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mine: _Seen | None = None  # the lock file this object created, while it holds it
        self._lost: str | None = None  # why it no longer holds it (None while it does)
        self._beaten = 0.0  # monotonic time of the last heartbeat that reached the file

    @property
    def break_path(self) -> Path:
        """The file that serialises breaking and releasing this lock."""
        return self.path.with_name(self.path.name + ".break")

    def owner(self) -> dict[str, Any] | None:
        """Who holds the lock now (None when nobody does, {} when its file is empty or unreadable)."""
        try:
            seen = _look(self.path)
        except OSError:
            return {}
        return None if seen is None else seen.owner

    def _record(self) -> dict[str, Any]:
        """What a lock file of this process says: who, since when, and the token that makes it this lock."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": self.token}
        record.update(namespace_identity())
        slurm = slurm_identity()
        if slurm is not None:
            record["slurm"] = slurm
        return record

    def _stale(self, seen: _Seen, max_age: float | None = None) -> bool:
        """Whether the lock seen is abandoned: no heartbeat for max_age (stale_after) s, or its owner is gone."""
        if time.time() - seen.mtime > (self.stale_after if max_age is None else max_age):
            return True
        owner = seen.owner
        if _earlier_attempt(owner):
            return True
        return _pid_comparable(owner) and not _pid_alive(owner["pid"])

    def _create(self, path: Path) -> _Seen | None:
        """Create path (O_EXCL) holding this process's record; None when it exists. A failed write removes it."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return None
        record = self._record()
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record))
                fh.flush()
                os.fsync(fh.fileno())
                st = os.fstat(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)  # disk full, quota: an empty lock left behind would look held for minutes
            raise
        return _Seen(st.st_dev, st.st_ino, st.st_mtime, record)

    def _try_create(self) -> bool:
        """Create the lock file; True when this object now holds the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self._create(self.path)
        if mine is None:
            return False
        self._mine, self._lost, self._beaten = mine, None, time.monotonic()
        return True

    def _remove(self, path: Path, seen: _Seen) -> bool:
        """Delete the file seen at path: rename it aside and delete it if it is that file; any other goes back."""
        aside = path.with_name(f"{path.name}.gone-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = _look(aside)
        except OSError:
            moved = None  # cannot tell what was moved: put it back, the safe way round
        if moved is not None and moved.same(seen):
            aside.unlink(missing_ok=True)
            return True
        try:
            os.link(aside, path)
        except FileExistsError:
            self._displaced(path, moved)
        except OSError:  # no hard links on this file system: rename back unless a new file took the path
            if os.path.lexists(path):
                self._displaced(path, moved)
            else:
                os.replace(aside, path)
                return False
        aside.unlink(missing_ok=True)
        return False

    @staticmethod
    def _displaced(path: Path, moved: _Seen | None) -> None:
        """Say so when a lock moved aside by mistake cannot go back (its holder's check() fails from now on)."""
        who = describe_owner(moved.owner) if moved is not None and moved.owner else "an unreadable owner"
        log.warning(
            "%s: a lock taken meanwhile (%s) was moved aside and a newer lock took its place; "
            "its holder has lost it and its check() fails",
            path,
            who,
        )

    def _take_break(self) -> _Seen | None:
        """Create `<lock>.break`, removing an abandoned one first; None while another live process holds it."""
        for _ in range(3):
            mine = self._create(self.break_path)
            if mine is not None:
                return mine
            seen = _look(self.break_path)
            if seen is not None and not self._stale(seen, min(BREAK_STALE, self.stale_after)):
                return None
            if seen is not None:
                self._remove(self.break_path, seen)
        return None

    def _drop_break(self, mine: _Seen) -> None:
        """Remove this process's `<lock>.break` (checked, like any removal); a failure only delays the next breaker."""
        try:
            self._remove(self.break_path, mine)
        except OSError as exc:
            log.warning("could not remove %s (%s); it is abandoned after %.0f s", self.break_path, exc, BREAK_STALE)

    def _break(self, seen: _Seen) -> bool:
        """Remove the stale lock seen, holding `<lock>.break` and looking again first; False while another breaks it."""
        mine = self._take_break()
        if mine is None:
            return False
        try:
            now = _look(self.path)
            if now is not None and now.same(seen) and self._stale(now):
                self._remove(self.path, now)
        finally:
            self._drop_break(mine)
        return True

    def acquire(self, wait: bool = True, poll: float = 0.5, timeout: float | None = None) -> HeartbeatLock:
        """Take the lock; with wait=False raise LockHeld at once when a live owner has it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try_create():
                self._start_heartbeat()
                return self
            seen = _look(self.path)
            if seen is None:
                continue
            if self._stale(seen) and self._break(seen):
                continue
            if not wait:
                raise LockHeld(seen.owner)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"lock {self.path} is held by {describe_owner(seen.owner)}")
            time.sleep(poll)

    def _mark_lost(self, why: str) -> None:
        """Remember (and log once) why this object no longer holds the lock."""
        if self._lost is None:
            self._lost = why
            log.warning("lost the lock %s: %s", self.path, why)

    def _verify(self) -> bool:
        """True while the lock file carries this lock's token; else mark the lock lost (OSError: unreadable now)."""
        seen = _look(self.path)
        if seen is None:
            self._mark_lost("its file was removed")
            return False
        if seen.owner.get("token") != self.token:
            held_by = describe_owner(seen.owner) if seen.owner else "an unreadable owner"
            self._mark_lost(f"it is now held by {held_by}")
            return False
        return True

    def _start_heartbeat(self) -> None:
        """Start the daemon thread that keeps the lock's mtime fresh."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat-{self.path.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Refresh the lock's mtime every `heartbeat` s, retrying failures sooner; stop for good once it is lost."""
        delay, failures = self.heartbeat, 0
        while not self._stop.wait(delay):
            try:
                if not self._verify():
                    return
                os.utime(self.path)
            except FileNotFoundError:
                self._mark_lost("its file was removed")
                return
            except OSError as exc:  # ESTALE, EIO, a server failing over: the lock is still ours until seen otherwise
                failures += 1
                delay = min(self.heartbeat, RETRY_FIRST * 2 ** (failures - 1))
                if failures == 1:
                    log.warning("heartbeat of the lock %s failed (%s); retrying", self.path, exc)
                continue
            self._beaten = time.monotonic()
            delay, failures = self.heartbeat, 0

    def held(self) -> bool:
        """Whether this process still holds the lock: its file is there with this lock's token (read now)."""
        if self._mine is None or self._lost is not None:
            return False
        try:
            return self._verify()
        except OSError:  # unreadable now: still held while no other process may judge it stale
            return time.monotonic() - self._beaten < self.stale_after

    def check(self) -> None:
        """Raise LockLost (one line) unless this process still holds the lock; call it before committing results."""
        if self.held():
            return
        if self._mine is None and self._lost is None:
            raise LockLost(f"the lock {self.path} is not held by this process")
        why = self._lost or f"its heartbeat has not reached the file for over {self.stale_after:.0f} s"
        raise LockLost(f"lost the lock {self.path}: {why}; another process may be doing this work")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this lock's (never another process's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._mine is None:
            return
        self._mine = None
        mine = None
        try:
            deadline = time.monotonic() + 5.0
            while (mine := self._take_break()) is None and time.monotonic() < deadline:
                time.sleep(0.05)  # another process is breaking or releasing: milliseconds
        except OSError:
            mine = None  # cannot create it (disk full, say): the rename below still checks what it moves
        try:
            seen = _look(self.path)
            if seen is not None and seen.owner.get("token") == self.token:
                self._remove(self.path, seen)
        except OSError as exc:
            log.warning("could not release %s (%s); it is abandoned after %.0f s", self.path, exc, self.stale_after)
        finally:
            if mine is not None:
                self._drop_break(mine)

    def __enter__(self) -> HeartbeatLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
