"""Sweeps on a real one-node Slurm (slurm/cluster.sh): Hydra's submitit launcher as one job array, the plain
`sbatch --array` fallback, and a cell requeued mid-training that resumes from its checkpoint.

The cluster is the one CI started (HARNESS_SLURM=1, HARNESS_SLURM_DIR), or one these tests start and stop.
With CI=true (or HARNESS_SLURM=1) a cluster that cannot start fails the tests with the daemons' logs;
elsewhere the tests skip when Slurm is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MICRO, OFFLINE

from harness import REPO_ROOT

CLUSTER = REPO_ROOT / "slurm" / "cluster.sh"
CPU_CELL = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]
"""The Slurm preset shrunk to a CPU cell that fits the one-node test cluster."""

LIMIT_S = 170


def _must_have_slurm() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("HARNESS_SLURM") == "1"


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Environment for talking to a running one-node Slurm (SLURM_CONF set); starts one if none is up."""
    if shutil.which("sinfo") is None or shutil.which("slurmctld") is None:
        if _must_have_slurm():
            pytest.fail("Slurm is not installed: run `slurm/cluster.sh install` (apt: slurmctld slurmd munge)")
        pytest.skip("Slurm is not installed (slurm/cluster.sh install)")
    folder = os.environ.get("HARNESS_SLURM_DIR") or "/tmp/harness-slurm"
    up = subprocess.run(["bash", str(CLUSTER), "status", folder], capture_output=True, text=True, timeout=60)
    started = False
    if up.returncode != 0:
        done = subprocess.run(["bash", str(CLUSTER), "start", folder], capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            pytest.fail(f"the one-node Slurm did not start:\n{done.stdout}{done.stderr}")
        started = True
    env = {
        **os.environ,
        **OFFLINE,
        "SLURM_CONF": f"{folder}/etc/slurm.conf",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        "HARNESS_PYTHON": sys.executable,
    }
    yield env
    if started:
        subprocess.run(["bash", str(CLUSTER), "stop", folder], capture_output=True, timeout=120)


def squeue(env: dict, job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], env=env, capture_output=True, text=True).stdout


def the_summary(results: Path) -> dict:
    (path,) = results.rglob("_sweeps/*/summary.json")
    return json.loads(path.read_text())


def check_one_array(summary: dict, n: int) -> str:
    """Every cell ran as a task of the same Slurm job array, task i = cell i; returns the array's id."""
    slurm = [c["slurm"] for c in summary["cells"]]
    assert len(slurm) == n
    assert len({s["array_job_id"] for s in slurm}) == 1, slurm
    assert [int(s["array_task_id"]) for s in slurm] == list(range(n))
    return slurm[0]["array_job_id"]


def submit_fallback(env: dict, tmp_path: Path, *overrides: str) -> tuple[str, Path, Path]:
    """The cells of `overrides` (on the micro testbed) written by harness.sweep_lines and submitted with
    slurm/sbatch_array.sh: the array's job id, its sweep record and the results folder."""
    results, lines, record = tmp_path / "results", tmp_path / "cells.txt", tmp_path / "record"
    made = subprocess.run(
        [sys.executable, "-m", "harness.sweep_lines", *MICRO, *overrides, f"paths.results={results}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    lines.write_text(made.stdout)
    submit = [str(REPO_ROOT / "slurm/sbatch_array.sh"), "--record", str(record), str(lines), "--", "--mem=2G"]
    done = subprocess.run(["bash", *submit], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), record, results


def wait_until_gone(env: dict, job: str, deadline: float) -> None:
    """Until Slurm's queue no longer holds `job` (fails at `deadline`)."""
    while squeue(env, job).strip() and time.time() < deadline:
        time.sleep(2)
    assert not squeue(env, job).strip(), f"array {job} still queued at its deadline"


def logged_steps(run_dir: Path) -> list[int]:
    """The steps of a run's training log, in order."""
    return [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_hydra_slurm_launcher_runs_the_sweep_as_one_array(slurm_env, tmp_path):
    results = tmp_path / "results"
    sweep = ["train.epochs=1", "selector=random,balanced_random"]
    cmd = [sys.executable, "-m", "harness", "-m", *CPU_CELL, *MICRO, *sweep]
    done = subprocess.run(
        [*cmd, f"paths.results={results}"], cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=LIMIT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = the_summary(results)
    assert summary["launcher"] == "slurm" and summary["final"]
    assert summary["counts"] == {"complete": 2}, summary
    array = check_one_array(summary, 2)
    found = sorted(p.parent for p in results.rglob("results.csv"))
    assert found == sorted(Path(c["run_dir"]) for c in summary["cells"])
    (submitit,) = results.rglob(".submitit")  # under the sweep folder
    assert len(list(submitit.glob(".submission_file_*"))) == 1  # one sbatch call
    assert {f"{array}_0", f"{array}_1"} <= {p.name for p in submitit.iterdir()}  # its two array tasks
    assert "sweep summary: 2 cells: 2 complete" in done.stdout


def test_a_sweep_sbatch_refuses_is_one_line(slurm_env, tmp_path):
    """A partition the cluster does not have: sbatch refuses the array; one line saying so and what to fix, exit 2
    (it was submitit's traceback)."""
    cmd = [sys.executable, "-m", "harness", "-m", *CPU_CELL, *MICRO, "hydra.launcher.partition=nope", "seed=0,1"]
    done = subprocess.run(
        [*cmd, f"paths.results={tmp_path / 'results'}"], cwd=tmp_path, env=slurm_env, capture_output=True, text=True,
        timeout=LIMIT_S,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: sbatch refused the sweep: ") and "hydra.launcher" in errors[0], errors
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_sbatch_array_fallback_runs_every_line(slurm_env, tmp_path):
    job, record, results = submit_fallback(slurm_env, tmp_path, "train.epochs=1", "seed=5,6")
    wait_until_gone(slurm_env, job, time.time() + LIMIT_S)
    summary = json.loads((record / "summary.json").read_text())
    assert summary["counts"] == {"complete": 2}, summary
    assert check_one_array(summary, 2) == job
    found = sorted(p.parent for p in results.rglob("results.csv"))
    assert found == sorted(Path(c["run_dir"]) for c in summary["cells"]) and len(found) == 2
    assert [c["overrides"][-2:] for c in summary["cells"]] == [["seed=5", f"paths.results={results}"],
                                                               ["seed=6", f"paths.results={results}"]]  # fmt: skip


def test_requeued_cell_resumes_from_its_checkpoint(slurm_env, tmp_path):
    # Many small steps (450) with a checkpoint after each, so the requeue lands mid-training; two cells, so that
    # submitit submits an array (one cell would go as a single job).
    results = tmp_path / "results"
    long_recipe = ["train.epochs=150", "train.checkpoint_every=1", "seed=0,1"]
    cmd = [sys.executable, "-m", "harness", "-m", *CPU_CELL, *MICRO, *long_recipe, f"paths.results={results}"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + LIMIT_S
        status = None
        while time.time() < deadline and proc.poll() is None:
            # cell 0's own checkpoint (the other cell runs beside it and may checkpoint first)
            statuses = list(results.rglob("_sweeps/*/cells/0.json"))
            current = json.loads(statuses[0].read_text()) if statuses else {}
            run_dir = current.get("run_dir")
            if run_dir and list((Path(run_dir) / "checkpoints").glob("*")):
                status = current
                break
            time.sleep(0.2)
        assert status is not None, "the cell never reached a checkpoint"
        task = f"{status['slurm']['array_job_id']}_{status['slurm']['array_task_id']}"
        requeue = subprocess.run(["scontrol", "requeue", task], env=slurm_env, capture_output=True, text=True)
        assert requeue.returncode == 0, requeue.stderr
        out, _ = proc.communicate(timeout=max(10, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
            if status and status["slurm"].get("array_job_id"):
                subprocess.run(["scancel", status["slurm"]["array_job_id"]], env=slurm_env)
    assert proc.returncode == 0, out[-3000:]
    summary = the_summary(results)
    assert summary["counts"] == {"complete": 2}, summary
    check_one_array(summary, 2)
    record = Path(summary["cells"][0]["run_dir"])
    manifest = json.loads((record / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    logs = [*results.rglob(".submitit/*/*_log.*"), *record.glob("*.log")]
    log = "\n".join(p.read_text(errors="replace") for p in logs)
    assert manifest["training"]["resumed_from_step"] > 0 or "resumed from checkpoint" in log
    assert logged_steps(record) == list(range(1, manifest["training"]["steps"] + 1))  # one line per step, none twice
    assert summary["cells"][0]["slurm"]["restarts"] >= 1  # the same cell, run again by Slurm
    assert len(list(results.rglob("results.csv"))) == 2


def test_a_cell_with_two_slurm_tasks_trains_as_two_processes(slurm_env, tmp_path):
    # tasks_per_node=2: Slurm starts the cell twice; the callback maps SLURM_PROCID/NTASKS to RANK/WORLD_SIZE, so
    # accelerate joins them into one run (gloo on CPU): rank 1 trains but leaves evaluation and the record to rank 0.
    results = tmp_path / "results"
    two = ["hydra.launcher.tasks_per_node=2", "seed=3"]
    cmd = [sys.executable, "-m", "harness", "-m", *CPU_CELL, *two, *MICRO, "train.epochs=1", f"paths.results={results}"]
    env = {**slurm_env, "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert the_summary(results)["counts"] == {"complete": 1}
    assert len(list(results.rglob("results.csv"))) == 1
    logs: dict[str, str] = {}
    for path in sorted(results.rglob(".submitit/*/*_log.*")):  # <job>_<task>_log.out / .err
        rank = path.name.split("_")[-2]
        logs[rank] = logs.get(rank, "") + path.read_text(errors="replace")
    assert sorted(logs) == ["0", "1"]  # one process per Slurm task
    assert "stage 3/5: train" in logs["1"] and "stage 4/5" not in logs["1"]
    assert "stage 4/5" in logs["0"]


def test_sbatch_array_cell_warned_before_its_time_limit_is_requeued_and_resumes(slurm_env, tmp_path):
    # `sbatch --signal=B:USR1@N` warns the batch shell alone; `scancel --batch --signal=USR1` sends the same signal
    # now. The shell passes it to the cell, which stops at its checkpoint; the shell then requeues the array task,
    # and the next attempt resumes from that checkpoint.
    job, record, _ = submit_fallback(slurm_env, tmp_path, "train.epochs=150", "train.checkpoint_every=1", "seed=7")
    task = f"{job}_0"
    try:
        deadline = time.time() + LIMIT_S + 90  # Slurm holds a requeued task about a minute before it starts it
        run_dir = None
        while time.time() < deadline and run_dir is None:
            status = json.loads((record / "cells" / "0.json").read_text()) if (record / "cells/0.json").exists() else {}
            if status.get("run_dir") and list((Path(status["run_dir"]) / "checkpoints").glob("*")):
                run_dir = Path(status["run_dir"])
            time.sleep(0.2)
        assert run_dir is not None, "the cell never reached a checkpoint"
        warn = subprocess.run(
            ["scancel", "--batch", "--signal=USR1", task], env=slurm_env, capture_output=True, text=True
        )
        assert warn.returncode == 0, warn.stderr
        wait_until_gone(slurm_env, job, deadline)
    finally:
        subprocess.run(["scancel", job], env=slurm_env, capture_output=True)
    summary = json.loads((record / "summary.json").read_text())
    assert summary["counts"] == {"complete": 1}, summary
    assert summary["cells"][0]["slurm"]["restarts"] == 1, summary  # requeued once, by the batch shell
    logs = "\n".join(p.read_text(errors="replace") for p in (record / "logs").glob("*"))
    assert "stopped by SIGUSR1" in logs and f"cell 0 requeued as {task} (1 of at most 3)" in logs, logs[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["training"]["resumed_from_step"] > 0, manifest["training"]
    assert logged_steps(run_dir) == list(range(1, manifest["training"]["steps"] + 1))  # one line per step, none twice
