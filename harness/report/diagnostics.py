"""What each selector kept: shares of noisy, duplicate and filler examples and per-task shares, vs the pool's.

Read from the manifests' `selection_diagnostics` (the testbed knows the truth; other pools have per-task counts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report.load import ROW_KEYS, budget_suffix

TRUTH = ("noisy", "duplicates", "redundant_duplicates", "filler")
"""Counts the testbed's manifests hold (each with its pool-wide `pool_` count): `duplicates` are kept members of
near-duplicate groups, `redundant_duplicates` the members beyond the first of their group. A selector that keeps
one member of every group raises the first above the pool's share and brings the second to zero."""

LABELS = {"redundant_duplicates": "redundant"}
"""Column heads of the markdown table where they differ from the count's name."""


def diagnostics_table(frame: pd.DataFrame, manifests: dict) -> pd.DataFrame:
    """One row per leaderboard row (variant, setting, budget): kept shares averaged over seeds, beside the pool's."""
    runs = frame.drop_duplicates("run_id")
    rows = []
    for (variant, _setting, budget, unit), cell in runs.groupby(ROW_KEYS, sort=True):
        per_run = []
        for run_id in cell["run_id"]:
            diag = manifests.get(run_id, {}).get("selection_diagnostics") or {}
            kept, pool = diag.get("per_task") or {}, diag.get("pool_per_task") or {}
            n_kept = diag.get("n_distinct") or sum(kept.values())
            n_pool = sum(pool.values())
            if not n_kept or not n_pool:
                continue
            shares = {"n_kept": n_kept, "n_pool": n_pool}
            for name in TRUTH:
                if name in diag:  # records older than a pool-wide count show the kept share alone
                    shares[f"kept_{name}"] = diag[name] / n_kept
                    shares[f"pool_{name}"] = diag.get(f"pool_{name}", np.nan) / n_pool
            for task, count in pool.items():
                shares[f"kept:{task}"] = kept.get(task, 0) / n_kept
                shares[f"pool:{task}"] = count / n_pool
            per_run.append(shares)
        if per_run:
            mean = pd.DataFrame(per_run).mean(numeric_only=True)
            rows.append({"variant": variant, "budget": budget, "budget_unit": unit, "n_seeds": len(per_run), **mean})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """Kept share in % with the pool's share in parentheses, per truth column and per task.

    `kept` is the number of distinct examples a run used: for a per-epoch budget (RS2), over all its epochs."""
    truth = [n for n in TRUTH if f"kept_{n}" in table.columns]
    tasks = [c[5:] for c in table.columns if c.startswith("kept:")]
    head = ["variant", "budget", "kept", *[f"{LABELS.get(n, n)} % (pool)" for n in truth]]
    head += [f"{t} % (pool)" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(row: dict, kept: str, pool: str) -> str:
        if pd.isna(row.get(kept, np.nan)):
            return ""
        if pd.isna(row.get(pool, np.nan)):
            return f"{100 * row[kept]:.1f}"
        return f"{100 * row[kept]:.1f} ({100 * row[pool]:.1f})"

    for row in table.to_dict("records"):
        unit = budget_suffix(row["budget_unit"])  # as the leaderboard writes it
        cells = [str(row["variant"]), f"{row['budget']:g}{unit}", f"{row['n_kept']:.0f}"]
        cells += [pct(row, f"kept_{n}", f"pool_{n}") for n in truth]
        cells += [pct(row, f"kept:{t}", f"pool:{t}") for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
