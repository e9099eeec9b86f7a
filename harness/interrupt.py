"""Ctrl-C and SIGTERM (Slurm preemption, requeue): stop at the next optimizer step with a checkpoint, then say
in one line how to resume, instead of a traceback and lost steps."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal; `step` is the checkpoint a rerun resumes from (None: before training)."""

    def __init__(self, signame: str, step: int | None = None, stage: str = "") -> None:
        super().__init__(signame)
        self.signame, self.step, self.stage = signame, step, stage

    @property
    def exit_code(self) -> int:
        return 128 + (signal.SIGTERM if self.signame == "SIGTERM" else signal.SIGINT)


class StopFlag:
    """Set by the first signal while training runs (the loop checkpoints and stops at the next step); outside
    training, or on a second signal, the signal interrupts at once."""

    def __init__(self) -> None:
        self.signame: str | None = None
        self.training = False

    def handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.training and self.signame is None:
            self.signame = name
            return
        raise Interrupted(name)

    @property
    def requested(self) -> bool:
        return self.signame is not None


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Install the handlers for the duration of a run (main thread only; elsewhere signals keep their default)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, flag.handle)
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
