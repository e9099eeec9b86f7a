"""random: a uniform sample of k = round(budget * N) examples without replacement, seeded."""

from harness.selection import Selection, SelectionContext, register


@register("random")
def select(ctx: SelectionContext) -> Selection:
    """Every subset of size k is equally likely."""
    chosen = ctx.rng().choice(ctx.pool.n, size=ctx.k, replace=False)
    return Selection(ids=list(ctx.pool.ids[chosen]))
