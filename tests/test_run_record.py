"""A record belongs to exactly the config that produced it; one process per cell; reruns, interrupts, resumes."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    MICRO,
    MICRO_RECIPE,
    OFFLINE,
    message_lines,
    plugin_folder,
    record_path,
    run_harness,
    user_lm_eval_task,
)

from harness import locking
from harness.locking import HeartbeatLock, LockHeld

SHORT = [*MICRO, "train.epochs=1"]


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def write_manifest(run: Path, manifest: dict) -> None:
    (run / "manifest.json").write_text(json.dumps(manifest))


def snapshot(run: Path) -> dict[str, int]:
    """Every file of a run folder (Hydra's log aside) with its modification time."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "harness.log"}


def as_if_preempted(run: Path) -> None:
    """Turn a complete record into the unfinished attempt a preempted job leaves (its checkpoints kept)."""
    (run / "results.csv").unlink()
    manifest = manifest_of(run)
    manifest["status"] = "training"
    write_manifest(run, manifest)


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


def test_an_override_equal_to_its_default_reuses_the_cells_complete_record(harness_cli, tmp_path):
    """`train.lr=<the default>` names another folder for the same cell: the record is found there, in a single run
    and in a sweep, nothing trains again and no empty folder is left behind. (The folders are named here as run_name
    names them for a short command line; MICRO's many overrides make a name long enough to be an identity hash.)"""
    import yaml

    from harness import REPO_ROOT

    cells = tmp_path / "results" / "runs" / "testbed" / "tiny_llama" / "random"
    code, out, err = harness_cli([*SHORT, f"hydra.run.dir={cells / 'b0.15_s0'}"])
    assert code == 0, err
    first = record_path(out)
    lr = yaml.safe_load((REPO_ROOT / "conf/train/default.yaml").read_text())["lr"]
    name = f"b0.15_s0,train.lr={lr}"
    code, out, err = harness_cli([*SHORT, f"train.lr={lr}", f"hydra.run.dir='{cells / name}'"])
    assert code == 0 and f"already complete: {first} (the same cell as " in out, (out, err)
    assert [p.name for p in cells.iterdir()] == [first.name]
    sweep = [f"hydra.sweep.dir={cells}", f"hydra.sweep.subdir='{name}'"]
    code, out, err = harness_cli(["-m", *SHORT, f"train.lr={lr}", *sweep])
    assert code == 0 and "1 skipped (already complete)" in out, (out, err)
    (summary,) = [json.loads(p.read_text()) for p in cells.glob("_sweeps/*/summary.json")]
    assert summary["cells"][0]["run_dir"] == str(first), summary
    assert [p.name for p in cells.iterdir() if p.is_dir() and p.name.startswith("b")] == [first.name]


def test_a_sibling_record_is_reused_only_for_the_same_cell_and_inputs(tmp_path):
    from harness.pipeline import complete_elsewhere

    cells = tmp_path / "runs" / "testbed" / "tiny_llama" / "random"
    inputs = {"selector_file_sha256": "a" * 64, "pool_fingerprint": "p" * 16, "eval_tasks_sha256": "e" * 64}
    precision = {"mixed_precision": "no", "model_dtype": "float32"}

    def record(name: str, run_id: str = "cell", complete: bool = True, **changes: object) -> Path:
        folder = cells / name
        folder.mkdir(parents=True)
        manifest = {"run_id": run_id, "selector_file": "random.py", **inputs, "precision": precision, **changes}
        write_manifest(folder, manifest)
        if complete:
            (folder / "results.csv").write_text("run_id\n")
        return folder

    here = cells / "b0.15_s0,train.lr=0.001"
    current = {**inputs, **precision}
    record("b0.15_s1")  # another seed's folder
    record("b0.15_s00")  # a seed whose name begins with this one's
    record("b0.15_s0,train.lr=5e-4", run_id="other")  # another cell
    record("b0.15_s0,eval=testbed", complete=False)  # unfinished
    record("b0.15_s0,selector.name=random", pool_fingerprint="q" * 16)  # this cell, made from another pool
    record(
        "b0.15_s0,train.mixed_precision=no", precision={**precision, "model_dtype": "bfloat16"}
    )  # ... at another precision
    assert complete_elsewhere(here, "cell", current) is None
    found = record("b0.15_s0")
    assert complete_elsewhere(here, "cell", current) == found
    assert complete_elsewhere(cells / "my_run", "cell", current) is None  # a folder of the user's naming: no siblings
    assert complete_elsewhere(found, "cell", current) is None  # never itself


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


FIRST_K = (
    "from harness.selection import Selection, register\n"
    "@register('mine_test')\n"
    "def select(ctx):\n"
    "    return Selection(ids=list(ctx.pool.ids[: ctx.k]))\n"
)


def test_a_plugin_that_ignores_the_budget_has_one_folder_for_every_budget(harness_cli, tmp_path):
    """A selector registered with uses_budget=False (like `full`) has one run id whatever the budget; its cells
    must share one folder too, or each budget would train the same cell again in a folder of its own."""
    code = (
        "from harness.selection import Selection, register\n"
        "@register('every_other_test', uses_budget=False, exact_k=False)\n"
        "def select(ctx):\n"
        "    return Selection(ids=list(ctx.pool.ids[::2]))\n"
    )
    plugins = plugin_folder(tmp_path, "every_other.py", code)
    args = [*SHORT, f"plugins=[{plugins}]", "selector=random", "selector.name=every_other_test"]
    code_1, _, err = harness_cli([*args, "budget=0.1"])
    assert code_1 == 0, err
    code_2, out, err = harness_cli([*args, "budget=0.2"])
    assert code_2 == 0 and "already complete" in out, (out, err)
    (cell,) = [p.parent for p in (tmp_path / "results").rglob("manifest.json")]
    assert cell.name.startswith("all_s0"), cell


def test_edited_selector_file_is_refused_untouched(harness_cli, tmp_path):
    """Editing a selector's file (the documented way to add a method) never reuses the old code's record."""
    plugins = plugin_folder(tmp_path, "mine.py", FIRST_K)
    cell = tmp_path / "cell"
    args = [*SHORT, f"plugins=[{plugins}]", "selector=random", "selector.name=mine_test", f"hydra.run.dir={cell}"]
    code, _, err = harness_cli(args)
    assert code == 0, err
    first = manifest_of(cell)
    before = snapshot(cell)
    (plugins / "mine.py").write_text(FIRST_K.replace("[: ctx.k]", "[-ctx.k :]"))
    for state in ("complete", "unfinished"):
        if state == "unfinished":
            as_if_preempted(cell)
            before = snapshot(cell)
        code, out, err = harness_cli(args)
        lines = message_lines(err)
        assert code == 2 and len(lines) == 1, err
        assert {"complete": "the complete record", "unfinished": "an unfinished run"}[state] in lines[0], lines[0]
        assert "selector file mine.py changed" in lines[0] and "rerun=true" in lines[0], lines[0]
        assert "already complete" not in out and snapshot(cell) == before, state
    # the same process (as in a sweep) runs the edited code: the file is loaded again when it changes
    code, _, err = harness_cli([*args, "rerun=true"])
    assert code == 0, err
    assert len(list((cell / "archive").iterdir())) == 1
    again = manifest_of(cell)
    assert again["selector_file_sha256"] != first["selector_file_sha256"]
    assert again["selected_ids"] != first["selected_ids"]  # the new code's selection


def test_regenerated_jsonl_pool_is_refused_untouched(harness_cli, tmp_path):
    """The same data.path with other content is other data: its record is never reused."""
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": f"add {a} {b} =", "response": str(a + b)} for a in range(2, 9) for b in range(3, 9)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = tmp_path / "my_task.jsonl"
    questions = [{"question": f"add {a} {a} =", "options": [str(2 * a), str(2 * a + 1)], "label": 0} for a in range(6)]
    items.write_text("".join(json.dumps(q) + "\n" for q in questions))
    user_lm_eval_task(tmp_path / "tasks", items)
    cell = tmp_path / "cell"
    args = [
        *MICRO_RECIPE,
        "train.epochs=1",
        "data=jsonl",
        f"data.path={pool}",
        "eval=lm_eval",
        f"eval.include_path={tmp_path / 'tasks'}",
        "eval.tasks=[my_task]",
        "budget=0.5",
        f"hydra.run.dir={cell}",
    ]
    code, _, err = harness_cli(args)
    assert code == 0, err
    before = snapshot(cell)
    edits = (
        (pool, '"5"', '"6"', -1, "pool content changed"),  # regenerated: some answers differ
        # the evaluation's own data edited: the record was scored on other items, so it is not reused either
        (items, '"label": 0', '"label": 1', 1, "evaluation tasks, their data or lm-eval changed"),
    )
    for path, old, new, count, phrase in edits:
        original = path.read_text()
        path.write_text(original.replace(old, new, count))
        code, out, err = harness_cli(args)
        lines = message_lines(err)
        assert code == 2 and len(lines) == 1, err
        assert phrase in lines[0] and "rerun=true" in lines[0], lines[0]
        assert "already complete" not in out and snapshot(cell) == before
        path.write_text(original)
        code, out, err = harness_cli(args)
        assert code == 0 and "already complete" in out, err


def test_record_of_another_precision_is_refused(harness_cli, tmp_path):
    """`auto` precision resolves per machine: a record or checkpoint made under another one is not this run's."""
    cell = tmp_path / "cell"
    args = [*SHORT, f"hydra.run.dir={cell}", "train.keep_checkpoint=true"]
    code, _, err = harness_cli(args)
    assert code == 0, err
    manifest = manifest_of(cell)
    here = manifest["precision"]["mixed_precision"]
    assert here == manifest["runtime"]["mixed_precision"] and manifest["precision"]["model_dtype"] == "float32"
    other = "no" if here == "bf16" else "bf16"
    manifest["precision"]["mixed_precision"] = other  # as if made on another kind of machine
    write_manifest(cell, manifest)
    before = snapshot(cell)
    code, out, err = harness_cli(args)
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert f"mixed precision {other} -> {here}" in lines[0] and "rerun=true" in lines[0]
    assert "already complete" not in out and snapshot(cell) == before
    as_if_preempted(cell)  # a checkpointed attempt requeued onto another kind of node: no silent resume
    before = snapshot(cell)
    code, _, err = harness_cli(args)
    assert code == 2 and "unfinished run" in err and "mixed precision" in err, err
    assert snapshot(cell) == before


def test_older_records_without_precision_use_their_runtime(tmp_path):
    from harness.record import changed_inputs

    old = {"runtime": {"mixed_precision": "bf16"}, "pool_fingerprint": "a" * 64, "selector_file_sha256": None}
    current = {"selector_file_sha256": "b" * 64, "pool_fingerprint": "a" * 64, "mixed_precision": "no"}
    assert changed_inputs(old, {**current, "model_dtype": "float32"}) == ["mixed precision bf16 -> no"]
    assert changed_inputs(old, {**current, "mixed_precision": "bf16"}) == []


def test_cell_completed_while_waiting_for_the_lock_is_not_run_again(harness_cli, tmp_path, monkeypatch):
    """What the folder holds is looked at again once the lock is held: another process may have finished it."""
    from harness.record import RunRecord

    done, cell = tmp_path / "done", tmp_path / "cell"
    code, _, err = harness_cli([*SHORT, f"hydra.run.dir={done}"])
    assert code == 0, err
    take = RunRecord.lock

    def lock(self: RunRecord):
        held = take(self)
        acquire = held.acquire

        def finished_meanwhile(*args, **kwargs):
            for p in done.iterdir():
                if p.name not in ("harness.log", ".lock"):
                    (shutil.copytree if p.is_dir() else shutil.copy2)(p, self.dir / p.name)
            return acquire(*args, **kwargs)

        held.acquire = finished_meanwhile
        return held

    monkeypatch.setattr(RunRecord, "lock", lock)
    code, out, err = harness_cli([*SHORT, f"hydra.run.dir={cell}"])
    assert code == 0 and "already complete" in out, err
    assert (cell / "results.csv").read_bytes() == (done / "results.csv").read_bytes()
    assert manifest_of(cell) == manifest_of(done)


def test_requeued_rerun_resumes_its_own_attempt(harness_cli, tmp_path, monkeypatch):
    """A Slurm job with rerun=true that is preempted and requeued goes on with its attempt instead of archiving it."""
    cell = tmp_path / "cell"
    args = [*SHORT, f"hydra.run.dir={cell}", "train.keep_checkpoint=true", "rerun=true"]
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    code, _, err = harness_cli(args)
    assert code == 0, err
    assert manifest_of(cell)["attempt_token"] == "4242_3"
    as_if_preempted(cell)
    code, _, err = harness_cli(args)  # the requeued job: same job id, still rerun=true
    assert code == 0, err
    assert not (cell / "archive").exists()
    assert manifest_of(cell)["training"]["resumed_from_step"] > 0
    as_if_preempted(cell)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # a new job that asks for a rerun starts over
    code, _, err = harness_cli(args)
    assert code == 0, err
    assert len(list((cell / "archive").iterdir())) == 1
    assert manifest_of(cell)["training"]["resumed_from_step"] == 0
    assert manifest_of(cell)["attempt_token"] == "4243_3"


# ---------------------------------------------------------------- the lock itself (harness.locking)


def foreign_lock(path: Path, age: float = 0.0, **owner: object) -> None:
    """A lock file as another process leaves it, its heartbeat `age` seconds old."""
    record = {"host": "node-elsewhere", "pid": 4321, "time": time.time() - age, "token": "theirs", **owner}
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - age, time.time() - age))


def token_at(path: Path) -> str:
    return json.loads(path.read_text())["token"]


def test_heartbeat_outlives_transient_errors(tmp_path, monkeypatch):
    path = tmp_path / "cell.lock"
    lock = HeartbeatLock(path, heartbeat=0.05, stale_after=1.0).acquire()
    real, failures = os.utime, iter(range(8))

    def flaky(*args, **kwargs):  # an NFS server failing over: ESTALE for a while, then fine
        if next(failures, None) is not None:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(*args, **kwargs)

    monkeypatch.setattr(locking.os, "utime", flaky)
    time.sleep(2.5)
    assert next(failures, None) is None  # every failure was retried
    with pytest.raises(LockHeld):  # the heartbeat went on: nobody may break it
        HeartbeatLock(path, stale_after=1.0).acquire(wait=False)
    assert lock.held()
    lock.release()
    assert not path.exists()


def test_a_lost_lock_is_noticed_and_the_new_holders_file_left_alone(tmp_path):
    from harness.locking import LockLost

    path = tmp_path / "cell.lock"
    lock = HeartbeatLock(path, heartbeat=0.05).acquire()
    assert lock.held()
    lock.check()
    path.unlink()  # broken by another process (this one stalled past stale_after) ...
    other = HeartbeatLock(path).acquire(wait=False)  # ... which holds it now
    assert not lock.held()
    with pytest.raises(LockLost) as lost:
        lock.check()
    assert "\n" not in str(lost.value) and f"now held by pid {os.getpid()}" in str(lost.value)
    time.sleep(0.2)
    before = path.stat().st_mtime_ns
    time.sleep(0.3)
    assert path.stat().st_mtime_ns == before  # the lost lock's heartbeat stopped: it never touches the new one
    lock.release()
    assert token_at(path) == other.token and other.held()
    other.release()
    assert not path.exists() and not lock.break_path.exists()


def test_breaking_a_stale_lock_leaves_one_holder(tmp_path, monkeypatch):
    path = tmp_path / "cell.lock"
    foreign_lock(path, age=120)
    p1, p2, p3 = (HeartbeatLock(path, stale_after=60) for _ in range(3))
    acquired = []

    def take(lock: HeartbeatLock) -> None:
        with contextlib.suppress(LockHeld):
            acquired.append(lock.acquire(wait=False))

    real_rename, real_link, renames = os.rename, os.link, []

    def rename(src, dst):  # p2 moves the stale lock aside; p1, acting on the same observation, gets in first
        renames.append(src)
        if len(renames) == 1:
            take(p1)
        return real_rename(src, dst)

    def link(src, dst):  # a lock moved aside by mistake goes back; p3 finds the path free just before
        take(p3)
        return real_link(src, dst)

    monkeypatch.setattr(locking.os, "rename", rename)
    monkeypatch.setattr(locking.os, "link", link)
    take(p2)
    monkeypatch.undo()
    assert len(acquired) == 1, [lock is p1 for lock in acquired]
    assert [lock.held() for lock in (p1, p2, p3)] == [lock in acquired for lock in (p1, p2, p3)]
    assert token_at(path) == acquired[0].token
    acquired[0].release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_holder_displaced_by_a_failed_put_back_finds_out(tmp_path, monkeypatch, caplog):
    """A breaker that did not wait for `.break` (its creator seemed dead) moves a fresh lock aside by mistake."""
    from harness.locking import LockLost

    path = tmp_path / "cell.lock"
    foreign_lock(path, age=120)
    breaker, p1, p3 = (HeartbeatLock(path, stale_after=60) for _ in range(3))
    real_rename, real_link, renames = os.rename, os.link, []

    def rename(src, dst):
        renames.append(src)
        if Path(src) == path and len(renames) == 1:  # the stale lock goes, p1 takes the path, then the move
            path.unlink()
            p1.acquire(wait=False)
        return real_rename(src, dst)

    def link(src, dst):  # p1's lock goes back, but p3 took the free path first
        p3.acquire(wait=False)
        return real_link(src, dst)

    monkeypatch.setattr(locking.os, "rename", rename)
    monkeypatch.setattr(locking.os, "link", link)
    with caplog.at_level(logging.WARNING, logger="harness.locking"), pytest.raises(LockHeld):
        breaker.acquire(wait=False)
    monkeypatch.undo()
    assert "its holder has lost it" in caplog.text
    assert token_at(path) == p3.token and p3.held() and not p1.held()  # one holder, and p1 knows it is not
    with pytest.raises(LockLost, match=f"now held by pid {os.getpid()}"):
        p1.check()
    p1.release()
    assert token_at(path) == p3.token
    p3.release()
    assert list(tmp_path.iterdir()) == []


def test_release_never_removes_a_lock_that_took_its_place(tmp_path, monkeypatch):
    path = tmp_path / "cell.lock"
    mine, theirs = HeartbeatLock(path).acquire(), HeartbeatLock(path)
    real_loads, armed = json.loads, [True]

    def loads(text, *args, **kwargs):  # release has read its own token; then its lock is broken and retaken
        value = real_loads(text, *args, **kwargs)
        if armed and isinstance(value, dict) and value.get("token") == mine.token:
            armed.clear()
            path.unlink()
            theirs.acquire(wait=False)
        return value

    monkeypatch.setattr(locking.json, "loads", loads)
    mine.release()
    monkeypatch.undo()
    assert not armed and token_at(path) == theirs.token and theirs.held()
    theirs.release()


@pytest.mark.parametrize("text", ["", "{}", '{"host": "n'])
def test_an_empty_or_unreadable_lock_is_judged_by_its_age(tmp_path, text):
    path = tmp_path / "cell.lock"
    path.write_text(text)
    with pytest.raises(LockHeld):  # fresh: perhaps being written right now
        HeartbeatLock(path, stale_after=60).acquire(wait=False)
    os.utime(path, (time.time() - 120, time.time() - 120))
    lock = HeartbeatLock(path, stale_after=60).acquire(wait=False)
    assert token_at(path) == lock.token
    lock.release()
    assert not path.exists()


def test_a_lock_whose_owner_cannot_be_written_is_removed(tmp_path, monkeypatch):
    path = tmp_path / "cell.lock"
    real_fdopen = os.fdopen

    class DiskFull:
        def __init__(self, fh):
            self.fh = fh

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(locking.os, "fdopen", lambda fd, *a, **k: DiskFull(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError, match="No space left"):
        HeartbeatLock(path).acquire(wait=False)
    monkeypatch.undo()
    assert not path.exists()  # not an empty lock that reads as 'running elsewhere' for minutes
    HeartbeatLock(path).acquire(wait=False).release()


def test_a_dead_pid_counts_only_in_this_kernel_and_pid_namespace(tmp_path):
    try:
        ident = {
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "pid_ns": os.readlink("/proc/self/ns/pid"),
        }
    except OSError:
        pytest.skip("no /proc boot id or pid namespace here")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "cell.lock"
    here = {"host": socket.gethostname(), "pid": dead.pid}
    for elsewhere in ({"pid_ns": "pid:[1]"}, {"boot_id": "another-machine"}, {"boot_id": None, "pid_ns": None}):
        foreign_lock(path, **here, **{**ident, **elsewhere})  # a container with this host name, or an old lock
        with pytest.raises(LockHeld):
            HeartbeatLock(path).acquire(wait=False)
    foreign_lock(path, **here, **ident)  # this kernel and pid namespace: its owner is dead
    HeartbeatLock(path).acquire(wait=False).release()


def test_a_requeued_slurm_task_takes_its_own_lock_back(tmp_path, monkeypatch):
    path = tmp_path / "cell.lock"
    attempt = {"job_id": "4242", "array_job_id": "4240", "array_task_id": "2", "restarts": 0}
    foreign_lock(path, slurm=attempt)  # the attempt before the requeue ran on another node; its heartbeat is fresh
    task = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}
    for key, value in task.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    with pytest.raises(LockHeld, match="Slurm job 4240_2"):  # another task or step of the same attempt
        HeartbeatLock(path).acquire(wait=False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    with pytest.raises(LockHeld):  # another array task
        HeartbeatLock(path).acquire(wait=False)
    for key, value in task.items():
        monkeypatch.setenv(key, value)
    lock = HeartbeatLock(path).acquire(wait=False)  # the same task, requeued
    assert json.loads(path.read_text())["slurm"] == {**attempt, "restarts": 1}
    lock.release()


def test_a_run_that_lost_its_lock_does_not_commit_results(harness_cli, tmp_path, monkeypatch):
    """A holder whose lock was broken as stale (and maybe taken by another process) stops before its record is
    written: one line, no results.csv."""
    from harness.locking import HeartbeatLock, LockLost

    def lost(self: HeartbeatLock) -> None:
        raise LockLost(f"lost the lock {self.path} (broken as stale by another process); run the cell again")

    monkeypatch.setattr(HeartbeatLock, "check", lost)
    cell = tmp_path / "cell"
    code, _, err = harness_cli([*SHORT, f"hydra.run.dir={cell}"])
    assert code != 0 and "lost the lock" in err, err
    assert not (cell / "results.csv").exists()


def test_a_stopped_rerun_says_how_to_resume(harness_cli, tmp_path, monkeypatch):
    """rerun=true stopped mid-training: the same command again would archive the attempt and start over, so the line
    says to drop rerun=true, and doing that resumes (it said 'run the same command again to resume')."""
    import harness.pipeline as pipeline

    cell = tmp_path / "cell"
    args = [*MICRO, "train.epochs=3", f"hydra.run.dir={cell}"]
    real_train = pipeline.train

    def stopped_after_first_step(*a, stop, **kw):
        stop.signame = "SIGINT"  # as if Ctrl-C came while training: the loop checkpoints the step and stops
        return real_train(*a, stop=stop, **kw)

    monkeypatch.setattr(pipeline, "train", stopped_after_first_step)
    code, _, err = harness_cli([*args, "rerun=true"])
    (line,) = [x for x in message_lines(err) if "train:" not in x]
    assert code == 128 + signal.SIGINT, err
    assert line == "interrupted; run the same command without rerun=true to resume from step 1"
    monkeypatch.setattr(pipeline, "train", real_train)
    code, _, err = harness_cli(args)  # what the line says
    assert code == 0, err
    assert manifest_of(cell)["training"]["resumed_from_step"] == 1 and not (cell / "archive").exists()


def test_a_folder_of_other_files_is_refused_untouched(harness_cli, tmp_path):
    """hydra.run.dir pointing at a folder of the user's own files: the run overwrote their config.yaml and deleted
    their checkpoints/ (the record's clean-up); now it is refused, and rerun=true moves the files into archive/."""
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "model.bin").write_text("weights")
    (mine / "config.yaml").write_text("lr: 1\n")
    before = snapshot(mine)
    code, _, err = harness_cli([*SHORT, f"hydra.run.dir={mine}"])
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1 and "no run record" in lines[0] and "hydra.run.dir" in lines[0], err
    assert snapshot(mine) == before
    code, _, err = harness_cli([*SHORT, f"hydra.run.dir={mine}", "rerun=true"])
    assert code == 0, err
    (archived,) = (mine / "archive").iterdir()
    assert (archived / "checkpoints" / "model.bin").read_text() == "weights"
    assert (archived / "config.yaml").read_text() == "lr: 1\n" and (mine / "results.csv").is_file()


def test_an_override_that_restates_the_configured_value_is_no_variant(tmp_path):
    """offset=0.15 is el2n's value on the testbed (conf/selector_on/el2n_testbed.yaml; its own default is 0.05): a run
    that spells it out is the same run id as one that does not, and must land in the same leaderboard row."""
    el2n = [*SHORT, "selector=el2n", "selector.warmup_seeds=1", "selector.base_examples=64", "selector.base_epochs=1"]
    labels = {}
    for name, extra in (("spelled", ["selector.offset=0.15"]), ("plain", [])):
        code, out, err = run_harness([*el2n, *extra], tmp_path / name)
        assert code == 0, err
        results = pd.read_csv(record_path(out) / "results.csv")
        labels[name] = (results["run_id"].iloc[0], results["variant"].iloc[0])
    assert labels["spelled"] == labels["plain"], labels
    # values other than the configured ones still show
    assert labels["plain"][1] == "el2n[base_epochs=1,base_examples=64,warmup_seeds=1]", labels
