"""EL2N (Paul et al., "Deep Learning on a Data Diet", 2021; Fayyaz et al., "BERT on a Data Diet", 2022).

    for each of `warmup_seeds` independent warm-up runs (the proxy trained `warmup_epochs` on the pool):
        EL2N(x) = mean over the response tokens t of x of || softmax(f(x)_t) - onehot(y_t) ||_2
    score(x) = mean of EL2N(x) over the warm-up runs
    keep k examples by the keep rule:
        drop_top (the NLP recipe, default for text): skip the highest `offset` share of the pool (mostly noisy or
                 mislabelled), keep the next k highest
        hardest  (the vision recipe): the k highest
        easiest: the k lowest
Defaults: 3 warm-up seeds (the vision paper uses 10 for images; 3 keeps the testbed fast), 1 warm-up epoch (the
NLP paper finds scores unreliable before one epoch; the vision paper scores at 10% of training, 1 of our 10
epochs), offset 0.05 (our choice: about the testbed's planted noise rate; the papers tune it).
"""

import pandas as pd

from harness.scores import averaged_over_warmups, check_keep, check_warmup
from harness.selection import Selection, SelectionContext, keep_by_score, register


def check(params: dict) -> None:
    check_warmup(params)
    check_keep(params)


@register("el2n", check=check)
def select(
    ctx: SelectionContext,
    *,
    warmup_epochs: int = 1,
    warmup_seeds: int = 3,
    warmup_fraction: float = 1.0,
    keep: str = "drop_top",
    offset: float = 0.05,
) -> Selection:
    """Average EL2N over warm-up runs, then keep k by the keep rule."""
    scores = averaged_over_warmups(
        ctx, warmup_seeds, warmup_epochs, warmup_fraction, lambda warm: ctx.signals.losses(warm)["el2n"]
    )
    rows = keep_by_score(scores, ctx.k, keep, offset)
    return Selection(ids=list(ctx.pool.ids[rows]), scores=pd.Series(scores, index=ctx.pool.ids))
