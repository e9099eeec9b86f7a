"""GraNd (Paul et al., "Deep Learning on a Data Diet", 2021).

    for each of `warmup_seeds` independent warm-up runs (the proxy trained `warmup_epochs` on the pool):
        GraNd(x) = || grad_theta loss(x) ||_2   (loss: mean over x's response tokens; theta: trainable parameters;
                                                 per-example gradients computed in batches, never one at a time)
    score(x) = mean of GraNd(x) over the warm-up runs
    keep k examples by the keep rule (drop_top, the NLP recipe and default; hardest; easiest), as for EL2N.
The vision paper also scores GraNd at initialisation; here scores come after at least one warm-up epoch, as the
NLP follow-up advises, and share their warm-ups with EL2N.
"""

import pandas as pd

from harness.scores import averaged_over_warmups, check_keep, check_warmup
from harness.selection import Selection, SelectionContext, keep_by_score, register


def check(params: dict) -> None:
    check_warmup(params)
    check_keep(params)


@register("grand", check=check)
def select(
    ctx: SelectionContext,
    *,
    warmup_epochs: int = 1,
    warmup_seeds: int = 3,
    warmup_fraction: float = 1.0,
    keep: str = "drop_top",
    offset: float = 0.05,
) -> Selection:
    """Average per-example gradient norms over warm-up runs, then keep k by the keep rule."""
    scores = averaged_over_warmups(ctx, warmup_seeds, warmup_epochs, warmup_fraction, ctx.signals.grad_norms)
    rows = keep_by_score(scores, ctx.k, keep, offset)
    return Selection(ids=list(ctx.pool.ids[rows]), scores=pd.Series(scores, index=ctx.pool.ids))
