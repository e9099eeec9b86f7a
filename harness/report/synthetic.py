"""Synthetic run records in the harness's record format, for tests, the benchmark and trying the report.

`python -m harness.report.synthetic OUT` writes a small sweep (selectors x budgets x seeds) whose true
per-task accuracies are known, so the report's intervals and tests can be checked against the truth.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TASKS = ("arithmetic", "sorting", "counting", "facts")
POOL_PER_TASK = {"arithmetic": 4000, "sorting": 2000, "counting": 800, "facts": 200}
BASE_SKILL = {"random": 0.0, "full": 0.6, "bids": 0.35, "influence": 0.25, "el2n": 0.05}
"""Logit offsets by selector: how much better than random each is (an assumption of the simulation)."""


def simulate_items(
    rng: np.random.Generator, run_id: str, skill: float, n_per_task: int = 50, tasks=TASKS, seed_sd: float = 0.0
) -> pd.DataFrame:
    """Per-item results of one run: item difficulty fixed by (task, doc_id), success by a logistic model."""
    offset = rng.normal(0.0, seed_sd) if seed_sd else 0.0
    frames = []
    for t, task in enumerate(tasks):
        difficulty = np.random.default_rng(1000 + t).normal(0.0, 1.0, n_per_task) + 0.3 * t
        prob = 1 / (1 + np.exp(-(skill + offset - difficulty)))
        correct = rng.random(n_per_task) < prob
        gold_prob = np.clip(prob * rng.uniform(0.6, 1.0, n_per_task), 1e-6, 1.0)
        norm = correct | (rng.random(n_per_task) < 0.05)
        frames.append(
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "task": task,
                    "doc_id": np.arange(n_per_task),
                    "correct": correct,
                    "gold_loglik": np.log(gold_prob),
                    "gold_prob": gold_prob,
                    "pred": 0,
                    "gold": 1,
                    "n_choices": 4,
                    "acc": correct.astype(float),
                    "acc_norm": norm.astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def results_from_items(items: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """The tidy results table of one run: per task and metric, then the macro_avg rows."""
    rows = []
    metrics = ("acc", "acc_norm", "gold_loglik", "gold_prob")
    for task, frame in items.groupby("task", sort=False):
        rows += [(task, m, float(frame[m].mean()), len(frame)) for m in metrics]
    table = pd.DataFrame(rows, columns=["task", "metric", "value", "n_items"])
    macro = table.groupby("metric", sort=False).agg(value=("value", "mean"), n_items=("n_items", "sum")).reset_index()
    table = pd.concat([table, macro.assign(task="macro_avg")], ignore_index=True)
    for key, value in meta.items():
        table[key] = value
    front = list(meta)
    return table[front + ["task", "metric", "value", "n_items"]]


def write_run(
    root: Path,
    selector: str,
    budget: float,
    seed: int,
    items: pd.DataFrame | None = None,
    skill: float = 0.0,
    complete: bool = True,
    folder: str | None = None,
    n_per_task: int = 50,
    **overrides: Any,
) -> Path:
    """Write one run record (config.yaml, manifest.json, eval_items.csv, results.csv last) and return its folder."""
    params = overrides.pop("selector_params", {})
    variant = selector + (f"[{','.join(f'{k}={v}' for k, v in sorted(params.items()))}]" if params else "")
    meta: dict[str, Any] = {
        "data": "testbed",
        "model": "tiny",
        "data_hash": "d" * 12,
        "model_hash": "m" * 12,
        "train_hash": "t" * 12,
        "eval_hash": "e" * 12,
        "compute": "epochs",
    }
    meta.update({k: overrides.pop(k) for k in list(overrides) if k in meta})
    ident = json.dumps([variant, budget, seed, meta], sort_keys=True)
    run_id = overrides.pop("run_id", hashlib.sha256(ident.encode()).hexdigest()[:12])
    run_dir = Path(root) / (folder or f"{meta['data']}/{meta['model']}/{variant}/b{budget:g}_s{seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(run_id, 16) % 2**32)
    if items is None:
        items = simulate_items(rng, run_id, skill, n_per_task, seed_sd=overrides.pop("seed_sd", 0.0))
    items = items.assign(run_id=run_id)
    n_pool = sum(POOL_PER_TASK.values())
    k = int(round(budget * n_pool))
    kept = {t: int(round(k * c / n_pool)) for t, c in POOL_PER_TASK.items()}
    diagnostics = overrides.pop(
        "diagnostics",
        {
            "per_task": kept,
            "pool_per_task": POOL_PER_TASK,
            "n_distinct": sum(kept.values()),
            "noisy": int(0.03 * k),
            "filler": int(0.05 * k),
            "duplicates": int(0.04 * k),
            "pool_noisy": int(0.03 * n_pool),
            "pool_filler": int(0.05 * n_pool),
            "pool_duplicates": int(0.04 * n_pool),
        },
    )
    row: dict[str, Any] = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "selector": selector,
        "variant": variant,
        "selector_params": json.dumps(params, sort_keys=True),
        "budget": float(budget),
        "budget_unit": "run",
        "k": k,
        "seed": seed,
        "model": meta["model"],
        "model_hash": meta["model_hash"],
        "data": meta["data"],
        "data_hash": meta["data_hash"],
        "train_hash": meta["train_hash"],
        "eval_hash": meta["eval_hash"],
        "pool_fingerprint": "f" * 16,
        "n_selected": k,
        "train_tokens": k * 30 * 4,
        "train_steps": max(1, k // 16) * 4,
        "train_epochs": 4,
        "train_flops": float(k * 30 * 4 * 6e5),
        "compute": meta["compute"],
        "selection_seconds": 0.5 if selector in ("random", "full") else 20.0 + 10 * budget,
        "signals_cached": selector not in ("random", "full"),
    }
    row.update(overrides)
    (run_dir / "config.yaml").write_text(f"selector: {selector}\nbudget: {budget}\nseed: {seed}\n")
    manifest = {
        "run_id": run_id,
        "status": "complete" if complete else "training",
        "selector": selector,
        "budget": budget,
        "seed": seed,
        "selection_diagnostics": diagnostics,
        "timings": {"train_seconds": 2.0 + 100 * budget},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    if complete:
        items.to_csv(run_dir / "eval_items.csv", index=False)
        results_from_items(items, row).to_csv(run_dir / "results.csv", index=False)
    return run_dir


def write_sweep(
    root: Path,
    selectors=("random", "el2n", "influence", "bids"),
    budgets=(0.05, 0.1, 0.2),
    seeds=(0, 1, 2),
    n_per_task: int = 50,
    seed_sd: float = 0.1,
    full: bool = True,
) -> list[Path]:
    """A sweep whose selectors improve on random by BASE_SKILL logits, every cell better with more budget."""
    dirs = []
    for selector in selectors:
        for budget in budgets:
            for seed in seeds:
                skill = np.log(budget / 0.05) * 0.5 + BASE_SKILL.get(selector, 0.0)
                dirs.append(
                    write_run(root, selector, budget, seed, skill=skill, n_per_task=n_per_task, seed_sd=seed_sd)
                )
    if full:
        for seed in seeds:
            dirs.append(
                write_run(root, "full", 1.0, seed, skill=np.log(20) * 0.5 + 0.2, n_per_task=n_per_task, seed_sd=seed_sd)
            )
    return dirs


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "results/synthetic")
    print(f"wrote {len(write_sweep(target))} synthetic run records under {target}")
