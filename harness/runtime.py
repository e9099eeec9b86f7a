"""Where a run executes: CPU threads, the accelerator (devices, processes, precision), and a description of
the machine for the record."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
from accelerate import Accelerator

from harness.launch import export_distributed_env


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


def configure_threads(requested: int | None) -> int:
    """Set torch's CPU threads: the config's value, else the CPUs this process may use divided by the processes
    on this node (unset, torch takes every core of the machine and processes that share it slow each other down
    many times over)."""
    n = int(requested) if requested else max(1, available_cpus() // processes_per_node())
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
