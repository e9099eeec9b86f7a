"""Atomic writes and shared cached artefacts: a reader sees a whole file or folder, or none."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from harness.locking import HeartbeatLock

DONE_MARKER = ".complete"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_mode(path: Path, is_dir: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (mode 0600/0700) the mode the umask asks for, as open() would,
    so that teammates on a cluster can read records and the shared cache."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(fh)` into a temporary file beside `path`, fsync, then rename over it: readers see the old file or
    the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        share_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_dir(path: Path, build: Callable[[Path], None]) -> Path:
    """Make the cached folder `path` once: `build(tmp)` fills a temporary folder that is renamed into
    place. Concurrent callers (other processes, other Slurm array tasks) wait on a lock (harness.locking, safe
    on network file systems) and then read."""
    path = Path(path)
    if (path / DONE_MARKER).exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with HeartbeatLock(str(path) + ".lock"):
        if (path / DONE_MARKER).exists():
            return path
        if path.exists():  # left by a builder that died before finishing
            shutil.rmtree(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        share_mode(tmp, is_dir=True)
        try:
            build(tmp)
            (tmp / DONE_MARKER).write_text("ok\n")
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path
