"""One run, stage by stage: compose -> pool -> select -> train -> evaluate -> record."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate.utils import broadcast_object_list
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from harness import evaluation, record, runtime
from harness.config import validate
from harness.data import load_pool, load_truth, pretraining_corpus
from harness.diagnostics import selection_diagnostics
from harness.errors import HarnessError
from harness.identity import (
    cell_base,
    describe_differences,
    identity,
    identity_hash,
    selector_as_configured,
    task_overrides,
)
from harness.interrupt import Interrupted, StopFlag, graceful_stop
from harness.launch import export_distributed_env
from harness.locking import LockHeld, describe_owner
from harness.modeling import build_model, for_evaluation, load_tokenizer, model_description, resolved_precision
from harness.pool import Pool
from harness.record import RunRecord, changed_inputs
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
    source_sha256,
)
from harness.signals.service import SignalService
from harness.tokenization import TokenizedPool, tokenize_pool
from harness.tracking import make_tracker, tracker_dir
from harness.training import (
    ComputePlan,
    check_resumable,
    checkpoint_step,
    compute_plan,
    plan_fingerprint,
    recipe_of,
    train,
    training_flops,
)

log = logging.getLogger("harness")


@dataclass
class RunOutcome:
    run_dir: Path
    skipped: bool
    manifest: dict[str, Any] = field(default_factory=dict)
    results: pd.DataFrame | None = None
    reason: str = ""


def prepare_selector(cfg: DictConfig) -> tuple[SelectorSpec, dict[str, Any]]:
    """Load the selector plugins and check the chosen one and its parameters before any work."""
    load_plugins(list(cfg.plugins))
    params = {k: v for k, v in OmegaConf.to_container(cfg.selector, resolve=True).items() if k != "name"}
    spec = get_selector(cfg.selector.name)
    check_params(spec, params)
    return spec, params


def select(
    spec: SelectorSpec,
    params: dict[str, Any],
    pool: Pool,
    tokens: TokenizedPool,
    budget: float,
    seed: int,
    plan_for: Any,
    signals: Any = None,
    target_tasks: list[str] | None = None,
) -> tuple[Selection, int, ComputePlan]:
    """Stage 2: the selector sees the truth-free view of the pool and the recipe's epochs, returns a Selection."""
    k = budget_to_k(budget, pool.n) if spec.uses_budget else pool.n
    plan = plan_for(k)
    ctx = SelectionContext(
        pool=pool.view(n_tokens=tokens.lengths.copy()),
        budget=budget,
        k=k,
        seed=seed,
        signals=signals,
        epochs=plan.epochs,
        global_batch_size=plan_for.global_batch_size,
        target_tasks=list(target_tasks or []),
    )
    return run_selector(spec, ctx, params), k, plan


def training_epochs(selection: Selection, pool: Pool, epochs: int) -> list[np.ndarray]:
    """Pool rows per epoch (sorted, so the data order never depends on how the selector listed them): the fixed
    subset every epoch, or the selector's own schedule."""
    if selection.ids is not None:
        rows = np.sort(pool.index_of(selection.ids))
        return [rows] * epochs
    return [np.sort(pool.index_of(e)) for e in selection.epochs]


def target_tasks(tasks: list[Any], pool: Pool) -> list[str]:
    """The validation tasks that the evaluated tasks target: `testbed_<skill>` (and its variants, such as the
    generative `testbed_<skill>_gen`) targets the skill; a suite whose names match no validation task (real lm-eval
    benchmarks over a pool's own task labels) targets every task that has validation examples."""
    have = sorted(set(pool.validation["task"])) if len(pool.validation) else []
    names = [t["task"] if isinstance(t, dict) else str(t) for t in tasks]
    found = []
    for name in names:
        base = name[len("testbed_") :] if name.startswith("testbed_") else name
        match = [v for v in have if base == v or base.startswith(v + "_")]
        found.extend(m for m in match[:1] if m not in found)
    if found:
        return found
    if any(n.startswith("testbed_") for n in names):  # testbed tasks, but the pool lacks their validation examples
        return sorted({n[len("testbed_") :].removesuffix("_gen") for n in names})
    return have


class _PlanFor:
    """k -> the recipe's compute plan (callable), carrying the global batch size for the selection context."""

    def __init__(self, train_cfg: Any, n_pool: int) -> None:
        self.train_cfg, self.n_pool = train_cfg, n_pool
        self.global_batch_size = int(train_cfg.global_batch_size)

    def __call__(self, k: int) -> ComputePlan:
        return compute_plan(self.train_cfg, k, self.n_pool)


ATTEMPT_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID")
"""Environment variables that name one scheduled attempt: a requeued Slurm job keeps them."""


def attempt_token() -> str | None:
    """The Slurm job (and array task) this process runs as; None outside Slurm."""
    if not os.environ.get(ATTEMPT_VARIABLES[0]):
        return None
    return "_".join(os.environ[v] for v in ATTEMPT_VARIABLES if os.environ.get(v))


def check_record(
    rec: RunRecord,
    run_id: str,
    ident: dict[str, Any],
    current: dict[str, Any],
    rerun: bool,
    token: str | None,
    locked: bool = True,
) -> str:
    """What the run folder holds for this cell: 'complete' (reuse its record), 'resume' (an unfinished attempt of
    this cell), 'archive' (rerun=true: move it aside after every input check) or 'fresh'. A record of another
    config, or of this config made from other inputs (`current`: selector file, pool, evaluation tasks, precision),
    or files that are no record at all, are a one-line error. Files without a manifest are judged only under the
    folder's lock (`locked`): without it they may be another process's attempt between two writes."""
    stored = rec.manifest()
    complete = rec.is_complete()
    same = stored is not None and stored.get("run_id") == run_id
    unfinished = same and not complete and stored.get("status") == "training"
    if rerun:
        # a requeued job (Slurm preemption) still says rerun=true: it goes on with its own attempt
        if unfinished and token is not None and stored.get("attempt_token") == token:
            if not changed_inputs(stored, current):
                return "resume"
        return "archive"
    if stored is None and not complete:
        if locked and rec.has_content():  # the user's own files (hydra.run.dir=.): a run would overwrite or delete them
            raise HarnessError(
                f"{rec.dir} holds files that are no run record (no {record.MANIFEST}); run the cell in a new or "
                "empty folder (hydra.run.dir=...), or pass rerun=true to move them into its archive/ first"
            )
        return "fresh"
    if not same:
        diff = describe_differences((stored or {}).get("identity") or {}, ident) or "identity unknown"
        if complete:
            raise HarnessError(
                f"{rec.dir} holds the complete record of a different config ({diff}); "
                "run it elsewhere (hydra.run.dir=...) or pass rerun=true to archive that record first"
            )
        raise HarnessError(
            f"{rec.dir} holds an unfinished run of a different config ({diff}); "
            "run it elsewhere (hydra.run.dir=...) or pass rerun=true to archive it first"
        )
    changes = changed_inputs(stored, current)
    if changes:
        what = "the complete record" if complete else "an unfinished run"
        raise HarnessError(
            f"{rec.dir} holds {what} of this config made from other inputs ({', '.join(changes)}); "
            "pass rerun=true to archive it and run again, or run it elsewhere (hydra.run.dir=...)"
        )
    if complete:
        return "complete"
    return "resume" if unfinished else "fresh"


def complete_elsewhere(run_dir: Path, run_id: str, current: dict[str, Any]) -> Path | None:
    """A complete record of this cell (same run id, made from the same `current` inputs) in a sibling folder of the
    same budget and seed, or None.

    The folder name shows the command line's overrides as typed, so `train.lr=1e-3` where 1e-3 is the default, or a
    group's default named (`eval=testbed`), names another folder for the same cell. The name is left as it is (it
    would need the config composed once per override to tell, and an older record keeps its folder); instead the
    run looks for the record among its siblings and reuses only one of exactly this identity and these inputs. Two
    such cells running at once (one Slurm array) may still both train, each in its own folder: nothing is
    overwritten, and the report counts one record per run id."""
    run_dir = Path(run_dir).absolute()
    base = cell_base(run_dir.name)
    if base is None or not run_dir.parent.is_dir():
        return None
    for other in sorted(run_dir.parent.iterdir()):
        if other.name == run_dir.name or cell_base(other.name) != base or not other.is_dir():
            continue
        rec = RunRecord(other)
        stored = rec.manifest() if rec.is_complete() else None
        if stored is not None and stored.get("run_id") == run_id and not changed_inputs(stored, current):
            return other
    return None


def run(cfg: DictConfig, run_dir: Path) -> RunOutcome:
    """Run one cell end to end and write its record into run_dir (one process per cell at a time)."""
    export_distributed_env()  # before anything asks for the rank
    main = runtime.is_main_process_env()
    try:
        cfg = validate(cfg)
        spec, params = prepare_selector(cfg)
        ident = identity(cfg, spec.uses_budget)
        run_id = identity_hash(ident)
        rec = RunRecord(run_dir)
        token = attempt_token()
        # the checks that need neither the pool nor the accelerator, before either: another config, another selector
        check_record(rec, run_id, ident, {"selector_file_sha256": source_sha256(spec)}, cfg.rerun, token, locked=False)
    except HarnessError as exc:  # every process checks the same input and fails alike: the main one says it
        exc.reported = exc.reported or not main
        raise
    lock = rec.lock()
    accelerator = runtime.make_accelerator(cfg.train.mixed_precision, cfg.dist_timeout_minutes)

    def take_lock() -> str | None:
        try:
            lock.acquire(wait=False)
        except LockHeld as exc:
            return describe_owner(exc.owner)
        return None

    held = runtime.together(accelerator, take_lock, main_only=True)  # the main process's lock; the others hear of it
    held = broadcast_object_list([held])[0] if accelerator.num_processes > 1 else held
    if held is not None:
        if main:
            print(f"skipped: {run_dir} is running elsewhere ({held}); it resumes or finishes there")
        return RunOutcome(run_dir=Path(run_dir), skipped=True, reason="running elsewhere")
    try:
        with graceful_stop() as stop, ExitStack() as on_exit:  # on_exit: the tracker, finished however the run ends
            held_lock = lock if main else None
            return _run_locked(
                cfg, Path(run_dir), rec, spec, params, ident, run_id, accelerator, stop, token, held_lock, on_exit
            )
    except Interrupted as exc:
        if exc.step is None:
            exc.step = checkpoint_step(run_dir)
        raise
    finally:
        if main:
            lock.release()


def _run_locked(
    cfg: DictConfig,
    run_dir: Path,
    rec: RunRecord,
    spec: SelectorSpec,
    params: dict[str, Any],
    ident: dict[str, Any],
    run_id: str,
    accelerator: Any,
    stop: StopFlag,
    token: str | None,
    lock: Any = None,
    on_exit: ExitStack | None = None,
) -> RunOutcome:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    threads = runtime.configure_threads(cfg.num_threads)
    cache = Path(to_absolute_path(cfg.paths.cache))
    torch.use_deterministic_algorithms(True, warn_only=True)
    budget = cfg.budget if spec.uses_budget else 1.0
    seeds = stage_seeds(cfg.seed, OmegaConf.to_container(cfg.seeds))

    # Stage 1: the pool, the evaluation tasks, the tokenizer. Bad input fails here, before anything is written.
    # Every process loads them on its own (no collective): one that fails ends them all, and one line says why.
    log.info("stage 1/5: pool (%s)", cfg.data.name)

    def stage_one() -> tuple:
        pool = load_pool(cfg.data, include_path=cfg.eval.include_path)
        # What the folder holds, looked at again now that this process owns it, against everything a record uses.
        precision = resolved_precision(accelerator, cfg.model.dtype)
        current = {"selector_file_sha256": source_sha256(spec), "pool_fingerprint": pool.fingerprint(), **precision}
        verdict = check_record(rec, run_id, ident, current, cfg.rerun, token)
        # The evaluation tasks are written into the cache (which may lie inside this folder) and then fingerprinted:
        # a record scored on since-edited tasks or their data is not this config's either.
        tasks = evaluation.resolve_tasks(cfg.eval, pool, cache)
        eval_tasks_sha256 = evaluation.tasks_fingerprint(tasks, cfg.eval.include_path)
        if verdict in ("complete", "resume"):
            current["eval_tasks_sha256"] = eval_tasks_sha256
            verdict = check_record(rec, run_id, ident, current, cfg.rerun, token)
        if verdict == "complete":
            return pool, precision, current, verdict, tasks, eval_tasks_sha256, None, None, None
        current["eval_tasks_sha256"] = eval_tasks_sha256
        eval_options = evaluation.evaluate_options(cfg.eval, pool)
        tokenizer = load_tokenizer(pool, cfg.model, cache)
        pretrained = cfg.model.source == "pretrained"  # base models ship no template: model.chat_template gives one
        evaluation.check_chat_template(tokenizer, pool.chat_template, "data.chat_template=true", pretrained=pretrained)
        evaluation.check_chat_template(tokenizer, eval_options["apply_chat_template"], pretrained=pretrained)
        tokens = tokenize_pool(pool, tokenizer, cfg.model.max_length, cfg.model.add_bos_token, cache)
        return pool, precision, current, verdict, tasks, eval_tasks_sha256, eval_options, tokenizer, tokens

    pool, precision, current, verdict, tasks, eval_tasks_sha256, eval_options, tokenizer, tokens = runtime.together(
        accelerator, stage_one
    )
    if verdict == "complete":
        if accelerator.is_main_process:
            print(f"already complete: {run_dir} (pass rerun=true to run it again; the old record is archived)")
        return RunOutcome(run_dir=Path(run_dir), skipped=True, reason="complete")
    elsewhere = None if cfg.rerun else complete_elsewhere(run_dir, run_id, current)
    if elsewhere is not None:  # the same cell under another spelling of its overrides: never paid for twice
        if accelerator.is_main_process:
            again = "pass rerun=true to train it again in that folder"
            print(f"already complete: {elsewhere} (the same cell as {run_dir}; {again})")
        return RunOutcome(run_dir=elsewhere, skipped=True, reason="complete")
    # The tracker starts before the selection, so a logger that cannot start fails here, not hours later (and every
    # process stops with it); its files live outside the run folder (see harness.tracking).
    name = "/".join(Path(run_dir).parts[-4:])
    tracker = runtime.together(accelerator, lambda: make_tracker(cfg, tracker_dir(cfg), name), main_only=True)
    if tracker is not None and on_exit is not None:
        on_exit.enter_context(tracker)
    timings["pool_seconds"] = time.perf_counter() - clock
    model_id = pool.fingerprint() + str(model_description(cfg.model))

    # Stage 2: select (or reuse the selection of an interrupted attempt). With several processes every one runs the
    # selector in lockstep so that its signals (warm-ups, losses, gradients, embeddings) split their work; the
    # selection itself is deterministic, and the main process's is broadcast and recorded.
    log.info("stage 2/5: select (%s, budget %s)", spec.name, budget)
    plan_for = _PlanFor(cfg.train, pool.n)
    stored = rec.manifest() if verdict == "resume" else None
    manifest = None
    if stored is not None:
        selection, k, plan = selection_from_manifest(stored), stored["k"], plan_for(stored["k"])
        manifest = stored
        log.info("resuming: the selection of the interrupted attempt is reused")
    else:  # every process: signal computations split their work across processes; the main one's is kept
        signals = SignalService(
            pool=pool,
            tokens=tokens,
            tokenizer=tokenizer,
            model_cfg=cfg.model,
            train_cfg=cfg.train,
            cache_dir=cache,
            accelerator=accelerator,
            batch_size=cfg.eval.batch_size,
            pretraining_corpus=partial(pretraining_corpus, cfg.data) if cfg.data.source == "testbed" else None,
        )
        targets = target_tasks(tasks, pool)
        # in lockstep: a selector's check of its input fails on every process at the same point, and one line says it
        selection, k, plan = runtime.together(
            accelerator,
            lambda: select(spec, params, pool, tokens, budget, seeds["selection"], plan_for, signals, targets),
        )
    if accelerator.num_processes > 1:
        selection = broadcast_object_list([selection])[0]
    epochs = training_epochs(selection, pool, plan.epochs)
    recipe = {**recipe_of(cfg.train), "max_steps": plan.max_steps}
    if verdict != "archive":
        fingerprint = plan_fingerprint(epochs, recipe, seeds["order"], model_id)
        runtime.together(accelerator, lambda: check_resumable(run_dir, fingerprint))
    if manifest is None:
        manifest = build_manifest(cfg, spec, params, pool, selection, k, budget, seeds, ident, run_id, plan)
    manifest.update(
        status="training",
        runtime=runtime.describe(accelerator, threads),
        precision=precision,
        eval_tasks_sha256=eval_tasks_sha256,
        attempt_token=token,
        tracker=tracker.describe() if tracker is not None else None,
    )

    def start_record() -> None:
        if verdict == "archive":  # every input is checked: what is there moves aside now
            moved = rec.archive()
            if moved:
                log.info("rerun: earlier record moved to %s", moved)
        rec.write_manifest(manifest)  # the manifest first: a folder with files of a run always has it
        rec.write_config(OmegaConf.to_yaml(cfg))
        if selection.scores is not None:
            rec.write_scores(selection.scores)

    runtime.together(accelerator, start_record, main_only=True)  # the others wait, and stop if it fails

    # Stage 3: train.
    log.info("stage 3/5: train (%d steps, compute=%s)", plan.steps, plan.compute)
    model = runtime.together(accelerator, lambda: build_model(cfg.model, tokenizer, seeds["init"]))
    outcome = train(
        model,
        tokens,
        epochs,
        cfg.train,
        seeds["order"],
        run_dir,
        accelerator,
        pad_id=tokenizer.pad_token_id,
        model_id=model_id,
        on_step=(lambda step, loss: tracker.log({"train/loss": loss}, step=step)) if tracker else None,
        max_steps=plan.max_steps,
        stop=stop,
    )
    timings["train_seconds"] = outcome.seconds_total
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # Stage 4: evaluate (on the main process: lm-eval on the in-memory model; the others wait, and stop if it fails).
    def evaluate_and_record() -> pd.DataFrame:
        log.info("stage 4/5: evaluate (%d lm-eval tasks)", len(tasks))
        start = time.perf_counter()
        evaluated = evaluation.evaluate(
            for_evaluation(model),
            tokenizer,
            tasks,
            device=str(accelerator.device),
            seed=cfg.seed,
            add_bos_token=cfg.model.add_bos_token,
            **eval_options,
        )
        timings["eval_seconds"] = time.perf_counter() - start

        # Stage 5: record (results.csv last: its presence marks the run complete).
        log.info("stage 5/5: record")
        timings["total_seconds"] = time.perf_counter() - clock
        training = record_training(outcome, plan, k, cfg.train.global_batch_size, n_params, n_trainable)
        manifest.update(status="complete", training=training, timings=rounded(timings))
        truth = load_truth(cfg.data)  # the hidden truth exists only from here on, never during selection
        manifest["selection_diagnostics"] = selection_diagnostics(pool, selection.distinct_ids, truth)
        results = record.tidy_results(evaluated.metrics, result_meta(manifest, run_dir, training))
        evaluated.items.insert(0, "run_id", run_id)
        manifest["eval"] = {"shots": evaluated.shots}
        if lock is not None:
            lock.check()  # a holder that lost its lock (broken as stale) must not commit over the new holder's run
        rec.write_lm_eval(evaluated.metadata)
        rec.write_manifest(manifest)
        rec.write_items(evaluated.items)
        rec.write_results(results)
        if not cfg.train.keep_checkpoint:
            shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
        tracker.summary({f"{r.task}/{r.metric}": r.value for r in results.itertuples()})
        tracker.table("results", results)
        tracker.finish()
        print_summary(manifest, results, run_dir)
        return results

    results = runtime.together(accelerator, evaluate_and_record, main_only=True)
    return RunOutcome(run_dir=Path(run_dir), skipped=False, manifest=manifest, results=results)


def variant_label(spec: SelectorSpec, params: dict[str, Any]) -> str:
    """The selector's name plus the parameters that differ from the selector as configured, e.g.
    `influence[aggregation=sum]`: its config file, the data pool's adaptation (conf/selector_on/, which every run there
    shares) and any preset, without the command line's selector overrides; else its own defaults. An override that
    restates a configured value is no variant: one run id gets one label however the command line spelled it."""

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, (list, tuple)) else value

    defaults = {n: plain(p.default) for n, p in spec.params().items() if p.default is not p.empty}
    overrides = task_overrides()
    configured = selector_as_configured(overrides) if overrides is not None else None
    defaults.update({k: plain(v) for k, v in (configured or {}).items()})
    missing = object()
    changed = {k: v for k, v in sorted(params.items()) if defaults.get(k, missing) != plain(v)}
    if not changed:
        return spec.name
    return f"{spec.name}[{','.join(f'{k}={v}' for k, v in changed.items())}]"


def build_manifest(
    cfg: DictConfig,
    spec: SelectorSpec,
    params: dict[str, Any],
    pool: Pool,
    selection: Selection,
    k: int,
    budget: float,
    seeds: dict[str, int],
    ident: dict[str, Any],
    run_id: str,
    plan: ComputePlan,
) -> dict[str, Any]:
    """What identifies the run and what it selected (ids, their hash, the pool's fingerprint, versions)."""
    fixed = selection.ids is not None
    return {
        "run_id": run_id,
        "identity": ident,
        "hashes": {g: identity_hash(ident[g]) for g in ("data", "model", "train", "eval")},
        "command": record.command_line(),
        "selector": spec.name,
        "variant": variant_label(spec, params),
        "selector_params": params,
        "selector_file": spec.source,
        "selector_file_sha256": source_sha256(spec),
        "budget": budget,
        "budget_unit": spec.budget_unit,
        "k": k,
        "seed": cfg.seed,
        "seeds": seeds,
        "data": cfg.data.name,
        "model": cfg.model.name,
        "n_pool": pool.n,
        "n_selected": len(selection.ids) if fixed else k,
        "n_distinct": len(selection.distinct_ids),
        "selection_kind": selection.kind,
        "selected_ids": selection.ids if fixed else None,
        "selected_ids_per_epoch": None if fixed else selection.epochs,
        "selected_sha256": selection.sha256(),
        "pool_fingerprint": pool.fingerprint(),
        "selection_cost_seconds": round(selection.cost_seconds, 4),
        "selection_signals": selection.signals,
        "selection_info": selection.info,
        "compute": {"convention": plan.compute, "epochs": plan.epochs, "max_steps": plan.max_steps},
        "versions": record.package_versions(),
        "git": record.git_state(),
    }


def selection_from_manifest(manifest: dict[str, Any]) -> Selection:
    """The selection an interrupted attempt recorded (so a resume never recomputes it)."""
    if manifest.get("selected_ids") is not None:
        selection = Selection(ids=manifest["selected_ids"])
    else:
        selection = Selection(epochs=manifest["selected_ids_per_epoch"])
    selection.cost_seconds = float(manifest.get("selection_cost_seconds", 0.0))
    selection.signals = manifest.get("selection_signals") or []
    selection.info = manifest.get("selection_info") or {}
    return selection


def record_training(
    outcome: Any, plan: ComputePlan, k: int, batch: int, n_params: int, n_trainable: int
) -> dict[str, Any]:
    per_epoch = -(-k // batch)
    return {
        "compute": plan.compute,
        "steps": outcome.steps,
        "epochs": round(outcome.steps / per_epoch, 4),
        "examples_seen": outcome.examples_seen,
        "tokens_seen": outcome.tokens_seen,
        "response_tokens_seen": outcome.response_tokens_seen,
        "flops": training_flops(n_params, n_trainable, outcome.tokens_seen),
        "n_params": n_params,
        "n_trainable_params": n_trainable,
        "final_loss": outcome.final_loss,
        "resumed_from_step": outcome.resumed_from_step,
        "seconds_total": round(outcome.seconds_total, 3),
        "attempts": outcome.attempts,
    }


def result_meta(manifest: dict[str, Any], run_dir: Path, training: dict[str, Any]) -> dict[str, Any]:
    """The identifying columns of every results.csv row."""
    hashes = manifest["hashes"]
    return {
        "run_id": manifest["run_id"],
        "run_dir": str(run_dir),
        "selector": manifest["selector"],
        "variant": manifest["variant"],
        "selector_params": json.dumps(manifest["selector_params"], sort_keys=True),
        "budget": manifest["budget"],
        "budget_unit": manifest["budget_unit"],
        "k": manifest["k"],
        "seed": manifest["seed"],
        "model": manifest["model"],
        "model_hash": hashes["model"],
        "data": manifest["data"],
        "data_hash": hashes["data"],
        "train_hash": hashes["train"],
        "eval_hash": hashes["eval"],
        "pool_fingerprint": manifest["pool_fingerprint"],
        "n_selected": manifest["n_selected"],
        "train_tokens": training["tokens_seen"],
        "train_steps": training["steps"],
        "train_epochs": training["epochs"],
        "train_flops": training["flops"],
        "compute": training["compute"],
        "selection_seconds": manifest["selection_cost_seconds"],
        "signals_cached": all(s.get("cached", False) for s in manifest["selection_signals"]),
    }


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


def print_summary(manifest: dict[str, Any], results: pd.DataFrame, run_dir: Path) -> None:
    """The end of a run on the terminal: what was selected, the scores, where the time went, the record."""
    diag = manifest["selection_diagnostics"]
    per_task = diag["per_task"]
    unit = " per epoch" if manifest["budget_unit"] == "epoch" else ""
    # a schedule (RS2) draws other examples each epoch: the per-task counts are of the distinct ones it used
    distinct = f"; {diag['n_distinct']} distinct over the run" if unit and "n_distinct" in diag else ""
    print()
    print(
        f"selected {manifest['n_selected']}{unit} of {manifest['n_pool']} examples "
        f"({manifest['variant']}, budget {manifest['budget']}, seed {manifest['seed']}{distinct}): "
        + ", ".join(f"{t} {c}" for t, c in per_task.items())
    )
    if "noisy" in diag:
        print(f"kept {diag['noisy']} noisy, {diag['duplicates']} near-duplicate, {diag['filler']} filler examples")
    table = results.pivot_table(index="task", columns="metric", values="value", sort=False)
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    t = manifest["timings"]
    signals = manifest.get("selection_signals") or []
    detail = ""
    if signals:
        detail = (
            " ("
            + ", ".join(f"{s['name']} {s['seconds']:.0f}s{' cached' if s.get('cached') else ''}" for s in signals)
            + ")"
        )
    tr = manifest["training"]
    print(
        f"time: pool {t['pool_seconds']:.0f}s, selection {manifest['selection_cost_seconds']:.1f}s{detail}, "
        f"training {t['train_seconds']:.0f}s ({tr['steps']} steps), evaluation {t['eval_seconds']:.0f}s"
    )
    print(f"record: {run_dir}")
