"""Sweeps: the cells a multirun launches, checks before anything runs or is submitted, and a summary of
the cells (complete, skipped as already complete, running elsewhere, failed and why) for local and Slurm
sweeps alike.

Each cell writes a small status file from the process that runs it (Hydra's on_job_start/on_job_end run
there, on a cluster node for Slurm sweeps); the summary gathers them, so it is right whichever process
writes it last. Layout, under `hydra.sweep.dir`:

    _sweeps/<sweep id>/plan.json          the cells, in launch order (cell i = Hydra job i = array task i)
    _sweeps/<sweep id>/cells/<i>.json     one status per cell
    _sweeps/<sweep id>/summary.json|txt   the gathered summary

A cell skipped because another process holds its run folder's lock (another sweep, or the earlier attempt of
a requeued Slurm task whose lock is not yet stale) is 'running elsewhere', never 'already complete': that
needs its results.csv. The summary is written under the harness's own lock (harness.locking, not flock,
which some cluster file systems lack), so the summary gathered last is the one written last.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from harness.config import register_resolvers
from harness.errors import HarnessError, first_line
from harness.launch import check_launcher, export_distributed_env
from harness.locking import HeartbeatLock, describe_lock, lock_abandoned
from harness.storage import atomic_write_json, atomic_write_text

register_resolvers()  # a Slurm job unpickles this callback before Hydra resolves the cell's run folder

RECORDS = "_sweeps"
RESULTS = "results.csv"
ENV_RECORD = "HARNESS_SWEEP_RECORD"  # the sbatch fallback: where its cells write their status
ENV_CELL = "HARNESS_SWEEP_CELL"  # ... and which cell this process runs (default: SLURM_ARRAY_TASK_ID)
ENV_LOG = "HARNESS_SWEEP_LOG"  # ... and the job's log, read for the reason when a cell dies
STATES = ("complete", "skipped", "running elsewhere", "failed", "running", "pending", "not run")
GONE_AFTER = 300.0
"""Seconds after which a running cell whose run holds no lock (a cell takes it seconds after it starts), or whose
lock has had no heartbeat, has ended without reporting: killed at a time limit, preempted, or killed alone."""
SUMMARY_LOCK = ".summary-writer.lock"  # a HeartbeatLock; `.summary.lock` was flock's and may linger in old records
STOPPED_LINE = re.compile(r"^(interrupted|stopped by SIG\w+)( before training had a checkpoint)?; run the same command")
ERROR_LINE = re.compile(r"^(error: .+|([A-Za-z_][\w.]*)?(Error|Exception|Interrupt|Exit)\b.*)$")
_OPEN: list[SweepSummary] = []
"""Multiruns of this process that started and whose end Hydra has not reported (a cell raised or exited)."""


# ---------------------------------------------------------------- the cells of a sweep


def expand_cells(arguments: Sequence[str], params: Mapping[str, Any] | None = None) -> list[list[str]]:
    """The cells of a sweep in launch order, as Hydra's basic sweeper expands them.

    `params` is `hydra.sweeper.params` (what a `+sweep=...` preset sets); the command line comes after it
    and wins for a key given in both.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    hydra = GlobalHydra.instance()  # its config loader lists a group's options, for `selector='glob(*random)'`
    loader = hydra.config_loader() if hydra.is_initialized() else None
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(lines)
    return [list(cell) for cell in BasicSweeper.split_arguments(overrides, None)[0]]


def planned_cells(config: DictConfig) -> list[list[str]]:
    """The cells the running multirun will launch (from its composed config)."""
    params = config.hydra.sweeper.get("params") or {}
    return expand_cells(list(config.hydra.overrides.task), {str(k): str(v) for k, v in params.items()})


def varying(cells: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each cell's overrides without those every cell shares (what tells the cells apart)."""
    if len(cells) < 2:
        return [list(cell) for cell in cells]
    everywhere = set.intersection(*(set(cell) for cell in cells))
    return [[o for o in cell if o not in everywhere] for cell in cells]


def check_cells(config: DictConfig, cells: Sequence[Sequence[str]]) -> None:
    """Compose and type-check cells before any runs; HarnessError naming the first bad cell and its fix.

    Every swept value is checked in at least one cell (the first cell that brings a value not seen yet), so a
    sweep of 3 x 5 x 3 values composes about ten configs, not 45.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.cli import explain
    from harness.config import validate

    loader = GlobalHydra.instance().config_loader()
    seen: set[str] = set()
    shown = varying(cells)
    for i, cell in enumerate(cells):
        if seen.issuperset(cell):
            continue
        seen.update(cell)
        where = f"sweep cell {i} ({' '.join(shown[i]) or 'no swept values'})"
        try:
            cfg = loader.load_sweep_config(config, list(cell))
        except (HydraException, OmegaConfBaseException) as exc:
            raise HarnessError(f"{where}: {explain(exc)}") from None
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            validate(cfg)
        except HarnessError as exc:
            raise HarnessError(f"{where}: {exc}") from None


def check_multirun(config: DictConfig, cells: bool = True) -> list[list[str]]:
    """Everything checked before a multirun launches or submits anything: the launcher's resources, then
    (with cells=True) every cell's composed config. Returns the cells; raises HarnessError (one line)."""
    from hydra.errors import HydraException

    check_launcher(config.hydra.launcher)
    try:
        planned = planned_cells(config)
    except HydraException as exc:
        raise HarnessError(f"cannot expand the sweep: {first_line(exc)}") from None
    if cells:
        check_cells(config, planned)
    return planned


# ---------------------------------------------------------------- status files and the summary


def _is_writer() -> bool:
    """Only the first process of a cell (rank 0 of accelerate or of a multi-task Slurm job) writes its status."""
    return all(os.environ.get(key, "0") in ("", "0") for key in ("RANK", "SLURM_PROCID"))


def _slurm_ids() -> dict[str, Any]:
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    ids = {
        "job_id": env["SLURM_JOB_ID"],
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "restarts": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
    }
    return {k: v for k, v in ids.items() if v is not None}


def _submitit_log() -> str | None:
    """The stderr file of the submitit job this process runs in, if any."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return None
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # noqa: BLE001 - not inside a submitit job after all
        return None


def error_from_log(path: str | os.PathLike[str] | None) -> str | None:
    """The last error line of a job log ('error: ...' from the harness, or an exception's last line)."""
    if not path or not Path(path).is_file():
        return None
    lines = Path(path).read_text(errors="replace").splitlines()[-400:]
    for line in reversed(lines):
        line = line.strip()
        if ERROR_LINE.match(line):
            return line.removeprefix("error: ")
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_status(record: Path, cell: int, status: dict[str, Any]) -> None:
    """One cell's status file (atomic: a reader sees the old or the new one)."""
    atomic_write_json(Path(record) / "cells" / f"{cell}.json", {"cell": cell, **status})


def _gone(status: dict[str, Any], run_dir: Path) -> str | None:
    """Why a cell marked running has no live process any more (None while it may still run): its run's lock
    is abandoned, or it never took one and started long ago. A requeued task marks it running again."""
    from harness.record import LOCK

    abandoned = lock_abandoned(run_dir / LOCK, stale_after=GONE_AFTER)
    if abandoned:
        held = describe_lock(run_dir / LOCK)
        return f"its process ended without an end status (time limit, preemption or a kill; lock {held})"
    if abandoned is None:
        try:
            started = time.mktime(time.strptime(str(status.get("started")), "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return None
        if time.time() - started > GONE_AFTER:
            return "its process ended without an end status or a lock on its run (time limit, preemption or a kill)"
    return None


def gather(record: Path, final: bool = False) -> dict[str, Any]:
    """The sweep's summary from its plan and the cells' status files.

    With final=True (every job has returned) a cell that never reported is 'not run', and one still marked
    running ended without an end status, so it failed. Before that, a cell marked running whose process is
    gone (see _gone) failed too, or is complete if its record is.
    """
    record = Path(record)
    plan = _read_json(record / "plan.json") or {"cells": []}
    statuses = {}
    for path in (record / "cells").glob("*.json"):
        status = _read_json(path)
        if status is not None:
            statuses[int(status["cell"])] = status
    cells = []
    for i, overrides in enumerate(plan["cells"]):
        status = dict(statuses.get(i) or {"state": "pending"})
        status.update(cell=i, overrides=status.get("overrides") or overrides)
        state = status["state"]
        run_dir = status.get("run_dir")
        if state == "running" and run_dir and (Path(run_dir) / RESULTS).exists() and final:
            status.update(state="complete", reason="record complete; the job ended without reporting")
        elif state == "running elsewhere" and run_dir and (Path(run_dir) / RESULTS).exists():
            status.update(state="complete", reason="completed by the process that held its lock")
        elif state == "running" and final:
            reason = error_from_log(status.get("log")) or "ended without a record or an end status"
            status.update(state="failed", reason=reason)
        elif state == "running" and run_dir and (gone := _gone(status, Path(run_dir))):
            if (Path(run_dir) / RESULTS).exists():
                status.update(state="complete", reason="record complete; the job ended without reporting")
            else:
                status.update(state="failed", reason=error_from_log(status.get("log")) or gone)
        elif state == "pending" and final:
            status.update(state="not run", reason=plan.get("stopped") or "never started")
        cells.append(status)
    counts = {state: sum(c["state"] == state for c in cells) for state in STATES}
    return {
        "sweep_id": plan.get("sweep_id"),
        "launcher": plan.get("launcher"),
        "started": plan.get("started"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "final": final,
        "n_cells": len(cells),
        "counts": {k: v for k, v in counts.items() if v},
        "cells": cells,
    }


def headline(summary: dict[str, Any]) -> str:
    """'12 cells: 9 complete, 2 skipped (already complete), 1 running elsewhere'."""
    names = {"skipped": "skipped (already complete)"}
    parts = [f"{n} {names.get(state, state)}" for state, n in summary["counts"].items()]
    return f"{summary['n_cells']} cells: " + (", ".join(parts) or "none")


def render(summary: dict[str, Any]) -> str:
    """The summary as a small text table, one line per cell."""
    rows = [("cell", "state", "overrides (those that vary)", "run folder / reason")]
    shown = varying([c["overrides"] for c in summary["cells"]])
    for c, overrides in zip(summary["cells"], shown):
        detail = c.get("reason") or ""
        if c["state"] in ("complete", "skipped", "running elsewhere", "running") and c.get("run_dir"):
            detail = c["run_dir"] + (f" ({detail})" if detail else "")
        if c.get("slurm", {}).get("restarts"):
            detail += f" [requeued {c['slurm']['restarts']}x]"
        rows.append((str(c["cell"]), c["state"], " ".join(overrides), detail))
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    lines = [f"sweep {summary['sweep_id']} ({summary['launcher']}): {headline(summary)}"]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in range(3)) + "  " + r[3] for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def refresh(record: Path, final: bool = False) -> dict[str, Any]:
    """Gather and write summary.json and summary.txt under the record's lock, so an older summary is never
    written after a newer one (the lock is a HeartbeatLock: safe on network file systems, unlike flock)."""
    record = Path(record)
    record.mkdir(parents=True, exist_ok=True)
    lock = HeartbeatLock(record / SUMMARY_LOCK, heartbeat=5.0, stale_after=60.0)
    lock.acquire(poll=0.1, timeout=120)
    try:
        summary = gather(record, final=final)
        if lock.held():  # a writer that lost the lock (stalled past stale_after) has an older view: leave it
            atomic_write_json(record / "summary.json", summary)
            atomic_write_text(record / "summary.txt", render(summary))
    finally:
        lock.release()
    return summary


def write_plan(
    record: Path, cells: Sequence[Sequence[str]], launcher: str, sweep_id: str, lines_file: str | None = None
) -> None:
    """The sweep's cells in launch order, written once before any cell starts (`lines_file`: the file of override
    lines they were read from, for the sbatch fallback)."""
    Path(record).mkdir(parents=True, exist_ok=True)
    plan = {
        "sweep_id": sweep_id,
        "launcher": launcher,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cells": [list(cell) for cell in cells],
    }
    if lines_file is not None:
        plan["lines_file"] = lines_file
    atomic_write_json(Path(record) / "plan.json", plan)


def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]


def _exit_reason(exit_code: int) -> str:
    """'exited with code 3', or for a process killed by a signal (shell code 128 + N) which signal, and for SIGKILL
    its usual sender."""
    try:
        name = signal.Signals(exit_code - 128).name if exit_code > 128 else None
    except ValueError:
        name = None
    if name is None:
        return f"exited with code {exit_code}"
    why = " (the out-of-memory killer, or kill -9)" if name == "SIGKILL" else ""
    return f"killed by {name}{why}, exit code {exit_code}"


def end_cell(record: Path, cell: int, exit_code: int, log: str | None = None) -> dict[str, Any]:
    """After a cell's process exits (sbatch fallback): a cell that never reported its end failed; say why."""
    record = Path(record)
    status = _read_json(record / "cells" / f"{cell}.json")
    if status is None or status.get("state") == "running":
        status = dict(status or {})
        run_dir = status.get("run_dir")
        if exit_code == 0 and run_dir and (Path(run_dir) / RESULTS).exists():
            status.update(state="complete")
        else:
            reason = error_from_log(log or status.get("log")) or _exit_reason(exit_code)
            status.update(state="failed", reason=reason, exit_code=exit_code)
        status.pop("cell", None)
        write_status(record, cell, {**status, "ended": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return refresh(record)


def requeue_cell(record: Path, cell: int, most: int, env: Mapping[str, str] | None = None) -> str:
    """After a fallback cell has stopped at its checkpoint on SIGUSR1 (`--signal=B:USR1@N`, the time-limit
    warning): requeue its array task with `scontrol requeue`, at most `most` times (Slurm's SLURM_RESTART_COUNT),
    and mark it pending, as submitit does for the Hydra launcher's cells. Returns what was done, in one line."""
    env = os.environ if env is None else env
    record = Path(record)
    status = _read_json(record / "cells" / f"{cell}.json") or {}
    if status.get("state") != "failed" or not str(status.get("reason", "")).startswith("stopped by SIGUSR1"):
        return f"cell {cell} not requeued: it did not stop on SIGUSR1 ({status.get('state', 'no status')})"
    restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    if most <= 0:
        return f"cell {cell} not requeued (--max-requeues 0): resubmit the array to resume it from its checkpoint"
    if restarts >= most:
        return f"cell {cell} not requeued: it was requeued {restarts} times already (--max-requeues {most})"
    task = f"{env.get('SLURM_ARRAY_JOB_ID')}_{env.get('SLURM_ARRAY_TASK_ID')}"
    stopped, attempt = status["reason"], f"{restarts + 1} of at most {most}"
    # pending before the requeue: scontrol signals this job, and the next attempt marks the cell running
    write_status(record, cell, {**status, "state": "pending", "reason": f"requeued ({attempt}) after: {stopped}"})
    try:
        done = subprocess.run(["scontrol", "requeue", task], capture_output=True, text=True)
        why = "" if done.returncode == 0 else first_line(done.stderr.strip() or f"exit code {done.returncode}")
    except OSError as exc:  # no scontrol on this node
        why = str(exc)
    if why:
        write_status(record, cell, {**status, "reason": f"{stopped} (scontrol requeue {task} failed: {why})"})
        refresh(record)
        return f"cell {cell} not requeued: scontrol requeue {task} failed: {why}"
    refresh(record)
    return f"cell {cell} requeued as {task} ({attempt}); it resumes from its checkpoint"


# ---------------------------------------------------------------- the Hydra callback


class _ErrorTail:
    """Passes everything through to a stream and keeps the last `error: ...` line, or the line a stopped cell ends
    with (`interrupted; ...` / `stopped by SIGTERM; ...`, harness.cli): why a cell that exits did not finish."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last: str | None = None
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.startswith("error: "):
                self.last = line.removeprefix("error: ").strip()
            elif STOPPED_LINE.match(line):
                self.last = line.strip()
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _elsewhere(run_dir: Path, reason: str) -> str:
    """Why a skipped cell without results is not done here: the pipeline's reason and who holds its lock."""
    from harness.record import LOCK

    held = describe_lock(run_dir / LOCK)
    reason = reason if reason and reason != "complete" else "skipped without a complete record"
    return f"{reason} ({held})" if held else f"{reason} (its lock is released now)"


class SweepSummary(Callback):
    """Checks a multirun before it launches anything and keeps the sweep's summary of its cells.

    Registered in conf/config.yaml under hydra.callbacks. In a single run it does nothing, unless the
    sbatch fallback names a sweep record in $HARNESS_SWEEP_RECORD.
    """

    def __init__(self, check: bool = True) -> None:
        self.check = check
        self.record: str | None = None
        self.launcher = "basic"
        self._cell: dict[str, Any] | None = None
        self._done = False
        self._exit_hooked = False
        self._clock = 0.0

    # --- the process that runs `python -m harness -m ...`

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.launcher
        try:
            cells = check_multirun(config, cells=self.check)
        except HarnessError as exc:  # Hydra turns a callback's Exception into a warning and goes on: stop here
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        target = str(launcher.get("_target_", ""))
        self.launcher = target.rsplit(".", 1)[-1].removesuffix("Launcher").lower() or "basic"
        sweep_id = new_sweep_id()
        record = Path(str(config.hydra.sweep.dir)).absolute() / RECORDS / sweep_id
        write_plan(record, cells, self.launcher, sweep_id)
        self.record = str(record)
        _OPEN.append(self)
        atexit.register(self._launcher_exit)  # for a caller other than harness.cli.main (see end_open_sweeps)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.record is None:
            return
        self._close()
        summary = refresh(Path(self.record), final=True)
        print(f"sweep summary: {headline(summary)} -> {Path(self.record) / 'summary.txt'}")

    def _launcher_exit(self) -> None:
        """The multirun stopped early (a cell raised or exited): the summary still says what happened."""
        if self._done or self.record is None:
            return
        self._close()
        record = Path(self.record)
        if self.launcher in ("basic", "local"):  # cells ran in this process: the rest never will
            plan = _read_json(record / "plan.json") or {}
            plan["stopped"] = "the sweep stopped before this cell"
            atomic_write_json(record / "plan.json", plan)
            summary = refresh(record, final=True)
        else:  # Slurm cells go on without this process and update the summary as they end
            summary = refresh(record)
        print(f"sweep summary: {headline(summary)} -> {record / 'summary.txt'}", file=sys.stderr)

    def _close(self) -> None:
        """This multirun has ended: its summary is written once, and never again at the interpreter's exit."""
        self._done = True
        if self in _OPEN:
            _OPEN.remove(self)
        atexit.unregister(self._launcher_exit)

    # --- the process that runs one cell (the same process for local sweeps, a Slurm task otherwise)

    def _record_for(self, config: DictConfig) -> tuple[Path, int] | None:
        if self.record is not None:
            return Path(self.record), int(config.hydra.job.num)
        record = os.environ.get(ENV_RECORD)
        cell = os.environ.get(ENV_CELL) or os.environ.get("SLURM_ARRAY_TASK_ID")
        if record and cell is not None:
            return Path(record), int(cell)
        return None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        export_distributed_env()
        where = self._record_for(config)
        if where is None or not _is_writer():
            return
        record, cell = where
        run_dir = Path(str(config.hydra.runtime.output_dir))
        status = {
            "state": "running",
            "overrides": list(config.hydra.overrides.task),
            "run_dir": str(run_dir),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "slurm": _slurm_ids(),
            "log": os.environ.get(ENV_LOG) or _submitit_log(),
        }
        was_complete = (run_dir / RESULTS).exists() and not bool(OmegaConf.select(config, "rerun", default=False))
        write_status(record, cell, status)
        tail = _ErrorTail(sys.stderr)
        sys.stderr = tail
        self._cell = {"record": record, "cell": cell, "status": status, "was_complete": was_complete, "tail": tail}
        self._clock = time.time()
        if not self._exit_hooked:
            atexit.register(self._job_exit)
            self._exit_hooked = True

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if self._cell is None:
            return
        cell, self._cell = self._cell, None
        self._untail(cell)
        status = dict(cell["status"])
        outcome = getattr(job_return, "_return_value", None)
        if getattr(outcome, "run_dir", None) is not None:  # the task function returned the pipeline's RunOutcome
            status["run_dir"] = str(Path(outcome.run_dir).absolute())
        run_dir = Path(status["run_dir"])
        skipped, why = getattr(outcome, "skipped", None) is True, str(getattr(outcome, "reason", "") or "")
        if job_return.status == JobStatus.FAILED:
            status.update(state="failed", reason=first_line(outcome) if outcome is not None else "failed")
        elif skipped and not (why == "complete" and (run_dir / RESULTS).exists()):  # gather() sees it finish
            status.update(state="running elsewhere", reason=_elsewhere(run_dir, why))
        elif skipped or (cell["was_complete"] and (run_dir / RESULTS).exists()):
            status.update(state="skipped", reason="already complete")
        elif (run_dir / RESULTS).exists():
            status.update(state="complete")
        else:
            status.update(state="failed", reason="the cell returned without a complete record")
        status.update(ended=time.strftime("%Y-%m-%dT%H:%M:%S"), seconds=round(time.time() - self._clock, 1))
        write_status(cell["record"], cell["cell"], status)
        refresh(cell["record"])

    def _job_exit(self) -> None:
        """The process exits inside a cell (sys.exit from an error, Ctrl-C): record the cell as failed."""
        if self._cell is None:
            return
        cell, self._cell = self._cell, None
        self._untail(cell)
        sys.stderr.flush()
        status = dict(cell["status"])
        reason = cell["tail"].last or error_from_log(status.get("log")) or "the process exited before the cell finished"
        status.update(state="failed", reason=reason, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_status(cell["record"], cell["cell"], status)
        refresh(cell["record"])

    @staticmethod
    def _untail(cell: dict[str, Any]) -> None:
        if sys.stderr is cell["tail"]:
            sys.stderr = cell["tail"].stream

    def __getstate__(self) -> dict[str, Any]:  # pickled into Slurm jobs: no per-process state travels
        state = dict(self.__dict__)
        state.update(_cell=None, _exit_hooked=False, _done=False)
        return state


def end_open_sweeps() -> None:
    """Write the summary of every multirun that stopped early, when `python -m harness` returns (harness.cli.main).

    Left to atexit, a multirun run in-process (tests, notebooks) printed its 'sweep summary' line when the
    interpreter exited, long after the multirun and outside it; atexit stays only as the fallback for an exit that
    skips main's return."""
    for summary in list(_OPEN):
        summary._launcher_exit()


# ---------------------------------------------------------------- `python -m harness.sweep ...`


def cell_lines(text: str) -> list[str]:
    """The cell lines of a file of override lines: blank lines and comments (first non-space character `#`,
    indented or not) are skipped. Counting and reading cells both go through here, so they always agree."""
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_line(lines_file: Path, cell: int) -> list[str]:
    """The overrides on cell line `cell` (0-based) of a file of override lines (see cell_lines)."""
    lines = cell_lines(Path(lines_file).read_text())
    if not 0 <= cell < len(lines):
        raise HarnessError(f"{lines_file} has {len(lines)} cell line(s); there is no cell {cell}")
    return shlex.split(lines[cell])


def cell_argv(lines_file: Path, cell: int) -> list[str]:
    """The overrides of one cell of an sbatch array. Inside the array (its record in $HARNESS_SWEEP_RECORD) they
    come from the record's plan, the lines as they were checked and submitted: a lines file rewritten while the
    array waits or is requeued (the next sweep's `sweep_lines ... > cells.txt`) must not give task i another cell."""
    record = os.environ.get(ENV_RECORD)
    plan = _read_json(Path(record) / "plan.json") if record else None
    if not plan or plan.get("lines_file") != str(Path(lines_file).resolve()):
        return read_line(lines_file, cell)
    cells = plan.get("cells") or []
    if not 0 <= cell < len(cells):
        raise HarnessError(f"the sweep in {record} has {len(cells)} cell(s); there is no cell {cell}")
    try:
        now = read_line(lines_file, cell)
    except (OSError, ValueError, HarnessError):
        now = None
    if now != cells[cell]:
        print(f"note: {lines_file} changed since submission; cell {cell} runs its submitted line", file=sys.stderr)
    return list(cells[cell])


def submitted_plan(lines_file: Path, record: Path) -> list[list[str]]:
    """The cells of a file of override lines for a new sbatch array in `record`; a record that already holds a
    sweep with other cells is refused (its queued or requeued tasks read their cells from it)."""
    cells = [read_line(lines_file, i) for i in range(count_lines(lines_file))]
    old = _read_json(Path(record) / "plan.json")
    if old is not None and old.get("cells") != cells:
        raise HarnessError(
            f"{record} already holds a sweep of other cells ({len(old.get('cells') or [])}); "
            "pass a new --record folder (or remove that one if none of its cells is queued)"
        )
    return cells


def count_lines(lines_file: Path) -> int:
    text = Path(lines_file).read_text() if Path(lines_file).is_file() else None
    if text is None:
        raise HarnessError(f"no file of override lines at {lines_file}; write one or use python -m harness.sweep_lines")
    return len(cell_lines(text))


USAGE = """usage: python -m harness.sweep COMMAND ...
  summary RECORD                       gather the cells' status files into RECORD/summary.txt and print it
  plan LINES_FILE RECORD [LAUNCHER]    write RECORD/plan.json from a file of override lines (sbatch fallback)
  count LINES_FILE                     the number of cells in a file of override lines
  argv LINES_FILE CELL                 the overrides of one cell, NUL-separated (for shell scripts)
  end-cell RECORD CELL EXIT_CODE [LOG] mark a cell that exited without reporting as failed, with the reason
  requeue-cell RECORD CELL MOST        requeue a cell stopped on SIGUSR1 (scontrol requeue), at most MOST times"""


def main(argv: Sequence[str] | None = None) -> int:
    """Small commands the sbatch fallback and users call: summary, plan, count, argv, end-cell, requeue-cell."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["summary"] and len(args) == 2:
            print(render(refresh(Path(args[1]))), end="")
        elif args[:1] == ["plan"] and len(args) in (3, 4):
            record = Path(args[2])
            cells = submitted_plan(Path(args[1]), record)
            lines_file = str(Path(args[1]).resolve())
            write_plan(record, cells, args[3] if len(args) == 4 else "sbatch", record.name, lines_file)
            refresh(record)
        elif args[:1] == ["count"] and len(args) == 2:
            print(count_lines(Path(args[1])))
        elif args[:1] == ["argv"] and len(args) == 3:
            sys.stdout.write("\0".join(cell_argv(Path(args[1]), int(args[2]))))
        elif args[:1] == ["end-cell"] and len(args) in (4, 5):
            end_cell(Path(args[1]), int(args[2]), int(args[3]), args[4] if len(args) == 5 else None)
        elif args[:1] == ["requeue-cell"] and len(args) == 4:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue's SIGTERM to this job: finish the record
            print(requeue_cell(Path(args[1]), int(args[2]), int(args[3])), flush=True)
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
