"""LESS influence as the `influence` and `bids` selectors share it (Xia et al., ICML 2024):

    1. warm-up: train the proxy with LoRA (r=128, alpha=512, dropout 0.1 on q/k/v/o) for 4 epochs on a random 5%
       of the pool, lr 2e-5, linear schedule with 3% warm-up; keep a checkpoint with Adam's state every epoch
    2. for every checkpoint: training examples -> Adam update direction from the checkpoint's moments, validation
       examples -> plain gradients; trainable (LoRA) parameters only; random projection to d = 8192 (Rademacher);
       L2-normalise
    3. influence[i, j] = sum over checkpoints of (average lr of that epoch, renormalised) * cos(train_i, val_j)

The matrix comes from the signal service, cached, so every aggregation of `influence` and `bids` in a sweep
reuse one warm-up, one gradient store and one matrix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.params import names, number, whole
from harness.scores import BASE_DEFAULTS, check_base, warmup_base, warmup_seed
from harness.selection import SelectionContext

DEFAULTS: dict[str, Any] = {
    "warmup_mode": "lora",
    "warmup_fraction": 0.05,
    "warmup_epochs": 4,
    "warmup_lr": 2e-5,
    "warmup_scheduler": "linear",
    "warmup_ratio": 0.03,
    "warmup_seed": None,
    "lora_r": 128,
    "lora_alpha": 512,
    "lora_dropout": 0.1,
    "lora_modules": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "feature_modules": None,
    "proj_dim": 8192,
    "projection": "rademacher",
    "proj_seed": 0,
    "adam_formula": "paper",
    "store_dtype": "float16",
    **BASE_DEFAULTS,
}
"""The paper's settings (the keyword defaults of both selectors), and where the warm-up starts (harness.scores)."""

CHOICES = {
    "warmup_mode": ("lora", "full"),
    "warmup_scheduler": ("linear", "cosine", "constant_with_warmup"),
    "projection": ("rademacher", "sparse"),
    "adam_formula": ("paper", "authors"),
    "store_dtype": ("float16", "float32"),
}


def warmup_lora(params: dict[str, Any]) -> dict[str, Any]:
    """The LoRA the warm-up trains (the selector's lora_r, lora_alpha, lora_dropout, lora_modules), or
    {"enabled": False} for warmup_mode=full: every parameter trains, whatever the model's own LoRA setting."""
    if params["warmup_mode"] != "lora":
        return {"enabled": False}
    return {
        "r": params["lora_r"],
        "alpha": params["lora_alpha"],
        "dropout": params["lora_dropout"],
        "target_modules": list(params["lora_modules"]),
    }


def check(params: dict[str, Any]) -> None:
    """One-line errors for settings that cannot work (before any data is loaded)."""
    for key, allowed in CHOICES.items():
        if params[key] not in allowed:
            raise HarnessError(f"{key} must be one of {list(allowed)}, got {params[key]!r}")
    if isinstance(params["proj_dim"], bool) or not isinstance(params["proj_dim"], int) or params["proj_dim"] < 1:
        raise HarnessError(f"proj_dim must be a positive integer (the paper uses 8192), got {params['proj_dim']!r}")
    whole(params, "warmup_epochs", 1, "one checkpoint per epoch")
    whole(params, "proj_seed", 0)
    if params["warmup_seed"] is not None:
        whole(params, "warmup_seed", 0, "or null: derived from the cell's seed")
    number(params, "warmup_fraction", 0, 1, low_open=True)
    number(params, "warmup_lr", 0, math.inf, low_open=True)
    number(params, "warmup_ratio", 0, 1, high_open=True)
    names(params, "feature_modules", allow_none=True)
    check_base(params)
    if params["warmup_mode"] == "lora":
        whole(params, "lora_r", 1)
        number(params, "lora_alpha", 0, math.inf, low_open=True)
        number(params, "lora_dropout", 0, 1, high_open=True)
        if not names(params, "lora_modules"):
            raise HarnessError("warmup_mode=lora needs at least one module in lora_modules, e.g. [q_proj,v_proj]")


def _module_of(name: str) -> str:
    """The module a parameter belongs to, by its last name: q_proj for ...q_proj.weight and for the LoRA
    adapter ...q_proj.lora_A.default.weight."""
    parts = name.split(".")
    for adapter in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
        if adapter in parts:
            return parts[parts.index(adapter) - 1]
    return parts[-2] if len(parts) > 1 else parts[0]


def influence_matrix(ctx: SelectionContext, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The N x |V| influence matrix for these settings over the target tasks' validation examples, and the task
    of each column."""
    p = {**DEFAULTS, **params}
    validation = ctx.pool.validation
    if validation is None or validation.empty:
        raise HarnessError(
            "influence needs validation examples per target task and the pool has none; "
            "give the pool validation examples (data.validation_path / data.validation_split)"
        )
    have = set(validation["task"])
    missing = [t for t in ctx.target_tasks if t not in have]
    if missing:
        raise HarnessError(
            f"influence needs validation examples for every target task; none for {missing[0]!r}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} (add them, or evaluate other tasks)"
        )
    lora = warmup_lora(p)
    if p["feature_modules"]:  # checked before the warm-up, not after it
        trained = ctx.signals.trainable_names(lora)
        if not any(m in name for name in trained for m in p["feature_modules"]):
            examples = sorted({_module_of(name) for name in trained})
            raise HarnessError(
                f"feature_modules {list(p['feature_modules'])} match no parameter the warm-up trains; "
                f"name some of {examples} (or feature_modules=null for all)"
            )
    recipe = {"lr": p["warmup_lr"], "scheduler": p["warmup_scheduler"], "warmup_ratio": p["warmup_ratio"]}
    seed = p["warmup_seed"] if p["warmup_seed"] is not None else warmup_seed(ctx, 0)
    warm = ctx.signals.warmup(
        epochs=p["warmup_epochs"],
        seed=seed,
        fraction=p["warmup_fraction"],
        recipe=recipe,
        lora=lora,
        base=warmup_base(p),
    )
    settings = {
        "proj_dim": p["proj_dim"],
        "projection": p["projection"],
        "proj_seed": p["proj_seed"],
        "adam_formula": p["adam_formula"],
        "store_dtype": p["store_dtype"],
        "feature_modules": list(p["feature_modules"]) if p["feature_modules"] else None,
    }
    matrix, tasks = ctx.signals.influence(warm, settings)
    # the cached matrix covers every validation example; selection targets the evaluated tasks only (LESS is
    # targeted: a task that is not evaluated has no say in task_max, instance_max, sum or BIDS's balance)
    targeted = np.isin(tasks, list(ctx.target_tasks))
    if not targeted.all():
        matrix, tasks = np.asarray(matrix)[:, targeted], tasks[targeted]
    return matrix, tasks
