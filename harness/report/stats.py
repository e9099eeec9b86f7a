"""Intervals and paired tests that hold on small evaluation sets.

Per cell: Wilson (or Clopper-Pearson) for 0/1 metrics, Student t for continuous ones. Independent error
sources (tasks, seeds) are added in quadrature on each side of an interval, so Wilson's asymmetry is kept.
Between two rows: a bootstrap over the same evaluation items (stratified by task) and over seeds, or
McNemar's exact test. Many comparisons: Holm's step-down adjustment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

INTERVALS = ("wilson", "exact")
"""Interval methods for 0/1 metrics: Wilson score, or Clopper-Pearson ('exact')."""


def binomial_interval(
    k: np.ndarray | float, n: np.ndarray | float, alpha: float = 0.05, method: str = "wilson"
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised (low, high) for k successes in n trials; k may be fractional (a mean over seeds)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "wilson":
            z = stats.norm.ppf(1 - alpha / 2)
            p = k / n
            centre = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            low, high = centre - half, centre + half
        elif method == "exact":
            low = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
            high = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
        else:
            raise ValueError(f"unknown interval method {method!r}; use one of {INTERVALS}")
    return np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)


def t_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Student-t interval for the mean of continuous per-item values (NaN with fewer than two)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    mean, se = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
    half = stats.t.ppf(1 - alpha / 2, len(values) - 1) * se
    return float(mean - half), float(mean + half)


def macro_item_halfwidths(
    k: np.ndarray, n: np.ndarray, alpha: float = 0.05, method: str = "wilson"
) -> tuple[float, float, float]:
    """Macro score of 0/1 results and its item-sampling half-widths below and above.

    k: (seeds, tasks) successes, n: (tasks,) items. Each task gets an interval on its seed-averaged successes
    (the seeds share the items, so averaging seeds does not shrink item uncertainty); the tasks' half-widths
    are added in quadrature and divided by the number of tasks, side by side.
    """
    k_mean = np.atleast_2d(np.asarray(k, dtype=float)).mean(axis=0)
    n = np.asarray(n, dtype=float)
    low, high = binomial_interval(k_mean, n, alpha, method)
    centre = k_mean / n
    return (
        float(centre.mean()),
        float(np.sqrt(np.sum((centre - low) ** 2)) / len(n)),
        float(np.sqrt(np.sum((high - centre) ** 2)) / len(n)),
    )


def with_seed_uncertainty(
    score: np.ndarray,
    below: np.ndarray,
    above: np.ndarray,
    seed_sd: float,
    seed_df: int,
    n_seeds: np.ndarray,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): item half-widths and the seed term t(df) * sd / sqrt(seeds) added in quadrature per side."""
    seed = stats.t.ppf(1 - alpha / 2, seed_df) * seed_sd / np.sqrt(n_seeds) if seed_df else 0.0
    return score - np.sqrt(np.square(below) + np.square(seed)), score + np.sqrt(np.square(above) + np.square(seed))


def pooled_seed_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled standard deviation over seeds (one-way ANOVA within rows) and its degrees of freedom."""
    ss, df = 0.0, 0
    for values in groups:
        values = np.asarray(values, dtype=float)
        values = values[~np.isnan(values)]
        if len(values) >= 2:
            ss += float(((values - values.mean()) ** 2).sum())
            df += len(values) - 1
    return (float(np.sqrt(ss / df)) if df else float("nan")), df


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaNs stay NaN and do not count."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """McNemar's exact test on paired 0/1 outcomes (rows are items, columns matched seeds, pooled).

    Returns (two-sided p-value, items only a got right, items only b got right).
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0, 0, 0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue), only_a, only_b


@dataclass(frozen=True)
class Comparison:
    """Row a minus row b on the same items: difference, its interval, p-value, P(a better)."""

    diff: float
    low: float
    high: float
    p_value: float
    prob_better: float
    n_items: int


def macro_weights(task_codes: np.ndarray) -> np.ndarray:
    """Per-item weights that turn a weighted sum into the unweighted mean of per-task means."""
    _, inverse, counts = np.unique(task_codes, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def bootstrap_weights(task_codes: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_items) resampling weights: items drawn with replacement within each task, macro-weighted."""
    weights = np.zeros((n_boot, len(task_codes)))
    base = macro_weights(task_codes)
    for code in np.unique(task_codes):
        cols = np.flatnonzero(task_codes == code)
        counts = rng.multinomial(len(cols), np.full(len(cols), 1.0 / len(cols)), size=n_boot)
        weights[:, cols] = counts * base[cols]
    return weights


def paired_bootstrap(
    xa: np.ndarray,
    xb: np.ndarray,
    task_codes: np.ndarray,
    paired_seeds: bool,
    rng: np.random.Generator,
    n_boot: int = 2000,
    alpha: float = 0.05,
    weights: np.ndarray | None = None,
) -> Comparison:
    """Bootstrap of the macro difference a - b over the same items (shared draws) and over seeds.

    xa, xb: (items, seeds) per-item values of each row's runs. Items are resampled within tasks with the same
    draw for both rows (the pairing); seeds are resampled too, jointly when both rows ran the same seeds.
    The p-value is the null-centred bootstrap test; prob_better is the share of draws where a > b.
    """
    xa, xb = np.atleast_2d(np.asarray(xa, float).T).T, np.atleast_2d(np.asarray(xb, float).T).T
    base = macro_weights(task_codes)
    observed = float((base @ xa).mean() - (base @ xb).mean())
    w = bootstrap_weights(task_codes, n_boot, rng) if weights is None else weights
    per_seed_a, per_seed_b = w @ xa, w @ xb  # (n_boot, seeds)
    ia = rng.integers(0, xa.shape[1], size=(n_boot, xa.shape[1]))
    ib = ia if paired_seeds else rng.integers(0, xb.shape[1], size=(n_boot, xb.shape[1]))
    draws = np.take_along_axis(per_seed_a, ia, 1).mean(1) - np.take_along_axis(per_seed_b, ib, 1).mean(1)
    extreme = np.abs(draws - observed) >= abs(observed) - 1e-12
    p_value = (1 + int(extreme.sum())) / (n_boot + 1)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    prob = float((draws > 0).mean() + 0.5 * (draws == 0).mean())
    return Comparison(observed, float(low), float(high), float(p_value), prob, int(xa.shape[0]))


def tie_blocks(scores: Sequence[float], different: np.ndarray) -> np.ndarray:
    """Competition ranks (1 = best) in which rows not significantly different always share a rank.

    `different[i, j]` is True when rows i and j differ significantly. Rows joined by any non-significant pair
    are merged (transitively, and over every row whose score lies between them), so two rows with different
    ranks are always significantly different.
    """
    n = len(scores)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    position = np.empty(n, dtype=int)
    position[order] = np.arange(n)
    reach = np.arange(n)  # in sorted order: the furthest position each row is tied with
    for i in range(n):
        for j in range(n):
            if i != j and not different[i, j]:
                a, b = sorted((position[i], position[j]))
                reach[a] = max(reach[a], b)
    ranks = np.empty(n, dtype=int)
    start = 0
    while start < n:
        end, k = reach[start], start
        while k <= end:  # extend the block while any member reaches further
            end = max(end, reach[k])
            k += 1
        ranks[order[start : end + 1]] = start + 1
        start = end + 1
    return ranks
