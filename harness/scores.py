"""What score-based selectors share: warm-up settings checked up front, and scores averaged over warm-up seeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.params import number, whole
from harness.seeding import stream_seed
from harness.selection import KEEP_RULES, Selection, SelectionContext, keep_by_score

BASE_DEFAULTS: dict[str, Any] = {"warmup_base": "model", "base_examples": 8000, "base_epochs": 10}
"""Where every warm-up of a selector starts: `model`, the model as configured (a hub model's checkpoint, a scratch
model's random init), or `pretrained`, the testbed's stand-in for a pretrained checkpoint: the scratch model first
trained `base_epochs` passes over `base_examples` clean generated examples disjoint from the pool (one per pool,
model and recipe, shared by every selector and seed; see SignalService.pretrained_base)."""

WARMUP_BASES = ("model", "pretrained")

SCORE_DEFAULTS: dict[str, Any] = {
    "warmup_epochs": 1,
    "warmup_seeds": 3,
    "warmup_fraction": 1.0,
    "keep": "drop_top",
    "offset": 0.05,
    "warmup_schedule": "warmup",
    **BASE_DEFAULTS,
}
"""The settings EL2N and GraNd share (see selectors/el2n.py for where the defaults come from)."""


WARMUP_SCHEDULES = ("warmup", "run")
"""warmup: the warm-up's own schedule, annealed within its epochs | run: the first epochs of a run over the pool
whose schedule spans the recipe's epochs (where the data-diet papers take their scores)."""


def check_scores(params: dict[str, Any]) -> None:
    check_warmup(params)
    if params.get("warmup_schedule", "warmup") not in WARMUP_SCHEDULES:
        raise HarnessError(
            f"unknown warmup_schedule {params.get('warmup_schedule')!r}; use one of {list(WARMUP_SCHEDULES)}"
        )
    check_keep(params)


def select_by_score(ctx: SelectionContext, score: Callable[[Any], np.ndarray], **params: Any) -> Selection:
    """Average `score(warm-up)` over the warm-up seeds, keep k by the keep rule, and return the scores too."""
    p = {**SCORE_DEFAULTS, **params}
    span = ctx.epochs if p["warmup_schedule"] == "run" else None
    scores = averaged_over_warmups(
        ctx, p["warmup_seeds"], p["warmup_epochs"], p["warmup_fraction"], score, span, warmup_base(p)
    )
    rows = keep_by_score(scores, ctx.k, p["keep"], p["offset"])
    return Selection(ids=list(ctx.pool.ids[rows]), scores=pd.Series(scores, index=ctx.pool.ids))


def check_warmup(params: dict[str, Any], seeds_key: str | None = "warmup_seeds") -> None:
    """One-line errors for warm-up settings that cannot work."""
    if "warmup_epochs" in params:
        whole(params, "warmup_epochs", 1, "scores are unreliable before one epoch")
    if seeds_key and seeds_key in params:
        whole(params, seeds_key, 1, "scores are averaged over warm-up runs")
    if "warmup_fraction" in params:
        number(params, "warmup_fraction", 0, 1, low_open=True)
    check_base(params)


def check_base(params: dict[str, Any]) -> None:
    if params.get("warmup_base", "model") not in WARMUP_BASES:
        raise HarnessError(f"unknown warmup_base {params.get('warmup_base')!r}; use one of {list(WARMUP_BASES)}")
    if params.get("warmup_base") == "pretrained":
        whole(params, "base_examples", 1, "the pretrained stand-in's corpus")
        whole(params, "base_epochs", 1, "passes of its pretraining")


def warmup_base(params: dict[str, Any]) -> dict[str, int] | None:
    """What a selector's warm-ups start from: the pretrained stand-in's settings, or None (the model as configured)."""
    p = {**BASE_DEFAULTS, **params}
    if p["warmup_base"] == "model":
        return None
    return {"examples": int(p["base_examples"]), "epochs": int(p["base_epochs"])}


def check_keep(params: dict[str, Any]) -> None:
    if params.get("keep") not in KEEP_RULES:
        raise HarnessError(f"unknown keep rule {params.get('keep')!r}; use one of {list(KEEP_RULES)}")
    if "offset" in params:
        number(params, "offset", 0, 1, high_open=True, why="the share of the highest scores dropped")


def warmup_seed(ctx: SelectionContext, i: int) -> int:
    """The i-th warm-up seed of a cell: shared by every selector and budget of the same selection seed."""
    return warmup_stream_seed(ctx.seed, i)


def warmup_stream_seed(selection_seed: int, i: int) -> int:
    """The i-th warm-up seed of a selection seed (what warmup_seed gives a cell; harness.plan keys warm-ups by it)."""
    return stream_seed(selection_seed, f"warmup-{i}")


def averaged_over_warmups(
    ctx: SelectionContext,
    seeds: int,
    epochs: int,
    fraction: float,
    score: Callable[[Any], np.ndarray],
    schedule_epochs: int | None = None,
    base: dict[str, int] | None = None,
) -> np.ndarray:
    """Mean over `seeds` independent warm-up runs of `score(warmup)` (each warm-up cached and shared); with
    `schedule_epochs` each warm-up is the first `epochs` of a run whose schedule spans that many."""
    total = np.zeros(ctx.pool.n, dtype=np.float64)
    for i in range(seeds):
        warm = ctx.signals.warmup(
            epochs=epochs, seed=warmup_seed(ctx, i), fraction=fraction, schedule_epochs=schedule_epochs, base=base
        )
        total += np.asarray(score(warm), dtype=np.float64)
    return total / seeds
