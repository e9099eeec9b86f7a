"""full: the whole pool, the reference row of every comparison (the budget is ignored)."""

from harness.selection import Selection, SelectionContext, register


@register("full", uses_budget=False, exact_k=False)
def select(ctx: SelectionContext) -> Selection:
    """Keep every example, in pool order."""
    return Selection(ids=list(ctx.pool.ids))
