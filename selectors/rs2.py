"""RS2: Repeated Sampling of Random Subsets (Okanovic et al., ICLR 2024).

Not a fixed subset: every epoch trains on a fresh random subset of k = round(budget * N) examples, so the
budget is per epoch and the learning-rate schedule spans epochs * ceil(k / batch) steps.

    without replacement (the paper's recommended variant, default):
        shuffle the pool once; epoch e takes the next k examples of that order;
        when fewer than k remain, they are taken and the epoch is filled from a fresh shuffle of the pool
        (skipping the ones just taken), which then continues as the order:
        every example is seen once before any example repeats.
    with replacement:
        every epoch is an independent uniform k-subset (no duplicates within an epoch).
Selection cost is zero: RS2's whole point is that this is hard to beat per unit of compute.
"""

import numpy as np

from harness.params import flag
from harness.selection import Selection, SelectionContext, register


def without_replacement(rng: np.random.Generator, n: int, k: int, epochs: int) -> list[np.ndarray]:
    """Consecutive chunks of k from a shuffled pool, reshuffling when the pool is exhausted."""
    order, pos, out = rng.permutation(n), 0, []
    for _ in range(epochs):
        if pos + k <= n:
            out.append(order[pos : pos + k])
            pos += k
            continue
        rest = order[pos:]
        fresh = rng.permutation(n)
        fresh = fresh[~np.isin(fresh, rest)]  # no example twice within one epoch
        need = k - len(rest)
        out.append(np.concatenate([rest, fresh[:need]]))
        order, pos = np.concatenate([fresh, rest]), need  # the new order: every example once more
    return out


def with_replacement(rng: np.random.Generator, n: int, k: int, epochs: int) -> list[np.ndarray]:
    """An independent uniform k-subset per epoch."""
    return [rng.choice(n, size=k, replace=False) for _ in range(epochs)]


def check(params: dict) -> None:
    flag(params, "replacement")


@register("rs2", budget_unit="epoch", check=check)
def select(ctx: SelectionContext, *, replacement: bool = False) -> Selection:
    """A new random subset of k examples for each of the recipe's epochs."""
    draw = with_replacement if replacement else without_replacement
    epochs = draw(ctx.rng(), ctx.pool.n, ctx.k, ctx.epochs)
    return Selection(
        epochs=[list(ctx.pool.ids[rows]) for rows in epochs],
        info={"variant": "with_replacement" if replacement else "without_replacement"},
    )
