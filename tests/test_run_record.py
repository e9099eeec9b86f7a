"""A record belongs to exactly the config that produced it; one process per cell; reruns, interrupts, resumes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import MICRO, OFFLINE, message_lines, plugin_folder, record_path, run_harness

from harness.locking import HeartbeatLock

SHORT = [*MICRO, "train.epochs=1"]


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_other_recipe_gets_its_own_record(harness_cli, tmp_path):
    code, out1, err = harness_cli([*MICRO, "train.epochs=1"])
    assert code == 0, err
    code, out2, err = harness_cli([*MICRO, "train.epochs=2", "train.lr=5e-4"])
    assert code == 0, err
    assert "already complete" not in out2
    first, second = record_path(out1), record_path(out2)
    assert first != second
    assert manifest_of(first)["run_id"] != manifest_of(second)["run_id"]
    assert manifest_of(second)["training"]["steps"] == 2 * manifest_of(first)["training"]["steps"]


def test_same_folder_other_config_is_refused_untouched(harness_cli, tmp_path):
    cell = tmp_path / "cell"
    code, _, err = harness_cli([*SHORT, f"hydra.run.dir={cell}"])
    assert code == 0, err
    before = {p.name: p.stat().st_mtime_ns for p in cell.iterdir() if p.name != "harness.log"}
    code, out, err = harness_cli([*MICRO, "train.epochs=3", "train.lr=5e-4", f"hydra.run.dir={cell}"])
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert "different config" in lines[0] and "train.epochs: 1 -> 3" in lines[0] and "train.lr" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in cell.iterdir() if p.name != "harness.log"} == before
    # the same config again: already complete
    code, out, err = harness_cli([*SHORT, f"hydra.run.dir={cell}"])
    assert code == 0 and "already complete" in out


def test_cell_running_elsewhere_is_left_alone(harness_cli, tmp_path):
    cell = tmp_path / "busy"
    cell.mkdir()
    with HeartbeatLock(cell / ".lock"):
        code, out, err = harness_cli([*SHORT, f"hydra.run.dir={cell}"])
    assert code == 0, err
    assert "running elsewhere" in out and f"pid {os.getpid()}" in out
    assert not (cell / "manifest.json").exists() and not (cell / "results.csv").exists()


def test_two_processes_on_one_cell_run_it_once(tmp_path):
    cell = tmp_path / "cell"
    args = [sys.executable, "-m", "harness", *MICRO, "train.epochs=3", f"hydra.run.dir={cell}"]
    env = {**os.environ, **OFFLINE}
    procs = [
        subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    assert not any("fatal" in o[1].decode() for o in outs)  # run outside a git checkout: git stays quiet
    texts = [o[0].decode() for o in outs]
    ran = [t for t in texts if "record: " in t]
    other = [t for t in texts if "record: " not in t]
    assert len(ran) == 1 and len(other) == 1
    assert "running elsewhere" in other[0] or "already complete" in other[0]
    steps = (cell / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in steps] == list(range(1, manifest_of(cell)["training"]["steps"] + 1))
    assert len(list(tmp_path.rglob("results.csv"))) == 1


def test_rerun_archives_an_unfinished_attempt_and_the_log(harness_cli, tmp_path):
    cell = tmp_path / "cell"
    code, _, err = harness_cli([*SHORT, f"hydra.run.dir={cell}", "train.keep_checkpoint=true"])
    assert code == 0, err
    (cell / "results.csv").unlink()  # now an unfinished attempt with its checkpoint, config and manifest
    old_log = (cell / "harness.log").read_text()
    code, _, err = harness_cli([*MICRO, "train.epochs=2", f"hydra.run.dir={cell}"])
    assert code == 2 and "unfinished run of a different config" in err and "rerun=true" in err
    code, _, err = harness_cli([*MICRO, "train.epochs=2", f"hydra.run.dir={cell}", "rerun=true"])
    assert code == 0, err
    archived = list((cell / "archive").iterdir())
    assert len(archived) == 1
    assert {"manifest.json", "config.yaml", "checkpoints", "train_log.jsonl", "harness.log"} <= {
        p.name for p in archived[0].iterdir()
    }
    assert (archived[0] / "harness.log").read_text().startswith(old_log)
    assert old_log not in (cell / "harness.log").read_text()
    assert manifest_of(cell)["identity"]["train"]["epochs"] == 2


def test_compute_steps_trains_every_budget_equally(harness_cli, tmp_path):
    steps = {}
    for budget in ("0.1", "0.3"):
        code, out, err = harness_cli([*MICRO, "train.compute=steps", "train.steps=9", f"budget={budget}"])
        assert code == 0, err
        run = record_path(out)
        training = manifest_of(run)["training"]
        steps[budget] = training["steps"]
        assert training["compute"] == "steps" and training["flops"] > 0
        results = pd.read_csv(run / "results.csv")
        assert (results["train_steps"] == 9).all() and (results["compute"] == "steps").all()
        assert results["train_epochs"].iloc[0] == training["epochs"]
    assert steps == {"0.1": 9, "0.3": 9}


def test_bad_recipe_values_are_one_line(harness_cli, tmp_path):
    for override in ("train.lr=-1", "train.warmup_ratio=2", "train.adam_eps=0", "num_threads=0"):
        code, _, err = harness_cli([*MICRO, override])
        lines = message_lines(err)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (override, err)
        assert override.split("=")[0] in lines[0]
    assert not (tmp_path / "results" / "runs").exists()


def test_selector_that_returns_fewer_than_k_is_an_error(harness_cli, tmp_path):
    plugins = plugin_folder(
        tmp_path,
        "short.py",
        "from harness.selection import Selection, register\n"
        "@register('short_test')\n"
        "def select(ctx):\n"
        "    return Selection(ids=list(ctx.pool.ids[: ctx.k - 1]))\n",
    )
    code, _, err = harness_cli([*SHORT, f"plugins=[{plugins}]", "selector=random", "selector.name=short_test"])
    assert code == 2 and "exactly k=45" in err, err
    assert not list(tmp_path.rglob("results.csv"))


def test_record_columns_items_scores_and_runtime(harness_cli, tmp_path):
    plugins = plugin_folder(
        tmp_path,
        "scored.py",
        "import pandas as pd\n"
        "from harness.selection import Selection, register\n"
        "@register('scored_test')\n"
        "def select(ctx, *, reverse: bool = False):\n"
        "    ids = list(ctx.pool.ids)\n"
        "    scores = pd.Series(range(len(ids)), index=ids, dtype=float)\n"
        "    return Selection(ids=ids[: ctx.k], scores=scores)\n",
    )
    code, out, err = harness_cli(
        [*SHORT, f"plugins=[{plugins}]", "selector=random", "selector.name=scored_test", "+selector.reverse=true"]
    )
    assert code == 0, err
    run = record_path(out)
    results = pd.read_csv(run / "results.csv")
    for column in ("run_dir", "variant", "selector_params", "k", "model_hash", "data_hash", "train_hash", "eval_hash"):
        assert column in results.columns, column
    assert results["variant"].iloc[0] == "scored_test[reverse=True]"
    assert results["run_dir"].iloc[0] == str(run) and results["k"].iloc[0] == 45
    items = pd.read_csv(run / "eval_items.csv")
    assert (items["run_id"] == results["run_id"].iloc[0]).all()
    scores = pd.read_csv(run / "scores.csv")
    assert len(scores) == 300 and "selection_scores" not in manifest_of(run)
    manifest = manifest_of(run)
    assert manifest["runtime"]["world_size"] == 1 and manifest["runtime"]["device"] == "cpu"
    assert manifest["runtime"]["host"] and manifest["runtime"]["num_threads"] >= 1
    assert len(manifest["selector_file_sha256"]) == 64
    assert "stage 1/5" not in out  # log lines go to stderr, the summary alone to stdout


def test_sigint_and_sigterm_stop_with_a_checkpoint_and_resume(tmp_path):
    cell = tmp_path / "cell"
    args = [sys.executable, "-m", "harness", *MICRO, "train.epochs=60", "train.checkpoint_every=1000"]
    args.append(f"hydra.run.dir={cell}")
    env = {**os.environ, **OFFLINE}
    for sig, word in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")):
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        log = cell / "train_log.jsonl"
        start = len(log.read_text().splitlines()) if log.exists() else 0
        while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < start + 3):
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        lines = [line for line in message_lines(err.decode()) if "train:" not in line]
        assert proc.returncode == 128 + sig, err.decode()[-3000:]
        assert len(lines) == 1 and lines[0].startswith(word), lines
        step = int(lines[0].rsplit(" ", 1)[1])
        assert step >= start + 3
        assert (cell / "checkpoints" / f"step-{step:08d}").is_dir()  # saved at the stop, not every 1000 steps
    code, _, err = run_harness(
        [*MICRO, "train.epochs=60", "train.checkpoint_every=1000", f"hydra.run.dir={cell}"], tmp_path
    )
    assert code == 0, err
    training = manifest_of(cell)["training"]
    assert training["resumed_from_step"] == step
    assert len(training["attempts"]) == 3
    assert training["seconds_total"] >= sum(a["seconds"] for a in training["attempts"]) - 0.01
    assert training["seconds_total"] > training["attempts"][-1]["seconds"]
    logged = [json.loads(line) for line in (cell / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == list(range(1, training["steps"] + 1))
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(logged, logged[1:]))  # one clock across attempts


def test_written_files_respect_the_umask(tmp_path):
    from harness.storage import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        folder = atomic_dir(tmp_path / "cache" / "thing", lambda p: (p / "f").write_text("y"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_git_state_sees_untracked_files_and_is_quiet_outside_a_checkout(tmp_path, monkeypatch, capfd):
    from harness import record

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "a.txt").write_text("a")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "a.txt"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "a"], cwd=repo, check=True)
    monkeypatch.setattr(record, "REPO_ROOT", repo)
    assert record.git_state()["dirty"] is False
    (repo / "new_selector.py").write_text("x")
    assert record.git_state()["dirty"] is True
    monkeypatch.setattr(record, "REPO_ROOT", tmp_path / "not_a_checkout")
    assert record.git_state() == {"commit": None, "dirty": None}
    assert "fatal" not in capfd.readouterr().err


def test_threads_follow_affinity_slurm_and_processes(monkeypatch):
    import torch

    from harness import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads(None) == 4 and torch.get_num_threads() == 4
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
        assert runtime.configure_threads(None) == 2
        assert runtime.configure_threads(3) == 3
    finally:
        torch.set_num_threads(before)
