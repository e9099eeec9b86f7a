"""Influence, LESS-style (Xia et al., "LESS: Selecting Influential Data for Targeted Instruction Tuning", 2024).

A = LESS influence matrix (N x |V|), from the signal service (harness.signals.less):
    warm-up with LoRA (r=128, alpha=512, dropout 0.1, q/k/v/o) for 4 epochs on a random 5% of the pool,
    lr 2e-5, linear schedule, 3% warm-up; per epoch checkpoint: training examples -> Adam update direction,
    validation examples -> plain gradient; Rademacher projection to d = 8192; L2-normalise;
    A[i, j] = sum over checkpoints of lr-weight * cos(train_i, val_j)
score(i) = aggregate(A[i, :]):
    task_max     (LESS, default): mean over each target task's validation examples, then max over tasks
    instance_max (a BIDS baseline): max over the validation examples
    sum          (a BIDS baseline): sum over the validation examples
keep the global top k (ties to the lower pool index)
"""

import pandas as pd

from harness.errors import HarnessError
from harness.selection import Selection, SelectionContext, register
from harness.signals import less
from harness.signals.influence import AGGREGATIONS, aggregate, top_k


def check(params: dict) -> None:
    if params["aggregation"] not in AGGREGATIONS:
        raise HarnessError(f"unknown aggregation {params['aggregation']!r}; use one of {list(AGGREGATIONS)}")
    less.check(params)


@register("influence", check=check, shared=less.DEFAULTS)
def select(ctx: SelectionContext, *, aggregation: str = "task_max", **settings: object) -> Selection:
    """Top k by aggregated LESS influence."""
    matrix, val_tasks = less.influence_matrix(ctx, settings)
    scores = aggregate(matrix, val_tasks, aggregation)
    rows = top_k(scores, ctx.k)
    return Selection(ids=list(ctx.pool.ids[rows]), scores=pd.Series(scores, index=ctx.pool.ids))
