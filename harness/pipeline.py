"""One run, stage by stage: compose -> pool -> select -> train -> evaluate -> record."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from harness import evaluation, record
from harness.config import validate
from harness.data import load_pool, load_truth
from harness.diagnostics import selection_diagnostics
from harness.modeling import build_model, for_evaluation, load_tokenizer, model_description
from harness.pool import Pool
from harness.record import RunRecord
from harness.seeding import stage_seeds
from harness.selection import (
    Selection,
    SelectionContext,
    SelectorSpec,
    budget_to_k,
    check_params,
    get_selector,
    load_plugins,
    run_selector,
)
from harness.tokenization import TokenizedPool, tokenize_pool
from harness.tracking import make_tracker
from harness.training import count_steps, train

log = logging.getLogger("harness")


@dataclass
class RunOutcome:
    run_dir: Path
    skipped: bool
    manifest: dict[str, Any] = field(default_factory=dict)
    results: pd.DataFrame | None = None


def prepare_selector(cfg: DictConfig) -> tuple[SelectorSpec, dict[str, Any]]:
    """Load the selector plugins and check the chosen one and its parameters before any work."""
    load_plugins(list(cfg.plugins))
    params = {k: v for k, v in OmegaConf.to_container(cfg.selector, resolve=True).items() if k != "name"}
    spec = get_selector(cfg.selector.name)
    check_params(spec, params)
    return spec, params


def select(
    spec: SelectorSpec, params: dict[str, Any], pool: Pool, tokens: TokenizedPool, budget: float, seed: int
) -> tuple[Selection, int]:
    """Stage 3: the selector sees the truth-free view of the pool and returns a Selection."""
    k = budget_to_k(budget, pool.n) if spec.uses_budget else pool.n
    ctx = SelectionContext(pool=pool.view(n_tokens=tokens.lengths.copy()), budget=budget, k=k, seed=seed)
    return run_selector(spec, ctx, params), k


def training_epochs(selection: Selection, pool: Pool, epochs: int) -> list[np.ndarray]:
    """Pool rows per epoch: the fixed subset every epoch, or the selector's own schedule."""
    if selection.ids is not None:
        rows = pool.index_of(selection.ids)
        return [rows] * epochs
    return [pool.index_of(e) for e in selection.epochs]


def make_accelerator(cfg: DictConfig) -> Accelerator:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(mixed_precision=mp)


def run(cfg: DictConfig, run_dir: Path) -> RunOutcome:
    """Run one cell end to end and write its record into run_dir."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    cfg = validate(cfg)
    rec = RunRecord(run_dir)
    if rec.is_complete() and not cfg.rerun:
        print(f"already complete: {run_dir} (pass rerun=true to run it again; the old record is archived)")
        return RunOutcome(run_dir=Path(run_dir), skipped=True)
    accelerator = make_accelerator(cfg)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    cache = Path(to_absolute_path(cfg.paths.cache))
    torch.use_deterministic_algorithms(True, warn_only=True)

    # Stage 1: the selector, the pool, the evaluation tasks, the tokenizer. Bad input fails here, before training.
    spec, params = prepare_selector(cfg)
    budget = cfg.budget if spec.uses_budget else 1.0
    seeds = stage_seeds(cfg.seed, OmegaConf.to_container(cfg.seeds))
    log.info("stage 1/5: pool (%s)", cfg.data.name)
    pool = load_pool(cfg.data)
    tasks = evaluation.resolve_tasks(cfg.eval, pool, cache)
    tokenizer = load_tokenizer(pool, cfg.model, cache)
    tokens = tokenize_pool(pool, tokenizer, cfg.model.max_length, cfg.model.add_bos_token, cache)
    timings["pool_seconds"] = time.perf_counter() - clock

    # Stage 2: select (a budget that keeps nothing fails here).
    log.info("stage 2/5: select (%s, budget %s)", spec.name, budget)
    selection, k = select(spec, params, pool, tokens, budget, seeds["selection"])
    epochs = training_epochs(selection, pool, cfg.train.epochs)
    yaml_text = OmegaConf.to_yaml(cfg)
    manifest = build_manifest(cfg, spec, pool, selection, k, budget, seeds)
    manifest["status"] = "training"
    if accelerator.is_main_process:
        if rec.is_complete():  # rerun=true: the input is checked, so the old record moves aside now
            log.info("rerun: earlier record moved to %s", rec.archive())
        rec.write_config(yaml_text)
        rec.write_manifest(manifest)
    accelerator.wait_for_everyone()

    # Stage 3: train.
    log.info("stage 3/5: train (%d steps per the schedule)", count_steps(epochs, cfg.train.global_batch_size))
    tracker = make_tracker(cfg, run_dir, "/".join(Path(run_dir).parts[-4:])) if accelerator.is_main_process else None
    model = build_model(cfg.model, tokenizer, seeds["init"])
    outcome = train(
        model,
        tokens,
        epochs,
        cfg.train,
        seeds["order"],
        run_dir,
        accelerator,
        pad_id=tokenizer.pad_token_id,
        model_id=pool.fingerprint() + str(model_description(cfg.model)),
        on_step=(lambda step, loss: tracker.log({"train/loss": loss}, step=step)) if tracker else None,
    )
    timings["train_seconds"] = outcome.seconds

    # Stage 4: evaluate (on the main process: lm-eval on the in-memory model).
    results = None
    if accelerator.is_main_process:
        log.info("stage 4/5: evaluate (%d lm-eval tasks)", len(tasks))
        start = time.perf_counter()
        evaluated = evaluation.evaluate(
            for_evaluation(model),
            tokenizer,
            tasks,
            device=str(accelerator.device),
            seed=cfg.seed,
            add_bos_token=cfg.model.add_bos_token,
            **evaluation.evaluate_options(cfg.eval, pool),
        )
        timings["eval_seconds"] = time.perf_counter() - start

        # Stage 5: record (results.csv last: its presence marks the run complete).
        log.info("stage 5/5: record")
        timings["total_seconds"] = time.perf_counter() - clock
        manifest.update(status="complete", training=record_training(outcome), timings=rounded(timings))
        truth = load_truth(cfg.data)  # the hidden truth exists only from here on, never during selection
        manifest["selection_diagnostics"] = selection_diagnostics(pool, selection.distinct_ids, truth)
        results = record.tidy_results(
            evaluated.metrics,
            {
                "run_id": manifest["run_id"],
                "selector": spec.name,
                "budget": budget,
                "budget_unit": spec.budget_unit,
                "seed": cfg.seed,
                "model": cfg.model.name,
                "data": cfg.data.name,
                "pool_fingerprint": manifest["pool_fingerprint"],
                "n_selected": manifest["n_selected"],
                "train_tokens": outcome.tokens_seen,
                "selection_seconds": round(selection.cost_seconds, 4),
            },
        )
        rec.write_manifest(manifest)
        rec.write_items(evaluated.items)
        rec.write_results(results)
        if not cfg.train.keep_checkpoint:
            shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
        tracker.summary({f"{r.task}/{r.metric}": r.value for r in results.itertuples()})
        tracker.table("results", results)
        tracker.finish()
        print_summary(manifest, results, run_dir)
    accelerator.wait_for_everyone()
    return RunOutcome(run_dir=Path(run_dir), skipped=False, manifest=manifest, results=results)


def build_manifest(
    cfg: DictConfig,
    spec: SelectorSpec,
    pool: Pool,
    selection: Selection,
    k: int,
    budget: float,
    seeds: dict[str, int],
) -> dict[str, Any]:
    """What identifies the run and what it selected (ids, their hash, the pool's fingerprint, versions)."""
    fixed = selection.ids is not None
    manifest: dict[str, Any] = {
        "run_id": record.cell_id(cfg),
        "command": record.command_line(),
        "selector": spec.name,
        "selector_params": {k_: v for k_, v in OmegaConf.to_container(cfg.selector).items() if k_ != "name"},
        "budget": budget,
        "budget_unit": spec.budget_unit,
        "k": k,
        "seed": cfg.seed,
        "seeds": seeds,
        "data": cfg.data.name,
        "model": cfg.model.name,
        "n_pool": pool.n,
        "n_selected": len(selection.ids) if fixed else len(selection.distinct_ids),
        "selection_kind": selection.kind,
        "selected_ids": selection.ids if fixed else None,
        "selected_ids_per_epoch": None if fixed else selection.epochs,
        "selected_sha256": selection.sha256(),
        "pool_fingerprint": pool.fingerprint(),
        "selection_cost_seconds": round(selection.cost_seconds, 4),
        "selection_info": selection.info,
        "versions": record.package_versions(),
        "git": record.git_state(),
    }
    if selection.scores is not None:
        manifest["selection_scores"] = {str(i): float(v) for i, v in selection.scores.items()}
    return manifest


def record_training(outcome: Any) -> dict[str, Any]:
    return {
        "steps": outcome.steps,
        "examples_seen": outcome.examples_seen,
        "tokens_seen": outcome.tokens_seen,
        "response_tokens_seen": outcome.response_tokens_seen,
        "final_loss": outcome.final_loss,
        "resumed_from_step": outcome.resumed_from_step,
    }


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


def print_summary(manifest: dict[str, Any], results: pd.DataFrame, run_dir: Path) -> None:
    """The end of a run on the terminal: what was selected, the scores, where the record is."""
    per_task = manifest["selection_diagnostics"]["per_task"]
    print()
    print(
        f"selected {manifest['n_selected']} of {manifest['n_pool']} examples "
        f"({manifest['selector']}, budget {manifest['budget']}, seed {manifest['seed']}): "
        + ", ".join(f"{t} {c}" for t, c in per_task.items())
    )
    diag = manifest["selection_diagnostics"]
    if "noisy" in diag:
        print(f"kept {diag['noisy']} noisy, {diag['duplicates']} near-duplicate, {diag['filler']} filler examples")
    table = results.pivot_table(index="task", columns="metric", values="value", sort=False)
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    t = manifest["timings"]
    print(
        f"time: pool {t['pool_seconds']:.0f}s, selection {manifest['selection_cost_seconds']:.1f}s, "
        f"training {t['train_seconds']:.0f}s, evaluation {t['eval_seconds']:.0f}s"
    )
    print(f"record: {run_dir}")
