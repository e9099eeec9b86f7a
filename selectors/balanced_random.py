"""balanced_random: an equal quota of the budget per task, uniform within each task.

A task smaller than its quota is kept whole and the quota it leaves is shared among the
other tasks, again equally, until k examples are chosen (water-filling).
"""

import numpy as np

from harness.selection import Selection, SelectionContext, register


def equal_quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """Per-group counts summing to min(k, sum(sizes)), as equal as the group sizes allow."""
    quota = np.zeros(len(sizes), dtype=int)
    remaining = min(k, int(sizes.sum()))
    while remaining > 0:
        open_groups = np.flatnonzero(quota < sizes)
        share, extra = divmod(remaining, len(open_groups))
        for rank, g in enumerate(open_groups):
            take = min(share + (1 if rank < extra else 0), sizes[g] - quota[g])
            quota[g] += take
            remaining -= take
    return quota


@register("balanced_random")
def select(ctx: SelectionContext) -> Selection:
    """Equal quota per task (redistributing what small tasks cannot fill), random within a task."""
    rng = ctx.rng()
    tasks = ctx.pool.tasks
    names = np.unique(tasks)
    members = [np.flatnonzero(tasks == t) for t in names]
    quotas = equal_quotas(np.array([len(m) for m in members]), ctx.k)
    chosen = np.concatenate([rng.choice(m, size=q, replace=False) for m, q in zip(members, quotas)])
    return Selection(ids=list(ctx.pool.ids[np.sort(chosen)]))
