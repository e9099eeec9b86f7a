"""Where a run executes: CPU threads, the accelerator (devices, processes, precision), and a description of
the machine for the record."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate import Accelerator

from harness.errors import HarnessError
from harness.launch import export_distributed_env, step_tasks

T = TypeVar("T")
PEER_GRACE_S = 3.0
"""How long a process whose peer failed waits before it exits too (the failing one says why and ends first)."""


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by Slurm's CPUs per task."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit():
        cpus = min(cpus, int(slurm))
    return max(1, cpus)


def processes_per_node() -> int:
    """Processes of this job on this machine (accelerate/torchrun set LOCAL_WORLD_SIZE)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, int(value)) if value.isdigit() else 1


def sharing_processes() -> int:
    """Processes that share the CPUs `available_cpus` counts: those of this node, or under --cpus-per-task those of
    this Slurm task (the node's processes over the step's tasks on it; one, when srun starts one task per process)."""
    if not os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return processes_per_node()
    tasks = 1
    if step_tasks(os.environ) > 1:
        per_node = (os.environ.get("SLURM_STEP_TASKS_PER_NODE") or "1").split("(")[0].split(",")[0]
        tasks = int(per_node) if per_node.isdigit() else 1
    return max(1, processes_per_node() // max(1, tasks))


def configure_threads(requested: int | None) -> int:
    """Set torch's CPU threads: the config's value, else the CPUs this process may use divided by the processes
    that share them (unset, torch takes every core of the machine and processes that share it slow each other
    down many times over)."""
    n = int(requested) if requested else max(1, available_cpus() // sharing_processes())
    torch.set_num_threads(n)
    return n


def is_main_process_env() -> bool:
    """Rank 0 of a launch, known before the accelerator exists (accelerate/torchrun set RANK)."""
    return os.environ.get("RANK", "0") == "0"


def make_accelerator(mixed_precision: str, timeout_minutes: float = 360) -> Accelerator:
    """The accelerator for the recipe; `auto` means bf16 on a GPU that supports it, else full precision.

    Evaluation runs on the main process while the others wait at a barrier, so the collective timeout is
    set to `timeout_minutes` (default 6 hours, enough for long lm-eval suites) instead of torch's 10 or 30."""
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    export_distributed_env()  # several Slurm tasks of one cell: torch.distributed's variables from Slurm's
    mp = mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    kwargs = InitProcessGroupKwargs(timeout=timedelta(minutes=timeout_minutes))
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mp)) != mp and AcceleratorState().num_processes == 1:
        # cells of one in-process sweep may use other precisions; accelerate keeps one global state
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mp, kwargs_handlers=[kwargs])


def describe(accelerator: Accelerator, threads: int) -> dict[str, Any]:
    """What the record says about where the run executed."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": name,
        "world_size": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
        "num_threads": threads,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }


class PeerFailed(HarnessError):
    """Another process of the run failed and has said why (its one line or traceback): this one exits with the same
    code, silently, instead of waiting for it at the next collective until the distributed timeout (hours)."""

    reported = True

    def __init__(self, rank: int, exit_code: int) -> None:
        super().__init__(f"process {rank} of the run failed")
        self.exit_code = exit_code


def failure_code(exc: BaseException) -> int:
    """The exit code a failure ends the process with (2 for bad input, 1 for a crash, 128+N for a signal)."""
    code = getattr(exc, "exit_code", None)
    return int(code) if isinstance(code, int) else 1


def together(accelerator: Any, work: Callable[[], T], main_only: bool = False) -> T | None:
    """Run `work` on every process (or, `main_only`, on the main one while the others wait) and agree on how it went.

    A failure on any process ends every process: the lowest failing rank raises its own error (the one line the user
    sees), every other raises PeerFailed with its exit code. `work` must hold no collective that a failing process
    would leave the others waiting in (or fail the same way on every process, at the same point). Returns `work`'s
    value (None on the processes that did not run it)."""
    runs = accelerator.is_main_process or not main_only
    if accelerator.num_processes == 1:
        return work() if runs else None
    import torch.distributed as dist

    result, failure = None, None
    if runs:
        try:
            result = work()
        except Exception as exc:
            failure = exc
        except BaseException as exc:  # a signal (Interrupted): in lockstep every process stops on its own, at a
            if not main_only:  # point of its own, so none may wait here; alone, the main one tells the waiting others
                raise
            failure = exc
    codes: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(codes, None if failure is None else failure_code(failure))
    failed = [rank for rank, code in enumerate(codes) if code is not None]
    if not failed:
        return result
    if failed[0] == accelerator.process_index:
        if isinstance(failure, HarnessError) and not failure.reported:
            # said now: once another process exits, the launcher (torchrun) may end this one before harness.cli would
            print(f"error: {failure}", file=sys.stderr, flush=True)
            failure.reported = True
        raise failure
    if not isinstance(failure, PeerFailed):  # (a nested call has waited already)
        time.sleep(PEER_GRACE_S)  # the failing process says why and ends first: the launcher names it as the root cause
    raise PeerFailed(failed[0], codes[failed[0]]) from failure
