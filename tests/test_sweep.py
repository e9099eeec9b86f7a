"""Sweeps without a cluster: the summary of a local multirun, the presets, and bad input refused up front."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import MICRO, OFFLINE

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.launch import check_launcher, check_resources, export_distributed_env
from harness.locking import HeartbeatLock
from harness.sweep import error_from_log, expand_cells, gather, requeue_cell, write_plan, write_status

SLURM = "hydra/launcher=slurm"


def summaries(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("_sweeps/*/summary.json"))]


def records(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.rglob("results.csv"))


def test_local_multirun_writes_its_summary_and_a_second_sweep_skips(harness_cli, tmp_path):
    args = ["-m", *MICRO, "train.epochs=1", "selector=random,balanced_random"]
    code, out, err = harness_cli(args)
    assert code == 0, err
    results = tmp_path / "results"
    (first,) = summaries(results)
    assert first["final"] and first["counts"] == {"complete": 2}
    assert sorted(Path(c["run_dir"]) for c in first["cells"]) == records(results)
    assert [c["overrides"][-2:] for c in first["cells"]] == [
        ["selector=random", f"paths.results={results}"],
        ["selector=balanced_random", f"paths.results={results}"],
    ]
    assert "sweep summary: 2 cells: 2 complete" in out
    text = next(results.rglob("_sweeps/*/summary.txt")).read_text()
    assert "selector=balanced_random" in text and "complete" in text

    code, out, err = harness_cli(args)  # the same sweep again: every cell is already complete
    assert code == 0, err
    second = [s for s in summaries(results) if s["sweep_id"] != first["sweep_id"]]
    assert len(second) == 1 and second[0]["counts"] == {"skipped": 2}
    assert all(c["reason"] == "already complete" for c in second[0]["cells"])
    assert len(records(results)) == 2


def test_a_failing_cell_is_in_the_summary_with_its_reason(tmp_path):
    # budget 0.001 of 300 examples keeps nothing: the cell passes the up-front checks and fails in selection.
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "-m", *MICRO, "train.epochs=1", "budget=0.001,0.2"]
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [*cmd, f"paths.results={results}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    (summary,) = summaries(results)
    failed, other = summary["cells"]
    assert failed["state"] == "failed" and "budget=0.001 keeps 0" in failed["reason"]
    assert other["state"] in ("complete", "not run")  # a sweep that stops at the failure leaves the rest not run
    assert "failed" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["hydra/launcher=nope"], "unknown 'hydra/launcher' option 'nope'"),
        (["+sweep=nope"], "unknown 'sweep' option 'nope'"),
        (["seed=0,x"], "sweep cell 1 (seed=x"),
        (["budget=0.1,abc"], "budget must be a number"),
        (["selector=random,nope"], "unknown selector 'nope'"),
        ([SLURM, "hydra.launcher.gpus_per_node=0", "hydra.launcher.gpus_per_task=1"], "gpus_per_task"),
        ([SLURM, "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=4"], "more processes"),
        ([SLURM, "hydra.launcher.array_parallelism=0"], "array_parallelism must be at least 1"),
    ],
)
def test_bad_sweep_input_is_one_line_and_runs_nothing(harness_cli, tmp_path, args, says):
    code, out, err = harness_cli(["-m", *args])
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert not (tmp_path / "results").exists()  # nothing ran, nothing was submitted


def test_the_scaling_preset_expands_to_every_selector_budget_and_seed(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "conf/sweep/scaling.yaml").read_text())["hydra"]["sweeper"]["params"]
    values = {key: str(v).split(",") for key, v in params.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    run = [sys.executable, "-m", "harness.sweep_lines", "+sweep=scaling", "seed=7"]
    done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected = [
        [f"selector={s}", f"budget={b}", "seed=7", "+sweep=scaling"]
        for s, b in itertools.product(values["selector"], values["budget"])
    ]
    assert [line.split() for line in lines] == expected  # the command line's seed=7 replaces the preset's seeds
    assert {"random", "balanced_random", "full"} <= set(values["selector"])

    bad = subprocess.run([*run, "budget=2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: sweep cell 0") and "budget must be in (0, 1]" in bad.stderr


def test_a_glob_over_a_config_group_expands_like_hydras_sweeper():
    """`selector='glob(*random)'` needs the config loader to list the group's options ("ConfigLoader is not set")."""
    from hydra import initialize_config_dir

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        cells = expand_cells(["selector=glob(*random)", "seed=0"])
    assert cells == [["selector=balanced_random", "seed=0"], ["selector=random", "seed=0"]]


def test_expand_cells_follows_hydra_order_with_the_command_line_last():
    cells = expand_cells(["seed=1,2", "budget=0.3"], {"budget": "0.1,0.2", "selector": "random,full"})
    assert cells == [
        ["budget=0.3", "selector=random", "seed=1"],
        ["budget=0.3", "selector=random", "seed=2"],
        ["budget=0.3", "selector=full", "seed=1"],
        ["budget=0.3", "selector=full", "seed=2"],
    ]


def test_slurm_resource_checks():
    check_resources(gpus_per_node=4, tasks_per_node=4)
    check_resources(gpus_per_node=0, tasks_per_node=2)  # CPU processes (gloo): any count
    check_resources(gpus_per_node=2, gpus_per_task=2, tasks_per_node=1)
    for kwargs in (
        {"gpus_per_node": 0, "gpus_per_task": 1},
        {"gpus_per_node": None, "gpus_per_task": 2},
        {"gpus_per_node": 2, "tasks_per_node": 3},
        {"gpus_per_node": 2, "gpus_per_task": 2, "tasks_per_node": 2},
        {"gpus_per_node": 2, "gpus_per_task": 1, "tasks_per_node": 2},  # each task would see one GPU, not cuda:1
        {"gpus_per_node": 1, "gpus_per_task": 2},
        {"gpus_per_node": 1, "processes": 2},
        {"gpus_per_node": 1, "processes": 0},
    ):
        with pytest.raises(HarnessError):
            check_resources(**kwargs)
    launcher = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    check_launcher({**launcher, "gpus_per_node": 1, "setup": ["module load cuda"]})
    check_launcher({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher", "gpus_per_node": -1})
    for bad in ({"timeout_min": 0}, {"gpus_per_node": -1}, {"cpus_per_task": "many"}, {"setup": "module load x"}):
        with pytest.raises(HarnessError):
            check_launcher({**launcher, **bad})


def test_distributed_env_comes_from_slurm_variables():
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
           "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "2",
           "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "123",
           "SLURM_JOB_NODELIST": "gpu07", "MASTER_ADDR": ""}  # fmt: skip
    assert export_distributed_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "1", "2")
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(20000 + 123)
    one = {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert not export_distributed_env(one) and "RANK" not in one
    launched = {
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_PROCID": "0",
        "RANK": "1",
    }  # accelerate launch set it already
    assert not export_distributed_env(launched) and launched["RANK"] == "1"


def test_summary_gathers_status_files_and_reads_the_reason_from_a_log(tmp_path):
    record = tmp_path / "rec"
    write_plan(record, [["seed=0"], ["seed=1"], ["seed=2"], ["seed=3"]], "slurm", "s1")
    run_dir = tmp_path / "run0"
    run_dir.mkdir()
    (run_dir / "results.csv").write_text("x\n")
    log = tmp_path / "job.err"
    log.write_text("stage 1/5: pool\nTraceback (most recent call last):\nerror: budget keeps no examples; raise it\n")
    write_status(record, 0, {"state": "complete", "run_dir": str(run_dir), "overrides": ["seed=0"]})
    write_status(record, 1, {"state": "running", "run_dir": str(tmp_path / "run1"), "log": str(log)})
    write_status(record, 2, {"state": "running", "run_dir": str(tmp_path / "run2")})
    live = gather(record)
    assert [c["state"] for c in live["cells"]] == ["complete", "running", "running", "pending"]
    final = gather(record, final=True)
    assert [c["state"] for c in final["cells"]] == ["complete", "failed", "failed", "not run"]
    assert final["cells"][1]["reason"] == "budget keeps no examples; raise it"
    assert final["counts"] == {"complete": 1, "failed": 2, "not run": 1}
    assert error_from_log(tmp_path / "missing.log") is None


def test_sbatch_fallback_refuses_bad_input_before_submitting(tmp_path):
    lines = tmp_path / "cells.txt"
    lines.write_text("selector=random seed=0\nselector=random seed=oops\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env["HARNESS_PYTHON"] = sys.executable
    script = str(REPO_ROOT / "slurm/sbatch_array.sh")
    for args, says in (
        ([str(lines)], "sweep cell 1 (seed=oops)"),
        (["--gpus", "1", "--procs", "2", str(lines)], "2 accelerate process(es) per task but only 1 GPU"),
        (["--parallel", "0", str(lines)], "--parallel must be"),
        (["--max-requeues", "-1", str(lines)], "--max-requeues must be a whole number >= 0, got '-1'"),
        ([str(tmp_path / "none.txt")], "no file of override lines"),
    ):
        done = subprocess.run(
            ["bash", script, "--record", str(tmp_path / "rec"), *args], env=env, capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: ") and says in done.stderr, done.stderr
        assert not (tmp_path / "rec").exists()


def test_sbatch_array_task_whose_overrides_cannot_be_read_is_not_run(tmp_path):
    """Were the lookup's failure ignored, the task would run the default cell and record it as cell i."""
    lines, record, bin_dir = tmp_path / "cells.txt", tmp_path / "rec", tmp_path / "bin"
    lines.write_text("selector=random seed=0\n")
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 1\n")  # --dry-run only checks that sbatch exists
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(HARNESS_PYTHON=sys.executable, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    script = str(REPO_ROOT / "slurm/sbatch_array.sh")
    done = subprocess.run(
        ["bash", script, "--dry-run", "--record", str(record), str(lines)],
        env=env,
        text=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    task = {**env, "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_JOB_ID": "7"}  # no cell 3: the lookup fails
    done = subprocess.run(
        ["bash", str(record / "array.sbatch")], env=task, text=True, capture_output=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "cannot read the overrides of cell 3" in done.stderr and "cell 3 (restart" not in done.stdout
    assert not (tmp_path / "results").exists()  # nothing ran


def test_sbatch_array_task_runs_the_cell_submitted_even_if_the_lines_file_changes(tmp_path, monkeypatch, capsys):
    from harness.sweep import main as sweep_main

    lines, record = tmp_path / "cells.txt", tmp_path / "rec"
    lines.write_text("selector=random seed=0\nselector=bids 'eval.tasks=[a,b]'\n")
    assert sweep_main(["plan", str(lines), str(record), "sbatch"]) == 0
    lines.write_text("selector=el2n seed=5\n")  # the next sweep's `sweep_lines ... > cells.txt` while the array waits
    monkeypatch.setenv("HARNESS_SWEEP_RECORD", str(record))  # as the generated batch script exports it
    capsys.readouterr()
    for task, cell in ((0, ["selector=random", "seed=0"]), (1, ["selector=bids", "eval.tasks=[a,b]"])):
        assert sweep_main(["argv", str(lines), str(task)]) == 0
        assert capsys.readouterr().out.split("\0") == cell
    # a record that holds a sweep of other cells is refused before submission (its tasks read their cells there)
    assert sweep_main(["plan", str(lines), str(record), "sbatch"]) == 2
    assert "already holds a sweep of other cells" in capsys.readouterr().err
    assert json.loads((record / "plan.json").read_text())["cells"][0] == ["selector=random", "seed=0"]


def test_a_stopped_cell_is_reported_with_its_resume_line():
    import io

    from harness.cli import interrupted_line
    from harness.interrupt import Interrupted
    from harness.sweep import _ErrorTail

    for exc in (Interrupted("SIGTERM", step=40), Interrupted("SIGINT")):
        tail = _ErrorTail(io.StringIO())
        print("[2024-01-01 00:00:00,000][harness][INFO] - stage 4/5: train", file=tail)
        print(interrupted_line(exc), file=tail)  # what harness.cli prints before exiting 143 / 130
        assert tail.last == interrupted_line(exc)  # the summary's reason, not "the process exited before ..."
    assert "resume from step 40" in interrupted_line(Interrupted("SIGTERM", step=40))


def test_a_cell_locked_elsewhere_is_running_elsewhere_not_complete(harness_cli, tmp_path):
    results = tmp_path / "results"
    cell = results / "runs" / "busy"
    cell.mkdir(parents=True)
    with HeartbeatLock(cell / ".lock"):  # another sweep (or a requeued task's earlier attempt) runs this cell
        code, out, err = harness_cli(["-m", *MICRO, "train.epochs=1", "selector=random", "hydra.sweep.subdir=busy"])
    assert code == 0, err
    (summary,) = summaries(results)
    assert summary["counts"] == {"running elsewhere": 1}, summary
    (status,) = summary["cells"]
    assert status["run_dir"] == str(cell) and f"pid {os.getpid()}" in status["reason"], status
    assert "heartbeat" in status["reason"] and "already complete" not in status["reason"]
    assert "1 running elsewhere" in out and "already complete" not in out
    assert not (cell / "results.csv").exists()
    text = next(results.rglob("_sweeps/*/summary.txt")).read_text()
    assert "running elsewhere" in text and "skipped" not in text


def test_the_summary_waits_for_the_harness_lock_and_sees_cells_finished_elsewhere(tmp_path):
    from harness.sweep import SUMMARY_LOCK, refresh

    record, run_dir = tmp_path / "rec", tmp_path / "run0"
    write_plan(record, [["seed=0"]], "slurm", "s1")
    reason = "running elsewhere (pid 7 on node3 since ?, heartbeat 2 s ago)"
    write_status(record, 0, {"state": "running elsewhere", "run_dir": str(run_dir), "reason": reason})
    other = HeartbeatLock(record / SUMMARY_LOCK).acquire()  # another cell is writing the summary
    writer = threading.Thread(target=refresh, args=(record,))
    writer.start()
    time.sleep(0.5)
    assert writer.is_alive() and not (record / "summary.json").exists()
    run_dir.mkdir()
    (run_dir / "results.csv").write_text("x\n")  # meanwhile the process that held the cell finished it
    other.release()
    writer.join(10)
    assert not writer.is_alive()
    summary = json.loads((record / "summary.json").read_text())
    assert summary["counts"] == {"complete": 1} and "completed by" in summary["cells"][0]["reason"]
    assert sorted(p.name for p in record.iterdir()) == ["cells", "plan.json", "summary.json", "summary.txt"]


def test_indented_comment_lines_are_not_cells(tmp_path, capsys):
    from harness.sweep import main as sweep_main

    lines = tmp_path / "cells.txt"
    lines.write_text(
        "# the scaling sweep\nselector=random seed=0\n    # seed 1 later\n\t# and this\n\nselector=full seed=0\n"
    )
    assert sweep_main(["count", str(lines)]) == 0
    assert capsys.readouterr().out.strip() == "2"
    for cell, expected in ((0, ["selector=random", "seed=0"]), (1, ["selector=full", "seed=0"])):
        assert sweep_main(["argv", str(lines), str(cell)]) == 0
        assert capsys.readouterr().out.split("\0") == expected


def test_a_failed_multirun_cell_says_its_error_once(harness_cli, tmp_path):
    # budget 0.001 of 300 examples keeps nothing: the cell passes the up-front checks and fails in selection.
    code, out, err = harness_cli(["-m", *MICRO, "train.epochs=1", "budget=0.001"])
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "budget=0.001 keeps 0" in errors[0], err
    (summary,) = summaries(tmp_path / "results")
    assert summary["cells"][0]["state"] == "failed" and "budget=0.001 keeps 0" in summary["cells"][0]["reason"]
    # the stopped multirun's summary line is said when the command returns, not at the interpreter's exit (where an
    # in-process caller such as pytest printed it after everything else)
    assert any(line.startswith("sweep summary: 1 cells: 1 failed") for line in err.splitlines()), err


def dry_run_array(tmp_path: Path, fake_python: str, lines: str, *options: str, **extra_env: str) -> tuple[dict, Path]:
    """slurm/sbatch_array.sh --dry-run over `lines`, with a fake `sbatch` and `fake_python` as the cells' python:
    the environment to run its array.sbatch with, and its record folder."""
    bin_dir, record, cells = tmp_path / "bin", tmp_path / "rec", tmp_path / "cells.txt"
    bin_dir.mkdir()
    cells.write_text(lines)
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 1\n")  # --dry-run only checks that sbatch exists
    (bin_dir / "python").write_text(fake_python)
    for name in ("sbatch", "python"):
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(HARNESS_PYTHON=str(bin_dir / "python"), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", **extra_env)
    command = ["bash", str(REPO_ROOT / "slurm/sbatch_array.sh"), "--dry-run", *options, "--record", str(record)]
    done = subprocess.run([*command, str(cells)], env=env, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    return env, record


def test_sbatch_array_reports_a_cell_killed_alone_but_not_one_stopped_with_its_batch_shell(tmp_path):
    """A cell's process killed by itself (the OOM killer's SIGKILL: rc 137) while the batch shell lives on is reported
    failed at once; one stopped by Slurm's SIGTERM to the whole step (time limit, preemption) is not: it is requeued."""
    # The cell's `python -m harness`: cell 0 is killed alone, cell 1 signals its whole process group as Slurm does.
    fake = (
        "#!/usr/bin/env bash\n"
        "if [[ $1 == -m && $2 == harness ]]; then\n"
        "    [[ $* == *seed=0* ]] && kill -KILL $$\n"
        "    kill -TERM 0; sleep 5; exit 0\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    env, record = dry_run_array(tmp_path, fake, "selector=random seed=0\nselector=random seed=1\n")

    def task(i: int) -> subprocess.CompletedProcess:
        env_i = {**env, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_JOB_ID": "7"}
        return subprocess.run(  # its own process group: the fake Slurm signal must not reach pytest
            ["bash", str(record / "array.sbatch")], env=env_i, text=True, capture_output=True, timeout=120,
            start_new_session=True, cwd=tmp_path,
        )  # fmt: skip

    killed = task(0)
    assert killed.returncode == 137, (killed.stdout, killed.stderr)
    status = json.loads((record / "cells" / "0.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 137 and "SIGKILL" in status["reason"], status
    # The cell and this shell get SIGTERM at once, a race that bash (5.2) can lose the cell's status in (wait gives -1,
    # exit 255; one run in 8 to 20 before the fix): run it a dozen times.
    for _ in range(12):
        stopped = task(1)
        assert stopped.returncode in (143, -15), (stopped.stdout, stopped.stderr)
        assert not (record / "cells" / "1.json").exists()  # still pending: the requeued task reports it
    summary = json.loads((record / "summary.json").read_text())
    assert [c["state"] for c in summary["cells"]] == ["failed", "pending"]


@pytest.mark.parametrize("procs", [1, 2])
def test_sbatch_array_passes_usr1_on_to_the_cell_and_lives(tmp_path, procs):
    """`sbatch --signal=B:USR1@N` signals the batch shell alone: it must not die of it (bash's default for USR1), and
    the cell's process (with --procs > 1, the workers of `accelerate launch`, whose agent would die of it) gets it,
    stops at its checkpoint and reports itself; the shell then requeues the task, which resumes from there."""
    mark = tmp_path / "mark"
    mark.mkdir()
    # A process that stops on USR1 as harness.cli does after its checkpoint (exit 128 + 10), after saying so; the
    # first one writes the cell's status as the harness's sweep callback does.
    said = {"cell": 0, "state": "failed", "reason": "stopped by SIGUSR1; run the same command again to resume from "
            "step 3", "run_dir": str(tmp_path / "run")}  # fmt: skip
    (mark / "said.json").write_text(json.dumps(said))
    report = '[[ $W != 0 ]] || { mkdir -p "$HARNESS_SWEEP_RECORD/cells"; cp "$MARK/said.json" "$_/0.json"; }; '
    stops = f'trap \'echo USR1 > "$MARK/got$W"; {report}exit 138\' USR1; touch "$MARK/ready$W"; '
    stops += "for _ in $(seq 600); do sleep 0.1; done"
    worker = f"    ( {stops} ) &\n"
    fake = (
        "#!/usr/bin/env bash\n"
        "if [[ $1 == -m && $2 == harness ]]; then\n"
        f"    W=0; {stops}; exit 0\n"
        "elif [[ $1 == -m && $2 == accelerate.commands.launch ]]; then  # no USR1 trap: like torchrun's agent\n"
        "    W=0\n" + worker + "    a=$!; W=1\n" + worker + "    b=$!\n"
        '    wait $a; ra=$?; wait $b; rb=$?; touch "$MARK/launcher_done"; exit $((ra > rb ? ra : rb))\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    env, record = dry_run_array(tmp_path, fake, "selector=random seed=0\n", "--procs", str(procs), MARK=str(mark))
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" > "$MARK/scontrol"\n')
    scontrol.chmod(0o755)
    task = subprocess.Popen(  # its own process group, killed below whatever happens
        ["bash", str(record / "array.sbatch")],
        env={**env, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "7"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while not all((mark / f"ready{w}").exists() for w in range(procs)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all((mark / f"ready{w}").exists() for w in range(procs)), task.stderr
        os.kill(task.pid, signal.SIGUSR1)  # Slurm's B:USR1 warning: the batch shell alone
        out, err = task.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the task (a cell orphaned by its shell)
            os.killpg(task.pid, signal.SIGKILL)
    assert task.returncode == 138, (task.returncode, out, err)  # the cell's code; the shell was not killed by USR1
    assert sorted(p.name for p in mark.glob("got*")) == [f"got{w}" for w in range(procs)]
    if procs > 1:
        assert (mark / "launcher_done").exists()  # the launcher outlived the warning and saw its workers stop
    assert (mark / "scontrol").read_text().split() == ["requeue", "7_0"]  # its own array task, once
    assert "cell 0 requeued as 7_0 (1 of at most 3); it resumes from its checkpoint" in out, out
    status = json.loads((record / "cells" / "0.json").read_text())  # the cell's report, now pending its next attempt
    assert status["state"] == "pending" and status["run_dir"] == str(tmp_path / "run"), status
    assert (
        status["reason"] == "requeued (1 of at most 3) after: stopped by SIGUSR1; run the same command again to "
        "resume from step 3"
    ), status


def test_requeue_cell_only_for_a_usr1_stop_and_at_most_n_times(tmp_path, monkeypatch):
    """The fallback requeues a cell after the time-limit warning only when the cell stopped on it (not one that
    finished or failed on its own), at most --max-requeues times; a refused requeue leaves it failed, saying why."""
    bin_dir, record = tmp_path / "bin", tmp_path / "rec"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        '#!/bin/sh\necho "$@" >> "$CALLS"\n[ -z "$REFUSE" ] || { echo "$REFUSE" >&2; exit 1; }\n'
    )
    (bin_dir / "scontrol").chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CALLS", str(calls))
    write_plan(record, [["seed=0"]], "sbatch", "s1")
    stopped = {"state": "failed", "reason": "stopped by SIGUSR1; run the same command again to resume from step 9"}
    env = {"SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "0", "SLURM_RESTART_COUNT": "3"}

    def cell() -> dict:
        return json.loads((record / "cells" / "0.json").read_text())

    for status in ({"state": "complete"}, {"state": "failed", "reason": "CUDA out of memory"}):
        write_status(record, 0, status)
        assert "not requeued: it did not stop on SIGUSR1" in requeue_cell(
            record, 0, 3, env={**env, "SLURM_RESTART_COUNT": "0"}
        )
    write_status(record, 0, stopped)
    assert "requeued 3 times already (--max-requeues 3)" in requeue_cell(record, 0, 3, env=env)
    assert "--max-requeues 0" in requeue_cell(record, 0, 0, env={**env, "SLURM_RESTART_COUNT": "0"})
    assert not calls.exists() and cell()["state"] == "failed"
    monkeypatch.setenv("REFUSE", "scontrol: error: Job has already finished")
    said = requeue_cell(record, 0, 4, env=env)
    assert said == "cell 0 not requeued: scontrol requeue 12_0 failed: scontrol: error: Job has already finished"
    assert cell()["state"] == "failed" and cell()["reason"].startswith(
        stopped["reason"] + " (scontrol requeue 12_0 failed"
    )
    monkeypatch.delenv("REFUSE")
    write_status(record, 0, stopped)
    assert requeue_cell(record, 0, 4, env=env).startswith("cell 0 requeued as 12_0 (4 of at most 4)")
    assert cell()["state"] == "pending" and gather(record)["cells"][0]["state"] == "pending"
    assert calls.read_text().splitlines() == ["requeue 12_0", "requeue 12_0"]


def test_a_running_cell_whose_process_is_gone_is_failed_before_the_sweep_ends(tmp_path):
    """A cell killed at a time limit of a non-requeued array (no end status, no summary of its own) must not show
    'running' forever: a lock without a live holder, or no lock long after its start, means its process is gone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = tmp_path / "rec"
    write_plan(record, [["seed=0"], ["seed=1"], ["seed=2"], ["seed=3"], ["seed=4"]], "sbatch", "s1")
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    long_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    runs = [tmp_path / f"run{i}" for i in range(5)]
    for run_dir in runs:
        run_dir.mkdir()
    live = HeartbeatLock(runs[0] / ".lock").acquire()  # cell 0 runs: its lock has a live holder
    HeartbeatLock(runs[1] / ".lock")._create(runs[1] / ".lock")  # cell 1: a lock file, then its process died
    owner = json.loads((runs[1] / ".lock").read_text())
    (runs[1] / ".lock").write_text(json.dumps({**owner, "pid": int(dead.stdout)}))
    for i, started in enumerate([long_ago, now, long_ago, now, long_ago]):
        write_status(record, i, {"state": "running", "run_dir": str(runs[i]), "started": started})
    (runs[4] / "results.csv").write_text("x\n")  # cell 4 finished its record, then was killed before reporting
    try:
        cells = gather(record)["cells"]
    finally:
        live.release()
    assert [c["state"] for c in cells] == ["running", "failed", "failed", "running", "complete"], cells
    assert "lock pid" in cells[1]["reason"] and "time limit" in cells[2]["reason"]


def test_the_slurm_launcher_starts_cells_with_kill_on_bad_exit(harness_cli, tmp_path, monkeypatch):
    """The srun line submitit writes into the array's batch script ends every task of a cell when one fails (a task
    that dies inside a collective would otherwise leave the others waiting until the distributed timeout)."""
    bin_dir, submitted = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun is there
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {submitted}\necho "sbatch: error: not here" >&2\nexit 1\n')
    for name in ("srun", "sbatch"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cells = ["-m", SLURM, *MICRO, "selector=random,full", "hydra.launcher.gpus_per_node=0"]
    code, _, err = harness_cli([*cells, "hydra.launcher.tasks_per_node=2"])
    assert code == 2 and "sbatch refused the sweep" in err, err
    (srun,) = [line for line in submitted.read_text().splitlines() if line.startswith("srun ")]
    assert "--kill-on-bad-exit=1" in srun.split(), srun
    submitted.unlink()
    code, _, err = harness_cli([*cells, "hydra.launcher.srun_args=['--cpu-bind=none']"])  # the user's own arguments
    (srun,) = [line for line in submitted.read_text().splitlines() if line.startswith("srun ")]
    assert code == 2 and "--cpu-bind=none" in srun.split() and "--kill-on-bad-exit=1" not in srun.split(), srun


def test_submitit_errors_in_the_launching_process_are_one_line(monkeypatch, capsys):
    """sbatch refusing the array (bad partition): exit 2 and what to fix; a cell whose Slurm job failed: exit 1 and
    where the reasons are. Submitit's traceback wrapped the job's whole log."""
    from submitit.core.utils import FailedJobError

    import harness.cli as cli

    def refused() -> None:
        cause = subprocess.CalledProcessError(
            1, ["sbatch", "/x/submission.sh"], stderr="sbatch: error: invalid partition"
        )
        raise FailedJobError("sbatch: error: invalid partition") from cause

    def cell_failed() -> None:
        raise FailedJobError("Job (task=0) failed during processing with trace:\n----\nTraceback ...")

    def other() -> None:
        raise RuntimeError("not submitit")

    for fn, code, says in (
        (refused, 2, "error: sbatch refused the sweep: sbatch: error: invalid partition; fix the hydra.launcher"),
        (cell_failed, 1, "error: a sweep cell failed on Slurm (Job (task=0) failed during processing with trace:)"),
    ):
        monkeypatch.setattr(cli, "_hydra_main", fn)
        with pytest.raises(SystemExit) as stop:
            cli.main()
        err = capsys.readouterr().err
        assert stop.value.code == code and err.startswith(says) and err.count("\n") == 1, err
    monkeypatch.setattr(cli, "_hydra_main", other)
    with pytest.raises(RuntimeError, match="not submitit"):
        cli.main()
