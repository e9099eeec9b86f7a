"""balanced_random: an equal quota of the budget per task, uniform within each task.

A task smaller than its quota is kept whole and the quota it leaves is shared among the
other tasks, again equally, until k examples are chosen (water-filling). When the tasks do
not divide k evenly, the tasks that take one more are drawn uniformly (a seeded stream of
their own, so the draws within each task are those of the even case), never by task name.
"""

import numpy as np

from harness.selection import Selection, SelectionContext, equal_quotas, register


@register("balanced_random")
def select(ctx: SelectionContext) -> Selection:
    """Equal quota per task (redistributing what small tasks cannot fill, the remainder to random tasks), random
    within a task."""
    rng = ctx.rng()
    tasks = ctx.pool.tasks
    names = np.unique(tasks)
    members = [np.flatnonzero(tasks == t) for t in names]
    quotas = equal_quotas(np.array([len(m) for m in members]), ctx.k, ctx.rng("quota"))
    chosen = np.concatenate([rng.choice(m, size=q, replace=False) for m, q in zip(members, quotas)])
    return Selection(ids=list(ctx.pool.ids[np.sort(chosen)]))
