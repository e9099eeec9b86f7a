"""GraNd (Paul et al., "Deep Learning on a Data Diet", 2021).

    for each of `warmup_seeds` independent warm-up runs (the proxy trained `warmup_epochs` on the pool):
        GraNd(x) = || grad_theta loss(x) ||_2   (loss: mean over x's response tokens; theta: trainable parameters;
                                                 per-example gradients computed in batches, never one at a time)
    score(x) = mean of GraNd(x) over the warm-up runs
    keep k examples by the keep rule (drop_top, the NLP recipe and default; hardest; easiest), as for EL2N.
The vision paper also scores GraNd at initialisation; here scores come after at least one warm-up epoch, as the
NLP follow-up advises, and share their warm-ups with EL2N (from the same proxy: warmup_base, as for EL2N).
"""

from harness.scores import SCORE_DEFAULTS, check_scores, select_by_score
from harness.selection import Selection, SelectionContext, register


@register("grand", check=check_scores, shared=SCORE_DEFAULTS)
def select(ctx: SelectionContext, **settings: object) -> Selection:
    """Average per-example gradient norms over warm-up runs, then keep k by the keep rule."""
    return select_by_score(ctx, ctx.signals.grad_norms, **settings)
