"""What score-based selectors share: warm-up settings checked up front, and scores averaged over warm-up seeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.seeding import stream_seed
from harness.selection import KEEP_RULES, SelectionContext


def check_warmup(params: dict[str, Any], seeds_key: str | None = "warmup_seeds") -> None:
    """One-line errors for warm-up settings that cannot work."""
    if params.get("warmup_epochs", 1) < 1:
        raise HarnessError(
            f"warmup_epochs must be at least 1 (scores are unreliable before one epoch), got {params['warmup_epochs']}"
        )
    if seeds_key and params.get(seeds_key, 1) < 1:
        raise HarnessError(f"{seeds_key} must be at least 1 (scores are averaged over warm-up runs), got 0")
    fraction = params.get("warmup_fraction", 1.0)
    if not 0 < fraction <= 1:
        raise HarnessError(f"warmup_fraction must be in (0, 1], got {fraction}")


def check_keep(params: dict[str, Any]) -> None:
    if params.get("keep") not in KEEP_RULES:
        raise HarnessError(f"unknown keep rule {params.get('keep')!r}; use one of {list(KEEP_RULES)}")
    if not 0 <= params.get("offset", 0.0) < 1:
        raise HarnessError(
            f"offset must be in [0, 1) (the share of the highest scores dropped), got {params['offset']}"
        )


def warmup_seed(ctx: SelectionContext, i: int) -> int:
    """The i-th warm-up seed of a cell: shared by every selector and budget of the same selection seed."""
    return stream_seed(ctx.seed, f"warmup-{i}")


def averaged_over_warmups(
    ctx: SelectionContext, seeds: int, epochs: int, fraction: float, score: Callable[[Any], np.ndarray]
) -> np.ndarray:
    """Mean over `seeds` independent warm-up runs of `score(warmup)` (each warm-up cached and shared)."""
    total = np.zeros(ctx.pool.n, dtype=np.float64)
    for i in range(seeds):
        warm = ctx.signals.warmup(epochs=epochs, seed=warmup_seed(ctx, i), fraction=fraction)
        total += np.asarray(score(warm), dtype=np.float64)
    return total / seeds
