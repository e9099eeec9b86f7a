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


@register("influence", check=check)
def select(
    ctx: SelectionContext,
    *,
    aggregation: str = "task_max",
    warmup_mode: str = "lora",
    warmup_fraction: float = 0.05,
    warmup_epochs: int = 4,
    warmup_lr: float = 2e-5,
    warmup_scheduler: str = "linear",
    warmup_ratio: float = 0.03,
    warmup_seed: int | None = None,
    lora_r: int = 128,
    lora_alpha: int = 512,
    lora_dropout: float = 0.1,
    lora_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj"),
    feature_modules: tuple | None = None,
    proj_dim: int = 8192,
    projection: str = "rademacher",
    proj_seed: int = 0,
    adam_formula: str = "paper",
    store_dtype: str = "float16",
) -> Selection:
    """Top k by aggregated LESS influence."""
    settings = {k: v for k, v in locals().items() if k in less.DEFAULTS}
    matrix, val_tasks = less.influence_matrix(ctx, settings)
    scores = aggregate(matrix, val_tasks, aggregation)
    rows = top_k(scores, ctx.k)
    return Selection(ids=list(ctx.pool.ids[rows]), scores=pd.Series(scores, index=ctx.pool.ids))
