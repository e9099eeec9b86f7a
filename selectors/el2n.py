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
The proxy: the papers fine-tune a pretrained model; warm-ups start from the model as configured (warmup_base=model),
or from the testbed's pretrained stand-in (warmup_base=pretrained, the testbed's setting: its scratch model has not
learned every skill after one epoch; see harness/scores.py).
Deviation, kept as the default for now: each warm-up trains with its own schedule, annealed within its epochs.
The papers take scores early in a full-length run, with the learning rate still near its peak:
`warmup_schedule=run` does that (the first `warmup_epochs` of a run whose schedule spans the recipe's epochs).
"""

from harness.scores import SCORE_DEFAULTS, check_scores, select_by_score
from harness.selection import Selection, SelectionContext, register


@register("el2n", check=check_scores, shared=SCORE_DEFAULTS)
def select(ctx: SelectionContext, **settings: object) -> Selection:
    """Average EL2N over warm-up runs, then keep k by the keep rule."""
    return select_by_score(ctx, lambda warm: ctx.signals.losses(warm)["el2n"], **settings)
