"""Several processes of one cell (srun tasks, gloo on CPU): bad input ends every process with one line, not a hang
or a traceback per process; and each process takes its own share of the CPUs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import MICRO, OFFLINE, message_lines

from harness import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_two(tmp_path, name: str, args: list[str]) -> list[tuple[int, str]]:
    """Start `python -m harness ARGS` as the two tasks of one Slurm step would (the harness maps SLURM_PROCID and
    SLURM_STEP_NUM_TASKS to torch.distributed's variables; nothing kills one process when the other ends, as srun
    without --kill-on-bad-exit does not); returns (exit code, stderr) by rank."""
    step = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "1"}
    step |= {"SLURM_STEP_TASKS_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    base |= {**OFFLINE, **step, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "WANDB_API_KEY": ""}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), base.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "harness", *MICRO, "train.epochs=1", f"hydra.run.dir={tmp_path / name}", *args]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    out = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=240)  # a process left waiting for its peer would reach this
            out.append((proc.returncode, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out


@pytest.mark.parametrize(
    "bad, said",
    [
        (["logger=wandb", "logger.mode=online"], "logger=wandb could not start"),  # found on the main process alone
        (["eval.tasks=[testbed_nosuch]"], "unknown testbed task"),  # found by both, after the process group starts
        (["train.nosuch=1"], "nosuch"),  # Hydra's, before the job
    ],
)
def test_bad_input_ends_every_process_with_one_line(tmp_path, bad, said):
    ranks = srun_two(tmp_path, "cell", bad)
    assert [code for code, _ in ranks] == [2, 2], [err[-3000:] for _, err in ranks]
    lines = [line for _, err in ranks for line in message_lines(err)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], lines


def test_bad_input_found_before_the_process_group_is_said_by_the_main_process(tmp_path, monkeypatch):
    """Every process checks the config before torch.distributed starts, and fails alike: rank 1 exits quietly."""
    from hydra import compose, initialize_config_dir

    from harness.config import register_resolvers
    from harness.errors import HarnessError
    from harness.pipeline import run

    register_resolvers()
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [*MICRO, "budget=7", f"paths.results={tmp_path}"])
    for rank, quiet in (("0", False), ("1", True)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(HarnessError, match="budget") as caught:
            run(cfg, tmp_path / "cell")
        assert caught.value.reported is quiet


def test_only_the_main_process_writes_the_run_log(tmp_path):
    """Every process logs its stages to stderr; the run folder's harness.log holds them once (the main process's)."""
    ranks = srun_two(tmp_path, "cell", ["selector=random"])
    assert [code for code, _ in ranks] == [0, 0], [err[-3000:] for _, err in ranks]
    log = (tmp_path / "cell" / "harness.log").read_text().splitlines()
    for stage in ("stage 1/5", "stage 2/5", "stage 3/5"):  # said by both (evaluation and record: the main alone)
        assert sum(stage in line for line in log) == 1, log
        assert all(stage in err for _, err in ranks)  # both processes still say it on stderr
