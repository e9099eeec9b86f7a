"""What a selection kept, measured against the testbed's hidden truth: computed at the record stage only."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.pool import TRUTH_COLUMNS, Pool


def selection_diagnostics(pool: Pool, ids: list[str], truth: pd.DataFrame | None) -> dict[str, Any]:
    """Per-task counts of the distinct selected ids, and (with the truth) kept noisy, duplicate and filler examples.

    ``duplicates`` counts every kept member of a near-duplicate group, ``redundant_duplicates`` the members beyond
    the first of their group (what de-duplication should remove); each has its pool-wide count beside it."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    kept = pool.examples.iloc[pool.index_of(ids)]
    pool_counts = pool.examples["task"].value_counts().sort_index()
    kept_counts = kept["task"].value_counts().reindex(pool_counts.index, fill_value=0)
    out: dict[str, Any] = {
        "per_task": {t: int(c) for t, c in kept_counts.items()},
        "pool_per_task": {t: int(c) for t, c in pool_counts.items()},
        "n_distinct": len(ids),
    }
    if truth is None:
        return out
    missing = [c for c in ("id", *TRUTH_COLUMNS) if c not in truth.columns]
    if missing:
        raise ValueError(f"the truth frame lacks columns {missing}")
    table = truth.set_index("id")
    if not pool.examples["id"].isin(table.index).all():
        raise ValueError("the truth frame does not cover every pool id; it belongs to another pool")
    everything = table.loc[pool.examples["id"]]
    chosen = table.loc[kept["id"]]
    kept_members, kept_groups = _group_members(chosen["truth_dup_group"])
    pool_members, pool_groups = _group_members(everything["truth_dup_group"])
    out.update(
        noisy=int(chosen["truth_noisy"].sum()),
        filler=int(chosen["truth_filler"].sum()),
        duplicates=kept_members,
        duplicate_groups=kept_groups,
        redundant_duplicates=kept_members - kept_groups,
        pool_noisy=int(everything["truth_noisy"].sum()),
        pool_filler=int(everything["truth_filler"].sum()),
        pool_duplicates=pool_members,
        pool_redundant_duplicates=pool_members - pool_groups,
    )
    return out


def _group_members(groups: pd.Series) -> tuple[int, int]:
    """Rows in a near-duplicate group (group id >= 0) and the number of distinct groups among them."""
    in_groups = groups[groups >= 0]
    return len(in_groups), int(in_groups.nunique())
