"""Scaling curves (score against budget) and cost curves (score against selection-plus-training cost)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.report.leaderboard import REFERENCE  # noqa: E402

LOG_RATIO = 5.0
"""Use a log axis when the largest value is at least this many times the smallest."""


def _log_if_wide(ax, values: np.ndarray, axis: str) -> None:
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() >= LOG_RATIO:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _lines(table: pd.DataFrame):
    """(colour, label, rows by budget) per line: one line per variant and setting, as the leaderboard's rows."""
    competitors = table[table["variant"] != REFERENCE]
    for i, ((variant, _setting), rows) in enumerate(competitors.groupby(["variant", "setting"], sort=True)):
        yield f"C{i % 10}", variant, rows.sort_values("budget")


def scaling_curve(table: pd.DataFrame, metric: str, title: str, path: Path, alpha: float) -> Path:
    """Score against budget, one line per variant with its interval band, `full` as a horizontal line."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.12)
    for colour, variant, rows in _lines(table):
        ax.plot(rows["budget"], rows["score"], marker="o", color=colour, label=variant)
        ax.fill_between(rows["budget"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15, linewidth=0)
    for row in table[table["variant"] == REFERENCE].to_dict("records"):
        ax.axhline(row["score"], color="black", linestyle="--", linewidth=1, label=f"{REFERENCE} (all data)")
        ax.axhspan(row["ci_low"], row["ci_high"], color="grey", alpha=0.12, linewidth=0)
    budgets = table.loc[table["variant"] != REFERENCE, "budget"].to_numpy(dtype=float)
    _log_if_wide(ax, budgets, "x")
    units = sorted(set(table["budget_unit"]))
    ax.set_xlabel(f"budget (fraction of the pool per {' or '.join(units)})")
    ax.set_ylabel(f"{metric} (macro, {round(100 * (1 - alpha))}% interval)")
    return _finish(fig, ax, title, path)


def cost_curve(table: pd.DataFrame, metric: str, title: str, path: Path) -> Path:
    """Score against selection seconds plus training seconds (selection only when training time is unknown)."""
    train = table["train_seconds"].to_numpy(dtype=float)
    with_train = bool(np.isfinite(train).all())
    cost = table["selection_seconds"].to_numpy(dtype=float) + (train if with_train else 0.0)
    table = table.assign(_cost=cost)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.12)
    for colour, variant, rows in _lines(table):
        rows = rows.sort_values("_cost")
        ax.errorbar(
            rows["_cost"],
            rows["score"],
            yerr=[rows["score"] - rows["ci_low"], rows["ci_high"] - rows["score"]],
            marker="o",
            color=colour,
            label=variant,
            capsize=2,
        )
        for r in rows.to_dict("records"):
            ax.annotate(
                f"{r['budget']:g}", (r["_cost"], r["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    for r in table[table["variant"] == REFERENCE].to_dict("records"):
        ax.plot([r["_cost"]], [r["score"]], marker="*", markersize=12, color="black", linestyle="", label=REFERENCE)
    _log_if_wide(ax, cost, "x")
    ax.set_xlabel("selection + training seconds" if with_train else "selection seconds (training time not recorded)")
    ax.set_ylabel(f"{metric} (macro)")
    return _finish(fig, ax, title, path)


def _finish(fig: Any, ax: Any, title: str, path: Path) -> Path:
    """Title, grid and legend as every curve has them; write the PNG and free the figure."""
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path)
    plt.close(fig)
    return path
