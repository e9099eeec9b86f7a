"""Cluster launch support: checks of the Slurm resources a sweep asks for, and the distributed
environment of a cell that runs as several Slurm tasks (one process per GPU, through accelerate)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError

try:  # the Slurm launcher is an optional extra: pip install -e '.[slurm]'
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
except ImportError:  # without it, hydra/launcher=slurm fails as Hydra says (no such launcher)
    SlurmQueueConf = None

if SlurmQueueConf is not None:

    @dataclass
    class SlurmLauncherConf(SlurmQueueConf):
        """hydra-submitit-launcher's Slurm options plus `srun_args`, which its schema lacks and submitit takes
        (`slurm_srun_args`): arguments of the srun line that starts a cell's tasks (conf/hydra/launcher/slurm.yaml)."""

        srun_args: list[str] | None = None


SLURM_SCHEMA = "slurm_schema"
"""The name conf/hydra/launcher/slurm.yaml takes its schema by (register_launcher_schema)."""


def register_launcher_schema() -> None:
    """Give Hydra the Slurm launcher's schema with `srun_args` (safe to call more than once; nothing without the
    submitit launcher installed), so that slurm.yaml can set `srun_args: [--kill-on-bad-exit=1]`."""
    if SlurmQueueConf is None:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="hydra/launcher", name=SLURM_SCHEMA, node=SlurmLauncherConf, provider="harness")


SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
COUNTS = ("gpus_per_node", "gpus_per_task", "tasks_per_node", "cpus_per_task", "nodes", "mem_gb", "timeout_min")


def _count(options: Mapping[str, Any], key: str, prefix: str) -> int | None:
    """An optional whole-number option, or a one-line error naming it."""
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise HarnessError(f"{prefix}{key} must be a whole number, got {value!r}") from None
    if value < 0:
        raise HarnessError(f"{prefix}{key} must not be negative, got {value}")
    return value


def check_resources(
    gpus_per_node: int | None = None,
    gpus_per_task: int | None = None,
    tasks_per_node: int | None = 1,
    processes: int | None = None,
    prefix: str = "hydra.launcher.",
) -> None:
    """Refuse GPU requests that cannot fit: a per-task GPU count with no GPUs, or more GPU processes than GPUs.

    `tasks_per_node` counts Slurm tasks (one process each); `processes` counts accelerate processes started
    inside one task (the sbatch fallback's `--procs`). Zero or no GPUs means a CPU cell, where any count works.
    """
    gpus = gpus_per_node or 0
    tasks = tasks_per_node or 1
    if gpus_per_task and not gpus:
        raise HarnessError(
            f"{prefix}gpus_per_task={gpus_per_task} but {prefix}gpus_per_node={gpus_per_node}; "
            f"request GPUs with {prefix}gpus_per_node=N or drop gpus_per_task"
        )
    if gpus_per_task and tasks > 1:
        raise HarnessError(
            f"{prefix}gpus_per_task binds one GPU set to each of the {tasks} tasks, but accelerate picks the GPU by "
            f"LOCAL_RANK; leave {prefix}gpus_per_task=null and set {prefix}gpus_per_node={tasks}"
        )
    if gpus_per_task and gpus_per_task * tasks > gpus:
        raise HarnessError(
            f"{tasks} task(s) x {prefix}gpus_per_task={gpus_per_task} need more than {prefix}gpus_per_node={gpus}; "
            f"raise gpus_per_node or lower tasks_per_node"
        )
    if gpus and tasks > gpus:
        raise HarnessError(
            f"{prefix}tasks_per_node={tasks} starts more processes than {prefix}gpus_per_node={gpus} GPUs; "
            f"use one task per GPU (tasks_per_node <= gpus_per_node)"
        )
    if processes is not None:
        if processes < 1:
            raise HarnessError(f"the number of processes per cell must be at least 1, got {processes}")
        if gpus and processes * tasks > gpus:
            raise HarnessError(
                f"{processes} accelerate process(es) per task but only {gpus} GPU(s) per node requested; "
                f"lower --procs or raise --gpus"
            )


def check_launcher(launcher: Mapping[str, Any]) -> None:
    """Check a composed `hydra.launcher` node before anything is submitted; HarnessError (one line) if it cannot fit.

    Only Slurm launchers are checked; the local launchers take no resources.
    """
    if str(launcher.get("_target_", "")) != SLURM_LAUNCHER:
        return
    prefix = "hydra.launcher."
    counts = {key: _count(launcher, key, prefix) for key in COUNTS}
    for key in ("tasks_per_node", "nodes", "timeout_min"):
        if counts[key] is not None and counts[key] < 1:
            raise HarnessError(f"{prefix}{key} must be at least 1, got {counts[key]}")
    parallel = _count(launcher, "array_parallelism", prefix)
    if parallel is not None and parallel < 1:
        raise HarnessError(f"{prefix}array_parallelism must be at least 1, got {parallel}")
    if counts["cpus_per_task"] == 0:
        raise HarnessError(f"{prefix}cpus_per_task must be at least 1 (or null for the cluster's default)")
    if counts["mem_gb"] == 0:
        raise HarnessError(f"{prefix}mem_gb must be at least 1 (or null for the cluster's default)")
    check_resources(counts["gpus_per_node"], counts["gpus_per_task"], counts["tasks_per_node"], prefix=prefix)
    setup = launcher.get("setup")
    if setup is not None and (isinstance(setup, str) or not all(isinstance(line, str) for line in setup)):
        raise HarnessError(f"{prefix}setup must be a list of shell lines, e.g. {prefix}setup='[\"module load cuda\"]'")


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`gpu[01-04],cpu7` -> gpu01), through scontrol when it is there."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10, check=True
        )
        if done.stdout.split():
            return done.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    return (head.group(1) + (head.group(2) or "")) if head else "127.0.0.1"


# Step ids above this are Slurm's own steps (the batch script, the extern step, an interactive step), not srun's.
MAX_NORMAL_STEP_ID = 0xFFFFFFF0


def step_tasks(env: Mapping[str, str]) -> int:
    """The number of tasks of the Slurm job step this process is one of: srun sets SLURM_STEP_NUM_TASKS (and
    SLURM_STEP_ID) for every task it starts. The batch script's own step has neither (or a special step id),
    whatever --ntasks the job asked for, so a process started there without srun is one process alone: 1."""
    step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID") or ""
    if step and (not step.isdigit() or int(step) >= MAX_NORMAL_STEP_ID):
        return 1
    try:
        return max(1, int(env.get("SLURM_STEP_NUM_TASKS") or 1))
    except ValueError:
        return 1


def launch_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank in its launch, known before torch.distributed starts: RANK (accelerate, torchrun, or
    export_distributed_env), else SLURM_PROCID in a Slurm step of several tasks; 0 for a process alone."""
    env = os.environ if env is None else env
    value = env.get("RANK") or (env.get("SLURM_PROCID") if step_tasks(env) > 1 else None) or "0"
    return int(value) if value.isdigit() else 0


def export_distributed_env(env: MutableMapping[str, str] | None = None) -> bool:
    """Give a cell started as several tasks of one Slurm step (srun, as submitit runs it) the torch.distributed
    variables accelerate reads.

    Slurm sets SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID; accelerate (and torch's env:// init) read RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. The world is the step's tasks, not the job's (SLURM_NTASKS):
    a process started in a batch script of --ntasks=4 without srun runs alone and must not wait for three peers.
    Nothing changes for one task or when RANK is already set (for example by `accelerate launch`). Returns whether
    it exported anything.
    """
    env = os.environ if env is None else env
    ntasks = step_tasks(env)
    if ntasks <= 1 or "RANK" in env or "SLURM_PROCID" not in env:
        return False
    job = int(env.get("SLURM_JOB_ID", "0") or 0)
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or 1)
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or str(max(1, ntasks // max(1, nodes)))
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    env.update(
        RANK=env["SLURM_PROCID"],
        WORLD_SIZE=str(ntasks),
        LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
        LOCAL_WORLD_SIZE=per_node.split("(")[0].split(",")[0],
        NODE_RANK=env.get("SLURM_NODEID", "0"),
        MASTER_ADDR=env.get("MASTER_ADDR") or _first_host(nodelist),  # rank 0 runs on the step's first node
        MASTER_PORT=env.get("MASTER_PORT") or str(20000 + job % 20000),
    )
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.launch check GPUS_PER_NODE PROCESSES`: the sbatch fallback's resource check."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "check":
        print("usage: python -m harness.launch check GPUS_PER_NODE PROCESSES", file=sys.stderr)
        return 2
    try:
        gpus = _count({"--gpus": args[1]}, "--gpus", "")
        procs = _count({"--procs": args[2]}, "--procs", "")
        check_resources(gpus_per_node=gpus, processes=procs, prefix="--")
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
