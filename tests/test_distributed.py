"""Two processes on gloo give the single process's result: same weights, same evaluation items."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import torch
from conftest import MICRO, OFFLINE

ARGS = [*MICRO, "train.epochs=2", "train.keep_checkpoint=true", "train.micro_batch_size=4"]


def launch(tmp_path, name: str, processes: int, extra: tuple = ()) -> tuple:
    cell = tmp_path / name
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "harness"]
    else:
        accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
        env["ACCELERATE_USE_CPU"] = "1"  # `--cpu --num_processes 2` would silently start one process
        cmd = [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "harness",
        ]
    done = subprocess.run(
        [*cmd, *ARGS, *extra, f"hydra.run.dir={cell}", f"paths.results={tmp_path / name / 'results'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    state = torch.load(next((cell / "checkpoints").glob("step-*")) / "state.pt", weights_only=False)
    return cell, state, done


def test_two_processes_train_and_evaluate_like_one(tmp_path):
    one, state1, _ = launch(tmp_path, "one", 1)
    two, state2, done = launch(tmp_path, "two", 2)
    manifest = pd.read_json(two / "manifest.json", typ="series")
    assert manifest["runtime"]["world_size"] == 2
    assert done.stdout.count("record: ") == 1  # one record, written by the main process
    for name, value in state1["model"].items():
        torch.testing.assert_close(state2["model"][name], value, rtol=1e-4, atol=2e-6)
    items1 = pd.read_csv(one / "eval_items.csv").drop(columns="run_id")
    items2 = pd.read_csv(two / "eval_items.csv").drop(columns="run_id")
    assert (items1["correct"] == items2["correct"]).mean() > 0.98
    pd.testing.assert_series_equal(items1["gold_loglik"], items2["gold_loglik"], atol=1e-3, rtol=1e-3)


def test_two_processes_share_the_work_of_a_signal(tmp_path):
    """EL2N's pretrained stand-in and warm-up train on both processes, its per-example losses are split between
    them (every second row each) and put together in pool order: the same numbers as one process computes."""
    stand_in = ("selector.base_examples=64", "selector.base_epochs=1")  # the testbed's warmup_base=pretrained, small
    extra = ("selector=el2n", "selector.warmup_seeds=1", "train.epochs=1", *stand_in)
    one, _, _ = launch(tmp_path, "one", 1, extra)
    two, _, done = launch(tmp_path, "two", 2, extra)
    assert "on 2 processes" in done.stderr
    for cell in (one, two):
        used = pd.read_json(cell / "manifest.json", typ="series")["selection_signals"]
        assert [u["name"] for u in used][:2] == ["pretrained_base", "warmup"]
    arrays = []
    for cell in (one, two):
        (losses,) = (cell / "results" / "cache" / "signals" / "losses").glob("*/el2n.npy")
        arrays.append(np.load(losses))
    assert arrays[0].shape == arrays[1].shape == (300,)
    np.testing.assert_allclose(arrays[1], arrays[0], rtol=1e-4, atol=1e-5)
    scores = [pd.read_csv(cell / "scores.csv")["score"].to_numpy() for cell in (one, two)]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-4, atol=1e-5)
