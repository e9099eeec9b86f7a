"""Ctrl-C, SIGTERM (Slurm preemption, requeue) and SIGUSR1 (`sbatch --signal=USR1@SECONDS`, a warning before the time
limit): stop at the next optimizer step with a checkpoint, then say in one line how to resume, instead of a traceback
and lost steps. Under `accelerate launch` on Slurm every process gets the scheduler's signal twice (from Slurm and
from the launcher, which passes its own on): a repeated SIGTERM or SIGUSR1 while the stop is under way is the same
request and is ignored (the scheduler ends the process itself if it takes too long); only a second Ctrl-C stops at once.

Under Hydra's submitit launcher, Slurm also sends the job USR2 `signal_delay_s` before its time limit (submitit's
`SUBMITIT_PREEMPT_SIGNAL`), and submitit's handler pickles the call, requeues the job and exits at once, wherever
training is: the steps since the last checkpoint would be lost. While training runs, that signal stops it like
SIGTERM (a checkpoint at the next step), and submitit's handler runs afterwards (`Interrupted.then`, called by
harness.cli), so the requeued cell resumes from that step. Outside training submitit's handler runs at once, as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
FORCE = signal.SIGINT
"""While a stop is under way, only this signal (a second Ctrl-C at the terminal) interrupts at once."""


def handed_over_signals() -> list[signal.Signals]:
    """The signals whose Python handler (submitit's, say) runs after the checkpoint rather than instead of it: the
    preemption signal submitit uses (USR2 unless $SUBMITIT_PREEMPT_SIGNAL names another), when a handler is set."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, "SIG" + name, None)
    if sig is None or sig in (signal.SIGINT, signal.SIGTERM) or not callable(signal.getsignal(sig)):
        return []
    return [sig]


class Interrupted(BaseException):
    """The run was stopped by a signal; `step` is the checkpoint a rerun resumes from (None: before training);
    `then`, if set, is what the signal's own handler (submitit's requeue) still has to do once the run has stopped."""

    def __init__(self, signame: str, step: int | None = None, stage: str = "") -> None:
        super().__init__(signame)
        self.signame, self.step, self.stage = signame, step, stage
        self.then: Callable[[], Any] | None = None

    @property
    def exit_code(self) -> int:
        try:
            return 128 + signal.Signals[self.signame]
        except KeyError:
            return 128 + signal.SIGINT


class StopFlag:
    """Set by the first signal while training runs (the loop checkpoints and stops at the next step); outside
    training, or on a second signal, the signal interrupts at once. A handed-over signal (`then`: its previous
    handler) stops training the same way and keeps that handler for after the checkpoint; outside training that
    handler runs at once."""

    def __init__(self, then: dict[int, Callable[..., Any]] | None = None) -> None:
        self.signame: str | None = None
        self.training = False
        self.handlers = dict(then or {})
        self.then: Callable[[], Any] | None = None

    def handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum in self.handlers:
            if not self.training:
                self.handlers[signum](signum, frame)
                return
            self.then = self.then or functools.partial(self.handlers[signum], signum, None)
            self.signame = self.signame or name
            return
        if self.training and (self.signame is None or signum != FORCE):
            self.signame = self.signame or name  # a repeat (Slurm's and the launcher's SIGTERM) asks for the same stop
            return
        raise Interrupted(name)

    @property
    def requested(self) -> bool:
        return self.signame is not None


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Install the handlers for the duration of a run (main thread only; elsewhere signals keep their default)."""
    if threading.current_thread() is not threading.main_thread():
        yield StopFlag()
        return
    handed = handed_over_signals()
    previous = {s: signal.getsignal(s) for s in (*(s for s in SIGNALS if s not in handed), *handed)}
    flag = StopFlag({s: previous[s] for s in handed})
    for s in previous:
        signal.signal(s, flag.handle)
    try:
        yield flag
    except Interrupted as exc:
        if exc.then is None:
            exc.then = flag.then  # the run has its checkpoint: now the handed-over handler (requeue) may run
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
