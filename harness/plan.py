"""`python -m harness.plan [overrides]`: what a cell or sweep will cost, before any compute.

Reads the composed config (e.g. `+experiment=bids_llama3_8b`) and the model's config file (local folder or
the local Hugging Face cache; no weights are loaded: the model is built on the meta device to count its
parameters), and prints examples, warm-up and training steps, the gradient store's size on disk, peak
memory estimates, FLOPs and a GPU-hours range, and the Slurm array a sweep would submit. LESS users learn
these by running out of memory or disk; this says them first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.identity import budget_free, override_values

GPUS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "l40s": 362.0, "a10g": 125.0}
"""Dense bf16 peak TFLOP/s per GPU (vendor figures); the estimate assumes 25-50% of it is reached."""

LESS_SELECTORS = ("influence", "bids")

SCORE_PASSES = {"el2n": "losses", "grand": "grad_norms"}
"""The per-example pass each score selector takes over the pool after every warm-up (harness.scores)."""


ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = 34
"""Activation memory per token, layer and hidden unit at 16-bit (Korthikanti et al., 2022, without the attention
score term that fused attention does not store)."""


@dataclass
class ModelSize:
    params: int
    trainable: int
    hidden: int
    layers: int
    vocab: int = 0


WARMUP, PASS, STORE, BASE = "warm-up", "per-example pass", "gradient store", "pretrained stand-in"


@dataclass(frozen=True)
class SignalJob:
    """One signal a cell's selection computes through the signal cache (a warm-up run, a per-example pass over the
    pool, a gradient store), keyed by what keys its cache entry: a sweep pays once per key, as the cache does."""

    kind: str
    key: str
    flops: float
    steps: int = 0
    what: str = ""


SizeOf = Callable[..., tuple[ModelSize, int]]
"""model_size, or a memoised stand-in for it (a sweep sizes each model once)."""


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def compose(overrides: list[str]) -> DictConfig:
    """One cell's config, as `python -m harness` composes it, with Hydra's part (one line of error on bad input)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.cli import explain
    from harness.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:  # Hydra's and OmegaConf's errors: one line
        raise HarnessError(explain(exc)) from None


def model_size(model_cfg: Any, feature_modules: list[str] | None = None) -> tuple[ModelSize, int]:
    """Parameter counts from the model's config alone (meta device: no weights are read or allocated), and the
    number of parameters gradient features are taken over (the trainable ones, or those of `feature_modules`)."""
    from harness.modeling import matching_parameters, meta_model

    model = meta_model(model_cfg)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    featured = trainable
    if feature_modules:
        names = set(matching_parameters(model, feature_modules))
        featured = sum(p.numel() for n, p in model.named_parameters() if n in names)
    config = model.config
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    return ModelSize(params, trainable, hidden, layers, vocab), featured


def cell_k(cfg: DictConfig, budget: float, n_pool: int) -> int:
    """Examples a cell trains on: the whole pool for a selector that ignores the budget (`full`, or a plugin's:
    identity.budget_free, as the run folders have it), else round(budget * N), at least one."""
    if budget_free(str(cfg.selector.name), cfg.get("plugins") or ()):
        return n_pool
    return max(1, round(budget * n_pool))


def warmup_job(
    cfg: DictConfig,
    size: ModelSize,
    tokens_per_example: int,
    *,
    n_rows: int,
    epochs: int,
    seed: Any,
    rows: Any = None,
    model: DictConfig | None = None,
    recipe: dict[str, Any] | None = None,
    schedule_epochs: int | None = None,
    base: dict[str, int] | None = None,
) -> SignalJob:
    """A warm-up run (SignalService.warmup): `epochs` passes over n_rows examples at the recipe's batch, with the
    recipe's values replaced by `recipe`, on `model` (default: the proxy). Keyed as its cache entry is: the model as
    it trains, the data, the recipe, the rows (`rows`, default: the seed's random n_rows), epochs, seed, schedule."""
    from harness.training import recipe_of, training_flops

    gbs = int(cfg.train.global_batch_size)
    steps = epochs * math.ceil(n_rows / gbs)
    train = OmegaConf.to_container(OmegaConf.merge(cfg.train, {"epochs": epochs, **(recipe or {})}), resolve=True)
    key = {
        "model": OmegaConf.to_container(model if model is not None else cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data),
        "recipe": recipe_of(train),
        "rows": rows if rows is not None else n_rows,
        "epochs": epochs,
        "seed": seed,
        "schedule_epochs": schedule_epochs,
    }
    if base is not None:  # started from the pretrained stand-in: another warm-up than one from the model as it is
        key["base"] = base
    flops = training_flops(size.params, size.trainable, steps * gbs * tokens_per_example)
    return SignalJob(WARMUP, _key(key), flops, steps, f"{n_rows:,} examples x {epochs} epoch(s)")


def base_jobs(
    cfg: DictConfig, tokens_per_example: int, base: dict[str, int] | None, size_of: SizeOf | None = None
) -> list[SignalJob]:
    """The testbed's pretrained stand-in that warm-ups start from (SignalService.pretrained_base): the scratch model
    trained `epochs` passes over `examples` generated ones, every parameter, one per pool, model and recipe."""
    if base is None:
        return []
    size = (size_of or model_size)(OmegaConf.merge(cfg.model, {"lora": {"enabled": False}}))[0]
    job = warmup_job(
        cfg, size, tokens_per_example, n_rows=base["examples"], epochs=base["epochs"], seed=None, rows="pretraining"
    )
    return [replace(job, kind=BASE)]


SUBSET = "of what is selected so far"
"""How the plan names a per-example pass over a selection rather than the pool (iterative kMQ's loss pass)."""


def pass_job(
    name: str, warm: SignalJob, size: ModelSize, n_pool: int, tokens_per_example: int, rows: Any = None
) -> SignalJob:
    """A per-example pass over the pool at a warm-up's last checkpoint, or over `rows` only (n_pool of them, keyed
    by `rows`): `losses` (loss and EL2N) and `embeddings` are one forward pass per example (2*P*T); `grad_norms` is a
    forward and backward pass per example with the weight gradients of the trainable parameters, then their norm
    (2*P_trainable)."""
    from harness.training import training_flops

    t = tokens_per_example
    if name == "grad_norms":
        per_example = training_flops(size.params, size.trainable, t) + 2 * size.trainable
    else:
        per_example = 2 * size.params * t
    if rows is None:
        return SignalJob(PASS, _key([warm.key, name]), per_example * n_pool, what=name)
    return SignalJob(PASS, _key([warm.key, name, rows]), per_example * n_pool, what=f"{name} {SUBSET}")


def selection_jobs(
    cfg: DictConfig,
    n_pool: int,
    tokens_per_example: int,
    k: int,
    seed: int,
    cell: Any = None,
    size_of: SizeOf | None = None,
) -> list[SignalJob]:
    """The signals one cell's selection computes (warm-ups, per-example passes, gradient stores), from the selector's
    own warm-up settings: EL2N and GraNd one warm-up per warm-up seed and a pass (losses, gradient norms) over each;
    diversity's RDS+ embeddings over the first of those warm-ups, and for rounds > 1 one warm-up per later round on
    what is selected so far (about k*r/rounds examples: this cell's own, `cell` tells them apart) with a loss pass
    over those examples (cluster_score=selected) or over the pool (cluster_score=pool);
    influence and BIDS their LESS warm-up and gradient store (less_costs). Selectors without signals: none."""
    from harness.scores import SCORE_DEFAULTS, warmup_base, warmup_stream_seed
    from harness.seeding import stage_seeds
    from harness.training import compute_plan

    size_of = size_of or model_size
    name = str(cfg.selector.name)
    selection_seed = stage_seeds(seed, OmegaConf.to_container(cfg.seeds, resolve=True))["selection"]
    if name in LESS_SELECTORS:
        return less_costs(cfg, n_pool, tokens_per_example, bytes_per_weight(cfg), seed, size_of)["jobs"]
    s = OmegaConf.to_container(cfg.selector, resolve=True)
    t = tokens_per_example
    jobs: list[SignalJob] = []
    if name not in SCORE_PASSES and name != "diversity":
        return jobs
    size = size_of(cfg.model)[0]
    base = warmup_base(s)

    def with_base(jobs: list[SignalJob]) -> list[SignalJob]:  # the stand-in is trained only if something warms up
        if not any(j.kind == WARMUP for j in jobs):
            return jobs
        return base_jobs(cfg, t, base, size_of) + jobs

    if name in SCORE_PASSES:
        p = {**SCORE_DEFAULTS, **s}
        epochs = int(p["warmup_epochs"])
        span = compute_plan(cfg.train, k, n_pool).epochs if p["warmup_schedule"] == "run" else None
        n = max(1, round(float(p["warmup_fraction"]) * n_pool))
        for i in range(int(p["warmup_seeds"])):
            seed_i = warmup_stream_seed(selection_seed, i)
            span_i = span if span is not None and span > epochs else None
            warm = warmup_job(cfg, size, t, n_rows=n, epochs=epochs, seed=seed_i, schedule_epochs=span_i, base=base)
            jobs += [warm, pass_job(SCORE_PASSES[name], warm, size, n_pool, t)]
        return with_base(jobs)
    if s.get("embedding", "rds") == "rds":
        n = max(1, round(float(s.get("warmup_fraction", 1.0)) * n_pool))
        seed_0 = warmup_stream_seed(selection_seed, 0)  # shared with EL2N's and GraNd's first warm-up
        warm = warmup_job(cfg, size, t, n_rows=n, epochs=int(s.get("warmup_epochs", 1)), seed=seed_0, base=base)
        jobs += [warm, pass_job("embeddings", warm, size, n_pool, t)]
    rounds = int(s.get("rounds", 1))
    for r in range(1, rounds):
        rows = ["selected so far", cell, r]
        chosen = max(1, k * r // rounds)
        warm = warmup_job(
            cfg, size, t, n_rows=chosen, epochs=int(s.get("round_epochs", 1)), seed=None, rows=rows, base=base
        )
        # the losses of the examples the round's model trained on (cluster_score=selected), or of the whole pool
        on_selected = s.get("cluster_score", "selected") == "selected"
        n_scored, keyed = (chosen, rows) if on_selected else (n_pool, None)
        jobs += [warm, pass_job("losses", warm, size, n_scored, t, rows=keyed)]
    return with_base(jobs)


def jobs_line(jobs: list[SignalJob]) -> str | None:
    """'selection signals: ...' for the plan of one cell: its warm-ups and per-example passes, with their FLOPs."""
    warmups = [j for j in jobs if j.kind == WARMUP]
    passes = [j for j in jobs if j.kind == PASS]
    if not jobs:
        return None
    stand_in = [j for j in jobs if j.kind == BASE]
    parts = [f"the pretrained stand-in, {j.what} = {j.steps:,} steps, {j.flops:.2e} FLOPs" for j in stand_in]
    if warmups:
        sizes = sorted({j.what for j in warmups})
        parts.append(
            f"{len(warmups)} warm-up(s) of {' / '.join(sizes)} = {sum(j.steps for j in warmups):,} steps, "
            f"{sum(j.flops for j in warmups):.2e} FLOPs"
        )
    if passes:
        names = sorted({j.what for j in passes})
        over = "" if any(j.what.endswith(SUBSET) for j in passes) else " over the pool"
        parts.append(
            f"{len(passes)} per-example pass(es){over} ({', '.join(names)}), {sum(j.flops for j in passes):.2e} FLOPs"
        )
    return "selection signals: " + "; ".join(parts) + " (a sweep's total counts each one its cells share once)"


def warmup_model(cfg: DictConfig) -> DictConfig:
    """The model config the LESS warm-up trains (and takes gradient features of): the proxy with the selector's
    LoRA settings (lora_r, lora_alpha, lora_dropout, lora_modules), or every parameter with warmup_mode=full;
    not the training recipe's model.lora, which only the final training uses."""
    from harness.signals.less import DEFAULTS, warmup_lora

    lora = warmup_lora({**DEFAULTS, **OmegaConf.to_container(cfg.selector, resolve=True)})
    model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    model.lora = OmegaConf.merge(model.lora, {"enabled": True, **lora})
    return model


def validation_count(cfg: DictConfig) -> tuple[int, str]:
    """Validation examples the gradient store holds, and where the number comes from: data.validation_tasks
    (n per benchmark, LESS's 285 + 81 + 9), the lines of data.validation_path, the testbed's per-task count, or,
    failing those, the 50 per evaluated task that BIDS uses (an assumption the plan says)."""
    data = cfg.data
    wanted = dict(data.get("validation_tasks") or {})
    if wanted:
        return sum(int(n) for n in wanted.values()), "data.validation_tasks"
    if data.source == "testbed":
        return int(data.n_validation_per_task) * len(data.task_shares), "the testbed's per-task count"
    path = data.get("validation_path")
    if path and Path(str(path)).expanduser().is_file():
        with open(Path(str(path)).expanduser(), encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip()), "data.validation_path"
    return 50 * max(1, len(cfg.eval.tasks)), "assumed: 50 per evaluated task"


def activation_bytes(size: ModelSize, batch: int, seq: int, weight_bytes: int) -> float:
    """Activations kept for the backward pass of a batch of `batch` sequences of `seq` tokens: the layers'
    (34 bytes per token, layer and hidden unit at 16-bit) plus the logits (in the model's dtype, then the float32
    copy and log-softmax the loss keeps)."""
    layers = ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN * batch * seq * size.hidden * size.layers * weight_bytes / 2
    return layers + batch * seq * size.vocab * (weight_bytes + 8)


def pool_size(cfg: DictConfig, given: int | None) -> int:
    """Examples in the pool: given, the testbed's setting, the lines of a JSONL file, or a cached dataset's info."""
    if given:
        return given
    if cfg.data.source == "testbed":
        return int(cfg.data.n_pool)
    if cfg.data.source == "jsonl":
        path = Path(cfg.data.path).expanduser()
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                return sum(1 for line in fh if line.strip())
    raise HarnessError(
        f"the size of pool '{cfg.data.name}' is not known without loading it; pass --n-pool N "
        "(e.g. 288000 for UltraInteract-SFT)"
    )


def swept(cells: list[list[str]]) -> list[dict[str, str]]:
    """Each cell's swept values (the keys whose value differs between cells), as key -> value."""
    from harness.sweep import varying

    shown = varying(cells) if len(cells) > 1 else [[] for _ in cells]
    return [dict(o.split("=", 1) if "=" in o else (o, "") for o in cell) for cell in shown]


def count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """Bytes in binary units, named as such: 2**30 bytes -> '1.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def less_costs(
    cfg: DictConfig,
    n_pool: int,
    tokens_per_example: int,
    weight_bytes: int,
    seed: int | None = None,
    size_of: SizeOf | None = None,
) -> dict[str, Any]:
    """Warm-up and gradient-feature costs of an influence or BIDS cell: FLOPs, the store, the feature pass's memory,
    the lines that say them, and the two jobs (warm-up, gradient store) under the keys by which a sweep shares them
    (one warm-up per seed and settings; `seed`: the cell's, default cfg.seed)."""
    from harness.scores import warmup_base, warmup_stream_seed
    from harness.seeding import stage_seeds
    from harness.signals.less import DEFAULTS
    from harness.training import training_flops

    s = cfg.selector
    modules = OmegaConf.select(cfg, "selector.feature_modules")
    model = warmup_model(cfg)
    warm, featured = (size_of or model_size)(model, list(modules) if modules else None)
    warm_n = max(1, round(float(s.warmup_fraction) * n_pool))
    settings = {**DEFAULTS, **OmegaConf.to_container(s, resolve=True)}
    seed = int(cfg.seed) if seed is None else int(seed)
    selection_seed = stage_seeds(seed, OmegaConf.to_container(cfg.seeds, resolve=True))["selection"]
    warm_seed = (
        settings["warmup_seed"] if settings["warmup_seed"] is not None else warmup_stream_seed(selection_seed, 0)
    )
    recipe = {"lr": s.warmup_lr, "scheduler": s.warmup_scheduler, "warmup_ratio": s.warmup_ratio}
    base = warmup_base(settings)
    base_job = base_jobs(cfg, tokens_per_example, base, size_of)
    warm_job = warmup_job(
        cfg,
        warm,
        tokens_per_example,
        n_rows=warm_n,
        epochs=int(s.warmup_epochs),
        seed=warm_seed,
        model=model,
        recipe=recipe,
        base=base,
    )
    warm_steps, warm_flops = warm_job.steps, warm_job.flops
    n_val, val_from = validation_count(cfg)
    n_feat = (n_pool + n_val) * int(s.warmup_epochs)
    item = 2 if s.store_dtype == "float16" else 4
    store = (n_pool + n_val) * int(s.proj_dim) * int(s.warmup_epochs) * item
    # per example and checkpoint: forward and backward (weight gradients of the featured parameters only), then
    # the projection, a [P] x [P, d] product
    grad_flops = (training_flops(warm.params, featured, tokens_per_example) + 2 * featured * int(s.proj_dim)) * n_feat
    batch = int(cfg.eval.batch_size)  # the signal service's batch (harness.pipeline)
    memory = (
        warm.params * weight_bytes
        + batch * featured * 4  # the per-example gradients, float32
        + activation_bytes(warm, batch, int(cfg.model.max_length), weight_bytes)
        + 128 * 2**20  # one block of the projection matrix
    )
    what = "LoRA adapters" if s.warmup_mode == "lora" else "parameters"
    lines = [
        *(f"pretrained stand-in: {j.what} = {j.steps:,} steps, {j.flops:.2e} FLOPs" for j in base_job),
        f"warm-up: {warm_n:,} examples x {s.warmup_epochs} epochs = {warm_steps:,} steps, {warm_flops:.2e} FLOPs "
        f"({count(warm.trainable)} trainable {what})",
        f"gradient store: {n_pool + n_val:,} examples ({n_val:,} validation: {val_from}) x d={s.proj_dim} x "
        f"{s.warmup_epochs} checkpoints x {item} bytes = {human_bytes(store)} on disk",
        f"gradient features: {grad_flops:.2e} FLOPs (per example: forward+backward, then 2*P*d for the "
        f"projection over {featured / 1e6:.2f}M parameters); influence matrix {human_bytes(n_pool * n_val * 4)}",
    ]
    store_keys = ("proj_dim", "projection", "proj_seed", "adam_formula", "store_dtype", "feature_modules")
    store_key = _key([warm_job.key, {k: settings.get(k) for k in store_keys}])
    return {
        "warm_flops": warm_flops + sum(j.flops for j in base_job),
        "grad_flops": grad_flops,
        "memory": memory,
        "batch": batch,
        "lines": lines,
        "jobs": [*base_job, warm_job, SignalJob(STORE, store_key, grad_flops)],
    }


def estimate(cfg: DictConfig, n_pool: int, tokens_per_example: int, budgets: list[float]) -> list[str]:
    """The lines of the plan for one cell's config at each of `budgets`."""
    from harness.training import compute_plan, training_flops

    size, _ = model_size(cfg.model)
    weight_bytes = bytes_per_weight(cfg)
    seq = int(cfg.model.max_length)
    lines = [
        f"model: {cfg.model.name} ({count(size.params)} parameters, {count(size.trainable)} trainable"
        f"{' LoRA' if cfg.model.lora.enabled else ''}), pool: {cfg.data.name} ({n_pool:,} examples, "
        f"~{tokens_per_example} tokens each assumed)"
    ]
    gbs = int(cfg.train.global_batch_size)
    for budget in budgets:
        k = cell_k(cfg, budget, n_pool)
        plan = compute_plan(cfg.train, k, n_pool)
        flops = training_flops(size.params, size.trainable, plan.steps * gbs * tokens_per_example)
        lines.append(
            f"budget {budget:g}: k = {k:,} examples, {plan.steps:,} training steps ({plan.epochs} epochs of "
            f"{math.ceil(k / gbs):,} steps, batch {gbs}), {flops:.2e} training FLOPs"
        )
    less = less_costs(cfg, n_pool, tokens_per_example, weight_bytes) if cfg.selector.name in LESS_SELECTORS else None
    if less:
        lines += less["lines"]
    else:  # the warm-ups and passes of EL2N, GraNd and diversity, at the first budget
        signals = jobs_line(selection_jobs(cfg, n_pool, tokens_per_example, cell_k(cfg, budgets[0], n_pool), cfg.seed))
        lines += [signals] if signals else []
    micro = int(cfg.train.micro_batch_size)
    act = activation_bytes(size, micro, seq, weight_bytes)
    train_mem = size.params * weight_bytes + size.trainable * (4 + 4 + 4 + 4) + act
    weights = human_bytes(size.params * weight_bytes)
    line = (
        f"peak GPU memory, estimated: training {human_bytes(train_mem)} (weights {weights}, trainable fp32 + Adam "
        f"{human_bytes(size.trainable * 16)}, activations and logits at micro-batch {micro} x {seq} tokens "
        f"{human_bytes(act)})"
    )
    if less:
        line += (
            f"; gradient features {human_bytes(less['memory'])} at {less['batch']} examples per batch "
            "(eval.batch_size; lower it where this does not fit)"
        )
    lines.append(line)
    return lines


def bytes_per_weight(cfg: DictConfig) -> int:
    return 2 if str(cfg.model.dtype) in ("bfloat16", "bf16", "float16", "auto") else 4


def cell_config(overrides: list[str]) -> DictConfig:
    """One cell's validated config (without Hydra's part), as the run composes it."""
    from harness.config import validate

    cfg = compose(overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    return validate(cfg)


def sweep_flops(cells: list[list[str]], first: DictConfig, n_pool: int, tokens_per_example: int) -> tuple[float, str]:
    """FLOPs of every cell of the sweep: one training per cell (`full` once per seed: its other budgets reuse the
    record), and each distinct warm-up, per-example pass and gradient store of the selections (selection_jobs) once,
    as the signal cache shares them; with what was counted. Cells that differ only in budget and seed share a
    config."""
    from harness.config import parse_budget
    from harness.training import compute_plan, training_flops

    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for cell in cells:
        key = tuple(o for o in cell if not {"budget", "seed"} & set(override_values([o])))
        groups.setdefault(key, []).append(cell)
    sizes: dict[str, tuple[ModelSize, int]] = {}

    def size_of(model_cfg: Any, feature_modules: list[str] | None = None) -> tuple[ModelSize, int]:
        key = _key([OmegaConf.to_container(model_cfg, resolve=True), feature_modules])
        if key not in sizes:
            sizes[key] = model_size(model_cfg, feature_modules)
        return sizes[key]

    trained: set[str] = set()
    signals: dict[str, dict[str, float]] = {WARMUP: {}, PASS: {}, STORE: {}, BASE: {}}
    total = 0.0
    for i, members in enumerate(groups.values()):
        cfg = first if i == 0 else cell_config(members[0])
        size = size_of(cfg.model)[0]
        for cell in members:
            values = override_values(cell)
            seed = int(values.get("seed") or cfg.seed)
            budget = parse_budget(values.get("budget") or cfg.budget)
            k = cell_k(cfg, budget, n_pool)
            run = json.dumps([i, seed, k])
            if run not in trained:
                trained.add(run)
                plan = compute_plan(cfg.train, k, n_pool)
                total += training_flops(
                    size.params, size.trainable, plan.steps * cfg.train.global_batch_size * (tokens_per_example)
                )
            for job in selection_jobs(cfg, n_pool, tokens_per_example, k, seed, cell, size_of):
                signals[job.kind][job.key] = job.flops
    total += sum(sum(jobs.values()) for jobs in signals.values())
    what = f"{len(trained)} training run(s), {len(signals[WARMUP])} warm-up(s), {len(signals[STORE])} gradient store(s)"
    if signals[PASS]:
        what += f", {len(signals[PASS])} per-example pass(es)"
    if signals[BASE]:
        what += f", {len(signals[BASE])} pretrained stand-in(s)"
    return total, what


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--n-pool", type=int, default=None, help="examples in the pool (when it is not local)")
    parser.add_argument("--tokens-per-example", type=int, default=None, help="default: half of model.max_length")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=bids_llama3_8b")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    try:
        from harness.config import parse_budget
        from harness.sweep_lines import planned

        full, hydra_cfg = planned(args.overrides)  # the cells exactly as the multirun (and sweep_lines) expands them
        cfg = cell_config(full[0])  # the first cell's config (the sweep's values applied, as the run composes it)
        cells = swept(full)
        budgets = sorted({parse_budget(c.get("budget", cfg.budget)) for c in cells})
        n_pool = pool_size(cfg, args.n_pool)
        tokens = args.tokens_per_example or int(cfg.model.max_length) // 2
        lines = estimate(cfg, n_pool, tokens, budgets)
        total, what = sweep_flops(full, cfg, n_pool, tokens)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    peak = GPUS[args.gpu] * 1e12
    hours = [total / (peak * mfu) / 3600 for mfu in (0.5, 0.25)]
    lines.append(
        f"total {total:.2e} FLOPs ({what}): {hours[0]:.2g}-{hours[1]:.2g} GPU-hours on one {args.gpu.upper()} "
        "(25-50% MFU)"
    )
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_") or "")
    slurm = "slurm" in launcher.lower()
    where = f"one Slurm job array: --array=0-{len(cells) - 1}" if slurm else "locally, one cell after another"
    lines.append(f"sweep: {len(cells)} cell(s), {where}")
    for cell in [c for c in cells if c][:12]:
        lines.append("  " + " ".join(f"{k}={v}" for k, v in cell.items()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
