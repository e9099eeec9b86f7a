"""One leaderboard per comparability group: a row per selector variant and budget, with honest statistics.

Per row: the mean over seeds of each run's macro score, an interval that adds the evaluation-item uncertainty
(Wilson or t per task, combined over tasks) and the seed-to-seed uncertainty (pooled over the rows at that
budget) in quadrature; the paired comparison with `random` at the same budget; and a rank that never
separates two rows whose difference is not significant.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.report import stats as st
from harness.report.load import MACRO, ROW_KEYS, budget_suffix

BINARY_METRICS = {"acc", "acc_norm", "exact_match", "correct"}
REFERENCE, BASELINE = "full", "random"


@dataclass(frozen=True)
class Settings:
    """What the report computes: metric, interval level and method, comparison test, correction."""

    metric: str = "acc"
    alpha: float = 0.05
    correction: str = "holm"
    interval: str = "wilson"
    test: str = "bootstrap"
    n_boot: int = 2000


def available_metrics(results: pd.DataFrame, items: pd.DataFrame) -> list[str]:
    """Metrics with a macro score in the records, then per-item columns the records keep."""
    names = list(dict.fromkeys(results.loc[results["task"] != MACRO, "metric"]))
    skip = {"run_id", "task", "doc_id", "n_choices", "pred", "gold"}
    extra = [c for c in items.columns if c not in skip and c not in names and pd.api.types.is_numeric_dtype(items[c])]
    return names + extra


def item_column(items: pd.DataFrame, metric: str) -> str | None:
    """The per-item column that holds `metric` (acc falls back to `correct` for records without an acc column)."""
    if metric in items.columns and items[metric].notna().any():
        return metric
    if metric == "acc" and "correct" in items.columns:
        return "correct"
    return None


def is_binary(metric: str, values: pd.Series | None = None) -> bool:
    """0/1 per item: accuracy-like metrics by name, or any column whose values are all 0 or 1."""
    if metric in BINARY_METRICS:
        return True
    if values is None or values.dropna().empty:
        return False
    return bool(values.dropna().astype(float).isin([0.0, 1.0]).all())


def cell_scores(frame: pd.DataFrame, items: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Per run: task scores, task item counts and the macro score for `metric` (from items if not tabulated)."""
    rows = frame[(frame["metric"] == metric) & (frame["task"] != MACRO)]
    if len(rows):
        rows = rows.drop_duplicates(["run_id", "task"]).set_index(["run_id", "task"])
        scores, counts = rows["value"].unstack(), rows["n_items"].unstack()
        macro_rows = frame[(frame["metric"] == metric) & (frame["task"] == MACRO)].set_index("run_id")["value"]
        macro = macro_rows.groupby(level=0).first().reindex(scores.index)
        macro = macro.fillna(scores.mean(axis=1))
        return scores, counts, macro
    col = item_column(items, metric)
    runs = frame["run_id"].unique()
    mine = items[items["run_id"].isin(runs)] if col else items.iloc[:0]
    if col is None or mine[col].dropna().empty:
        return pd.DataFrame(), pd.DataFrame(), pd.Series(dtype=float)
    grouped = mine.dropna(subset=[col]).assign(_v=lambda d: d[col].astype(float)).groupby(["run_id", "task"])["_v"]
    scores, counts = grouped.mean().unstack(), grouped.count().unstack()
    return scores, counts, scores.mean(axis=1)


def item_matrix(items: pd.DataFrame, run_ids: list[str], metric: str) -> pd.DataFrame:
    """Items (task, doc_id) x runs of per-item values; empty when the records keep no such column."""
    col = item_column(items, metric)
    if col is None:
        return pd.DataFrame()
    mine = items[items["run_id"].isin(run_ids)]
    if mine.empty:
        return pd.DataFrame()
    mine = mine.drop_duplicates(["task", "doc_id", "run_id"])
    return mine.set_index(["task", "doc_id", "run_id"])[col].astype(float).unstack().sort_index()


def _signals(values: pd.Series) -> str:
    known = values.dropna().map(lambda v: str(v).lower() in ("true", "1", "1.0"))
    if known.empty:
        return ""
    return "yes" if known.all() else ("no" if not known.any() else "partly")


def summarize(frame: pd.DataFrame, items: pd.DataFrame, manifests: dict, settings: Settings) -> pd.DataFrame:
    """One row per (variant, setting, budget, unit) of a comparability group: scores, intervals, costs (no tests).

    Each row's runs are in seed order (`_runs` aligned with `_seed_values`), which is what pairing relies on.
    """
    metric, alpha = settings.metric, settings.alpha
    scores, counts, macro = cell_scores(frame, items, metric)
    if scores.empty:
        return pd.DataFrame()
    tasks = list(scores.columns)
    runs = frame.drop_duplicates("run_id").set_index("run_id")
    runs = runs.loc[runs.index.intersection(scores.index)]
    runs = runs.assign(_macro=macro.reindex(runs.index))
    wide = item_matrix(items, list(runs.index), metric)
    binary = is_binary(metric, items[item_column(items, metric)] if item_column(items, metric) else None)

    rows = []
    for key, cell in runs.groupby(ROW_KEYS, sort=True):
        cell = cell.sort_values("seed", kind="stable")  # seed order: rows are paired column by column
        repeated = sorted(set(cell.loc[cell["seed"].duplicated(), "seed"]))
        if repeated:  # load_records keeps one record per seed and setting; a frame from elsewhere may not
            raise HarnessError(
                f"row {key[0]} at budget {key[2]:g} holds seed(s) {repeated} more than once "
                f"(runs {', '.join(cell.index)}): one record per seed and setting is needed"
            )
        ids = list(cell.index)
        task_means = scores.loc[ids].mean()
        if binary:
            k = (scores.loc[ids, tasks] * counts.loc[ids, tasks]).to_numpy(dtype=float)
            _, below, above = st.macro_item_halfwidths(
                k, counts.loc[ids[0], tasks].to_numpy(float), alpha, settings.interval
            )
        else:
            below = above = np.nan
            if not wide.empty:
                sides = []
                for task in tasks:
                    mine = wide.loc[task, [i for i in ids if i in wide.columns]] if task in wide.index else None
                    seed_mean = mine.mean(axis=1).to_numpy() if mine is not None else np.array([])
                    low, high = st.t_interval(seed_mean, alpha)
                    sides.append((seed_mean.mean() - low, high - seed_mean.mean()) if len(seed_mean) else (np.nan,) * 2)
                below, above = (float(np.sqrt(np.sum(np.square(side))) / len(tasks)) for side in zip(*sides))
        per_seed = cell["_macro"].to_numpy(dtype=float)
        manifest = [manifests.get(i, {}) for i in ids]
        train_seconds = [m.get("timings", {}).get("train_seconds") for m in manifest]
        train_seconds = [t for t in train_seconds if isinstance(t, (int, float))]
        rows.append(
            {
                "variant": key[0],
                "setting": key[1],
                "budget": key[2],
                "budget_unit": key[3],
                "selector": cell["selector"].iloc[0],
                "n_seeds": len(ids),
                "seeds": " ".join(str(s) for s in cell["seed"]),
                "score": float(per_seed.mean()),
                "seed_sd": float(per_seed.std(ddof=1)) if len(ids) > 1 else np.nan,
                "_per_seed": per_seed,
                "_below": below,
                "_above": above,
                **{f"task:{t}": float(task_means[t]) for t in tasks},
                "worst_task": str(task_means.idxmin()),
                "worst_score": float(task_means.min()),
                "task_sd": float(task_means.std(ddof=0)),
                "n_items": int(counts.loc[ids[0]].sum()),
                "selection_seconds": float(cell["selection_seconds"].astype(float).mean()),
                "signals_cached": _signals(cell["signals_cached"]),
                "train_seconds": float(np.mean(train_seconds)) if len(train_seconds) == len(ids) else np.nan,
                "train_tokens": float(cell["train_tokens"].astype(float).mean()),
                "train_steps": float(cell["train_steps"].astype(float).mean()),
                "train_flops": float(cell["train_flops"].astype(float).mean()),
                "_runs": ids,
                "_seed_values": tuple(int(s) for s in cell["seed"]),
            }
        )
    table = pd.DataFrame(rows)
    _add_intervals(table, alpha, binary)
    return table


MIN_SEED_DF = 4
"""Fewer degrees of freedom than this at one budget: the seed SD is pooled over the whole group instead."""


def _add_intervals(table: pd.DataFrame, alpha: float, binary: bool) -> None:
    """Item uncertainty (per side) and seed uncertainty (pooled SD, t quantile) added in quadrature."""
    pooled_all = st.pooled_seed_sd(table["_per_seed"])
    low, high = table["score"].to_numpy(float).copy(), table["score"].to_numpy(float).copy()
    table["seed_df"] = 0
    for _budget, rows in table.groupby("budget"):
        sd, df = st.pooled_seed_sd(rows["_per_seed"])
        if df < MIN_SEED_DF:
            sd, df = pooled_all
        at = rows.index.to_numpy()
        low[at], high[at] = st.with_seed_uncertainty(
            rows["score"].to_numpy(float),
            rows["_below"].to_numpy(float),
            rows["_above"].to_numpy(float),
            sd,
            df,
            rows["n_seeds"].to_numpy(),
            alpha,
        )
        table.loc[at, "seed_df"] = df
    low, high = pd.Series(low, index=table.index), pd.Series(high, index=table.index)
    table["ci_low"], table["ci_high"] = (low.clip(0, 1), high.clip(0, 1)) if binary else (low, high)


@dataclass
class _Items:
    """The group's per-item matrix as numpy, with each run's column and each item's task code."""

    values: np.ndarray
    column: dict[str, int]
    codes: np.ndarray

    @classmethod
    def of(cls, wide: pd.DataFrame) -> _Items:
        if wide.empty:
            return cls(np.empty((0, 0)), {}, np.empty(0, dtype=int))
        codes = pd.factorize(wide.index.get_level_values(0))[0]
        return cls(wide.to_numpy(dtype=float), {c: i for i, c in enumerate(wide.columns)}, codes)


def _compare(a: pd.Series, b: pd.Series, items: _Items, settings: Settings, cache: dict) -> st.Comparison | None:
    """Paired comparison of two rows on the evaluation items both have, for every run of each."""
    if any(r not in items.column for r in a["_runs"] + b["_runs"]):
        return None
    ia, ib = [items.column[r] for r in a["_runs"]], [items.column[r] for r in b["_runs"]]
    sub = items.values[:, ia + ib]
    mask = ~np.isnan(sub).any(axis=1)
    if not mask.any():
        return None
    xa, xb, codes = sub[mask, : len(ia)], sub[mask, len(ia) :], items.codes[mask]
    key = f"{a['variant']}|{a['budget']}|{b['variant']}|{b['budget']}"
    rng = np.random.default_rng([settings.n_boot, zlib.crc32(key.encode())])
    if settings.test == "mcnemar":
        seeds = [s for s in a["_seed_values"] if s in b["_seed_values"]]
        sa = [a["_seed_values"].index(s) for s in seeds] or list(range(min(xa.shape[1], xb.shape[1])))
        sb = [b["_seed_values"].index(s) for s in seeds] or sa
        p, _, _ = st.mcnemar_exact(xa[:, sa], xb[:, sb])
        diff = float(a["score"] - b["score"])
        return st.Comparison(diff, np.nan, np.nan, p, np.nan, int(mask.sum()))
    weights = None
    if mask.all():
        if "w" not in cache:
            cache["w"] = st.bootstrap_weights(codes, settings.n_boot, np.random.default_rng(settings.n_boot))
        weights = cache["w"]
    paired = a["_seed_values"] == b["_seed_values"]
    return st.paired_bootstrap(xa, xb, codes, paired, rng, settings.n_boot, settings.alpha, weights)


def compare_rows(table: pd.DataFrame, frame: pd.DataFrame, items: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Add the comparison with `random` at each budget (adjusted p, mark) and significance-aware ranks."""
    if settings.test == "mcnemar" and not is_binary(settings.metric):
        raise HarnessError(f"--test mcnemar needs a 0/1 metric; {settings.metric} is continuous: use --test bootstrap")
    runs = [r for ids in table["_runs"] for r in ids]
    matrix = _Items.of(item_matrix(items, runs, settings.metric))
    cache: dict = {}
    for col in ("diff_vs_random", "diff_low", "diff_high", "p_raw", "p_vs_random", "prob_better"):
        table[col] = np.nan
    table["vs_random"], table["rank"] = "", pd.array([pd.NA] * len(table), dtype="Int64")
    competitors = table[table["variant"] != REFERENCE]
    for _budget, rows in competitors.groupby("budget"):
        idx = list(rows.index)
        p = np.full((len(idx), len(idx)), np.nan)
        for i in range(len(idx)):
            for j in range(i + 1, len(idx)):
                result = _compare(table.loc[idx[i]], table.loc[idx[j]], matrix, settings, cache)
                if result is not None:
                    p[i, j] = p[j, i] = result.p_value
                if result is not None and BASELINE in (table.at[idx[i], "variant"], table.at[idx[j], "variant"]):
                    me, sign = (idx[j], -1) if table.at[idx[i], "variant"] == BASELINE else (idx[i], 1)
                    table.at[me, "diff_vs_random"] = float(
                        table.at[me, "score"] - rows.loc[idx[i] + idx[j] - me, "score"]
                    )
                    lo, hi = sign * result.low, sign * result.high
                    table.at[me, "diff_low"], table.at[me, "diff_high"] = min(lo, hi), max(lo, hi)
                    table.at[me, "p_raw"] = result.p_value
                    table.at[me, "prob_better"] = result.prob_better if sign > 0 else 1 - result.prob_better
        upper = np.triu_indices(len(idx), 1)
        adjusted = p.copy()
        if settings.correction == "holm":
            adjusted[upper] = st.holm(p[upper])
            adjusted.T[upper] = adjusted[upper]
        different = np.nan_to_num(adjusted, nan=1.0) < settings.alpha
        table.loc[idx, "rank"] = st.tie_blocks(table.loc[idx, "score"].to_numpy(), different)
    raw = table["p_raw"].to_numpy()
    table["p_vs_random"] = st.holm(raw) if settings.correction == "holm" else raw
    significant = table["p_vs_random"] < settings.alpha
    table.loc[significant & (table["diff_vs_random"] > 0), "vs_random"] = "better"
    table.loc[significant & (table["diff_vs_random"] < 0), "vs_random"] = "worse"
    return table


def leaderboard(frame: pd.DataFrame, items: pd.DataFrame, manifests: dict, settings: Settings) -> pd.DataFrame:
    """The full leaderboard of one comparability group, sorted by budget then rank (`full` last)."""
    table = summarize(frame, items, manifests, settings)
    if table.empty:
        return table
    table = compare_rows(table, frame, items, settings)
    table["_ref"] = table["variant"] == REFERENCE
    return table.sort_values(["_ref", "budget", "rank", "score"], ascending=[True, True, True, False]).reset_index(
        drop=True
    )


PUBLIC = [
    "rank",
    "variant",
    "selector",
    "budget",
    "budget_unit",
    "score",
    "ci_low",
    "ci_high",
    "n_seeds",
    "seeds",
    "seed_sd",
    "seed_df",
    "worst_task",
    "worst_score",
    "task_sd",
    "diff_vs_random",
    "diff_low",
    "diff_high",
    "p_raw",
    "p_vs_random",
    "prob_better",
    "vs_random",
    "selection_seconds",
    "signals_cached",
    "train_seconds",
    "train_tokens",
    "train_steps",
    "train_flops",
    "n_items",
]


def public_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard without helper columns, per-task scores after the headline ones."""
    tasks = [c for c in table.columns if c.startswith("task:")]
    cols = [c for c in PUBLIC if c in table.columns]
    at = cols.index("worst_task")
    return table[cols[:at] + tasks + cols[at:]]


def _fmt(value: float, digits: int) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def markdown(table: pd.DataFrame, metric: str, alpha: float, correction: str = "holm") -> str:
    """The leaderboard as a Markdown table (wins and losses against random marked)."""
    digits = 3 if is_binary(metric) else 4
    tasks = [c for c in table.columns if c.startswith("task:")]
    level = round(100 * (1 - alpha))
    head = ["rank", "variant", "budget", f"{metric} [{level}% CI]", "seeds (sd)", *[t[5:] for t in tasks]]
    head += [
        "worst",
        "task sd",
        "vs random [CI]",
        "p (Holm)" if correction == "holm" else "p",
        "P(better)",
        "select s",
        "cached",
        "tokens",
        "steps",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marks = {"better": " ▲", "worse": " ▼"}
    for row in table.to_dict("records"):
        rank = "ref" if row["variant"] == REFERENCE else ("" if pd.isna(row["rank"]) else str(row["rank"]))
        unit = budget_suffix(row["budget_unit"])
        sd = f" ({_fmt(row['seed_sd'], digits)})" if row["n_seeds"] > 1 else ""
        diff = ""
        if not pd.isna(row["diff_vs_random"]):
            diff = f"{row['diff_vs_random']:+.{digits}f}"
            if not pd.isna(row["diff_low"]):
                diff += f" [{row['diff_low']:+.{digits}f}, {row['diff_high']:+.{digits}f}]"
            diff += marks.get(row["vs_random"], "")
        cells = [
            rank,
            str(row["variant"]),
            f"{row['budget']:g}{unit}",
            f"{row['score']:.{digits}f} [{_fmt(row['ci_low'], digits)}, {_fmt(row['ci_high'], digits)}]",
            f"{row['n_seeds']}{sd}",
            *[_fmt(row[t], digits) for t in tasks],
            f"{row['worst_task']} {row['worst_score']:.{digits}f}",
            _fmt(row["task_sd"], digits),
            diff,
            _fmt(row["p_vs_random"], 3),
            _fmt(row["prob_better"], 2),
            _fmt(row["selection_seconds"], 1),
            row["signals_cached"],
            "" if pd.isna(row["train_tokens"]) else f"{row['train_tokens']:.3g}",
            "" if pd.isna(row["train_steps"]) else f"{row['train_steps']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
