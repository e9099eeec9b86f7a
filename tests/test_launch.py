"""The distributed environment of a cell under Slurm comes from the job step it runs in, not from the job."""

from __future__ import annotations

import os

from harness.launch import export_distributed_env

# A job of --ntasks=4 on two nodes, as every process in it sees the job.
JOB = {"SLURM_JOB_ID": "123", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4", "SLURM_JOB_NUM_NODES": "2",
       "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NODELIST": "gpu[06-08]", "SLURM_PROCID": "0",
       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


def test_a_process_in_the_batch_step_of_a_multi_task_job_runs_alone():
    """`python -m harness` in an sbatch script of --ntasks=4, without srun: no peers will start, so no world of 4
    (the process would wait for them up to the collective timeout)."""
    for batch in ({}, {"SLURM_STEP_ID": "batch"}, {"SLURM_STEP_ID": "4294967294", "SLURM_STEP_NUM_TASKS": "4"}):
        env = {**JOB, **batch}
        assert not export_distributed_env(env), batch
        assert "RANK" not in env and "WORLD_SIZE" not in env


def test_an_srun_step_is_the_world_even_when_smaller_than_the_job():
    one = {**JOB, "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_NODELIST": "gpu06"}
    assert not export_distributed_env(one) and "RANK" not in one  # srun -n1 inside a job of 4 tasks

    two = {**JOB, "SLURM_STEP_ID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "1",
           "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_STEP_NODELIST": "gpu08", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "1", "MASTER_ADDR": ""}  # fmt: skip
    assert export_distributed_env(two)
    assert (two["RANK"], two["WORLD_SIZE"], two["LOCAL_RANK"], two["LOCAL_WORLD_SIZE"]) == ("1", "2", "1", "2")
    assert two["MASTER_ADDR"] == "gpu08"  # rank 0 of the step is on the step's first node, not the job's


def test_each_process_takes_its_share_of_the_cpus(monkeypatch):
    """Threads per process: the node's CPUs over its processes; under --cpus-per-task, the task's CPUs over the
    processes of that task (one per srun task: all of them; P from `accelerate launch` inside one task: 1/P)."""
    import torch

    from harness import runtime

    monkeypatch.setattr(runtime, "available_cpus", lambda: 8)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this test process keeps its own
    for key in [k for k in os.environ if k.startswith("SLURM_") or k in ("LOCAL_WORLD_SIZE", "RANK")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.configure_threads(None) == 4  # two processes on one machine
    srun = {"SLURM_CPUS_PER_TASK": "8", "SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_STEP_TASKS_PER_NODE": "2"}  # fmt: skip
    for key, value in srun.items():
        monkeypatch.setenv(key, value)
    assert runtime.configure_threads(None) == 8  # srun --ntasks-per-node=2 --cpus-per-task=8: 8 CPUs each
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.configure_threads(None) == 2  # accelerate launch --num_processes 4 inside one task of 8 CPUs
    assert runtime.configure_threads(3) == 3
