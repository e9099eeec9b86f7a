"""End to end on a micro config: select -> train -> evaluate -> record, and what the record holds."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
from conftest import MICRO, find_cell, plugin_folder, record_path

from harness.testbed import TASKS


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    from conftest import run_harness

    tmp = tmp_path_factory.mktemp("e2e")
    code, out, err = run_harness([*MICRO, "selector=random", "budget=0.3", "seed=1"], tmp)
    assert code == 0, err
    return tmp, out, find_cell(tmp, "random", "b0.3_s1")


def test_record_is_complete(micro_run):
    tmp, out, run = micro_run

    for name in ("config.yaml", "manifest.json", "results.csv", "eval_items.csv", "train_log.jsonl", "harness.log"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert (manifest["selector"], manifest["budget"], manifest["seed"]) == ("random", 0.3, 1)
    assert manifest["n_pool"] == 300 and manifest["n_selected"] == 90 == len(manifest["selected_ids"])
    digest = hashlib.sha256(("\n".join(manifest["selected_ids"])).encode() + b"\x00").hexdigest()
    assert manifest["selected_sha256"] == digest
    assert len(manifest["pool_fingerprint"]) == 64
    assert manifest["versions"]["torch"].startswith("2.") and "lm_eval" in manifest["versions"]
    assert "commit" in manifest["git"]
    diag = manifest["selection_diagnostics"]
    assert sum(diag["per_task"].values()) == 90 and set(diag["per_task"]) == set(TASKS)
    for key in ("noisy", "duplicates", "filler"):
        assert isinstance(diag[key], int) and 0 <= diag[key] <= 90
    assert manifest["training"]["steps"] == 2 * 6  # 2 epochs of ceil(90 / 16) steps
    assert not (run / "checkpoints").exists()  # only kept for resuming (train.keep_checkpoint=true keeps it)
    steps = (run / "train_log.jsonl").read_text().splitlines()
    assert len(steps) == manifest["training"]["steps"]


def test_results_table_is_tidy_and_consistent_with_items(micro_run):
    tmp, _, run = micro_run
    results = pd.read_csv(run / "results.csv")
    items = pd.read_csv(run / "eval_items.csv")
    assert {"task", "metric", "value", "n_items", "selector", "budget", "seed", "n_selected"} <= set(results.columns)
    acc = results[results.metric == "acc"].set_index("task")["value"]
    assert set(acc.index) == {f"testbed_{t}" for t in TASKS} | {"macro_avg"}
    per_task = acc.drop("macro_avg")
    assert acc["macro_avg"] == pytest.approx(per_task.mean())
    from_items = items.groupby("task")["correct"].mean()
    pd.testing.assert_series_equal(per_task.sort_index(), from_items.sort_index(), check_names=False)
    assert (results[results.task != "macro_avg"]["n_items"] == 12).all()
    assert len(items) == 12 * len(TASKS)
    assert items["gold_loglik"].le(0).all()


def test_summary_printed(micro_run):
    tmp, out, run = micro_run
    assert "selected 90 of 300 examples" in out
    assert "macro_avg" in out
    assert f"record: {run}" in out


def test_rerun_is_skipped_then_archived_when_asked(micro_run, harness_cli):
    tmp, _, run = micro_run
    from conftest import run_harness

    before = (run / "results.csv").read_bytes()
    code, out, _ = run_harness([*MICRO, "selector=random", "budget=0.3", "seed=1"], tmp)
    assert code == 0 and "already complete" in out
    assert (run / "results.csv").read_bytes() == before
    code, out, err = run_harness([*MICRO, "selector=random", "budget=0.3", "seed=1", "rerun=true"], tmp)
    assert code == 0, err
    archived = list((run / "archive").glob("*/results.csv"))
    assert len(archived) == 1 and archived[0].read_bytes() == before
    # same config and seed on the CPU: the same numbers (everything but the measured seconds)
    again = pd.read_csv(run / "results.csv").drop(columns="selection_seconds")
    first = pd.read_csv(archived[0]).drop(columns="selection_seconds")
    pd.testing.assert_frame_equal(again, first)


def test_full_and_balanced_random(harness_cli, tmp_path):
    code, out, err = harness_cli([*MICRO, "selector=full", "train.epochs=1"])
    assert code == 0, err
    manifest = json.loads((find_cell(tmp_path, "full", "all_s0") / "manifest.json").read_text())
    assert manifest["n_selected"] == manifest["n_pool"] == 300 and manifest["budget"] == 1.0
    code, out, err = harness_cli([*MICRO, "selector=balanced_random", "budget=0.2", "train.epochs=1"])
    assert code == 0, err
    manifest = json.loads((find_cell(tmp_path, "balanced_random", "b0.2_s0") / "manifest.json").read_text())
    counts = manifest["selection_diagnostics"]["per_task"]
    assert sum(counts.values()) == 60 and max(counts.values()) - min(counts.values()) <= 1


def test_hydra_run_dir_places_the_record(harness_cli, tmp_path):
    target = tmp_path / "elsewhere"
    code, _, err = harness_cli([*MICRO, "train.epochs=1", f"hydra.run.dir={target}"])
    assert code == 0, err
    assert (target / "results.csv").is_file()


def test_wandb_logger_offline(harness_cli, tmp_path):
    pytest.importorskip("wandb")
    code, out, err = harness_cli([*MICRO, "train.epochs=1", "logger=wandb", "logger.mode=offline"])
    assert code == 0, err
    run = record_path(out)
    offline_runs = list((tmp_path / "results" / "wandb").glob("offline-run-*"))  # outside the run folder
    assert len(offline_runs) == 1
    assert any(offline_runs[0].glob("*.wandb"))
    tracker = json.loads((run / "manifest.json").read_text())["tracker"]
    assert tracker["name"] == "wandb" and tracker["dir"] == str(offline_runs[0]) and tracker["id"] in tracker["dir"]
    assert not (run / "wandb").exists()


class FakeWandbRun:
    def __init__(self, **kwargs):
        self.kwargs, self.finished, self.logged = kwargs, [], []
        self.id, self.dir, self.summary = "fake1", None, {}

    def log(self, data, step=None):
        self.logged.append(data)

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


def fake_wandb(monkeypatch, init):
    """A wandb module whose init is `init` (wandb itself need not be installed)."""
    import importlib.machinery
    import sys
    import types

    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init, module.Table = init, lambda dataframe: dataframe
    monkeypatch.setitem(sys.modules, "wandb", module)


@pytest.mark.parametrize("why", ["not logged in", "package missing"])
def test_wandb_that_cannot_start_fails_before_the_selection_and_writes_nothing(harness_cli, tmp_path, monkeypatch, why):
    import sys

    import harness.pipeline

    def init(**kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nTraceback ...")

    if why == "package missing":
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    else:
        fake_wandb(monkeypatch, init)

    def selection_ran(*args, **kwargs):
        raise AssertionError("the selection ran before the logger was started")

    monkeypatch.setattr(harness.pipeline, "select", selection_ran)
    code, out, err = harness_cli([*MICRO, "logger=wandb"])
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err
    assert ("api_key not configured" if why == "not logged in" else "needs the wandb package") in lines[0]
    assert not list((tmp_path / "results" / "runs").rglob("*.json")), "a run folder was written"


def test_wandb_run_started_before_the_selection_ends_failed_when_the_selection_fails(
    harness_cli, tmp_path, monkeypatch
):
    runs = []

    def init(**kwargs):
        runs.append(FakeWandbRun(**kwargs))
        return runs[-1]

    fake_wandb(monkeypatch, init)
    code, out, err = harness_cli([*MICRO, "logger=wandb", "budget=0.001"])  # keeps 0 examples: fails in selection
    assert code == 2 and "budget=0.001 keeps 0" in err, err
    (run,) = runs
    assert run.finished == [1], "the wandb run was not finished as failed"
    assert run.kwargs["dir"] == str(tmp_path / "results")  # wandb writes under <dir>/wandb, outside the run folders
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").rglob("*.*"))


def test_per_epoch_schedule_drives_the_steps(harness_cli, tmp_path):
    """A selector may return one subset per epoch; the run trains on exactly those, in that many steps."""
    plugins = plugin_folder(
        tmp_path,
        "halves.py",
        "from harness.selection import Selection, register\n"
        "@register('halves_test', budget_unit='epoch')\n"
        "def select(ctx):\n"
        "    ids = list(ctx.pool.ids)\n"
        "    return Selection(epochs=[ids[(e % 2) * ctx.k : (e % 2 + 1) * ctx.k] for e in range(ctx.epochs)])\n",
    )
    code, out, err = harness_cli(
        [*MICRO, f"plugins=[{plugins}]", "selector=random", "selector.name=halves_test", "budget=0.2", "train.epochs=3"]
    )
    assert code == 0, err
    run = record_path(out)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["selection_kind"] == "schedule" and manifest["budget_unit"] == "epoch"
    assert [len(e) for e in manifest["selected_ids_per_epoch"]] == [60, 60, 60]  # train.epochs=3 reached the selector
    assert manifest["n_selected"] == 60 and manifest["n_distinct"] == 120  # per-epoch k; distinct ids used
    assert manifest["training"]["steps"] == 3 * 4  # ceil(60 / 16) per epoch
    results = pd.read_csv(run / "results.csv")
    assert (results["budget_unit"] == "epoch").all()
    # the summary's per-task counts are of the 120 distinct examples, and it says so
    (line,) = [x for x in out.splitlines() if x.startswith("selected ")]
    assert line.startswith("selected 60 per epoch of 300 examples") and "120 distinct over the run" in line
    assert sum(int(part.rsplit(" ", 1)[1]) for part in line.split("): ", 1)[1].split(", ")) == 120


def test_killed_run_leaves_no_results_and_resumes(tmp_path):
    """SIGKILL during training: no results.csv; running the cell again resumes from the checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import OFFLINE, run_harness

    args = [*MICRO, "train.epochs=40", "train.checkpoint_every=5", f"paths.results={tmp_path / 'results'}"]
    run = tmp_path / "cell"
    args.append(f"hydra.run.dir={run}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=tmp_path,
        env={**os.environ, **OFFLINE},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "checkpoints").glob("step-*")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list((run / "checkpoints").glob("step-*")), "training never reached a checkpoint"
    assert not (run / "results.csv").exists()
    code, _, err = run_harness(args, tmp_path)
    assert code == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["training"]["resumed_from_step"] > 0  # checkpoints come every 5 steps and at epoch ends
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, manifest["training"]["steps"] + 1))  # one line per step, no repeats


def test_multirun_sweeps_cells_into_their_own_directories(harness_cli, tmp_path):
    code, _, err = harness_cli(["-m", *MICRO, "train.epochs=1", "selector=random,balanced_random", "budget=0.1,0.2"])
    assert code == 0, err
    found = sorted(str(p.parent.relative_to(tmp_path / "results/runs")) for p in tmp_path.rglob("results.csv"))
    assert [f.split(",")[0] for f in found] == [
        f"testbed/tiny_llama/{s}/b{b}_s0" for s in ("balanced_random", "random") for b in ("0.1", "0.2")
    ]
