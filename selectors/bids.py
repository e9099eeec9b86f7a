"""BIDS (Dai et al., EMNLP Findings 2025): balanced selection from an influence (attribution) matrix.

Algorithm, for the raw attribution matrix A (N training rows x |V| validation columns) and a budget k:

    1. A_norm = column-wise z-score of A over all N training rows.
    2. T = []
       while |T| < k:
           mean_T = (sum of A_norm[t] for t in T, added in selection order) / |T|   (zero vector if T is empty)
           T.append(argmax over unselected i of max_j (A_norm[i, j] - mean_T[j]))
    3. return T (row indices in selection order; ties go to the lowest row index, as numpy.argmax does)

`bids_order` makes exactly these choices in about O(N |V| log N + k |V|) instead of O(k N |V|): see its docstring.
"""

from __future__ import annotations

import numpy as np


def zscore_columns(attribution: np.ndarray) -> np.ndarray:
    """Column-wise z-score over all training rows, in float64 (BIDS' instance-level normalisation).

    A column with zero spread (all values equal) becomes all zeros instead of 0/0.
    """
    a = _checked_matrix(attribution)
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    flat = (np.ptp(a, axis=0) == 0) | (std == 0)
    z = (a - mean) / np.where(flat, 1.0, std)
    z[:, flat] = 0.0
    if not np.isfinite(z).all():
        raise ValueError("attribution values are too large to z-score in float64; rescale the matrix")
    return z


def bids_order(attribution: np.ndarray, k: int) -> np.ndarray:
    """The k rows BIDS selects from the raw N x |V| attribution matrix, in selection order.

    For a fixed mean vector m, max_i max_j (A_norm[i, j] - m[j]) = max_j max_i (...), and within one column
    the best unselected row is the first one in that column's order (value descending, row ascending),
    because x -> fl(x - m[j]) is monotone. So each column keeps its sorted order and a pointer to its
    first unselected row; one step compares |V| column heads instead of N x |V| entries. The scores are
    the literal loop's own float64 numbers, so the maximum is the same; ties go to the lowest row among
    every row that reaches it, including rows whose different value rounds to the same difference.
    """
    z = zscore_columns(attribution)
    n, v = z.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the number of training rows), got {k!r}")
    zt = np.ascontiguousarray(z.T)  # one contiguous row per validation column
    del z
    order, run_end = _sorted_columns(zt)
    cols = np.arange(v)
    ptr = np.zeros(v, dtype=np.int64)  # position of each column's first unselected row in its order
    selected = np.zeros(n, dtype=bool)
    total = np.zeros(v)  # float64 running sum of the selected rows of A_norm, in selection order
    chosen = np.empty(k, dtype=np.int64)
    for t in range(k):
        mean = total / t if t else np.zeros(v)
        heads = order[cols, ptr]
        gaps = zt[cols, heads] - mean
        best = gaps.max()
        tied = np.flatnonzero(gaps == best)
        winner = int(heads[tied].min())
        winner = _lowest_in_rounding_ties(zt, order, run_end, ptr, tied, mean, best, selected, winner)
        chosen[t] = winner
        selected[winner] = True
        total += zt[:, winner]
        _advance(order, ptr, selected, np.flatnonzero(heads == winner))
    return chosen


def _checked_matrix(attribution: np.ndarray) -> np.ndarray:
    """The matrix as float64, or a one-line ValueError for a shape or value BIDS cannot use."""
    a = np.asarray(attribution)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"attribution must be a 2-D N x |V| matrix with N, |V| >= 1, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a)):
        raise ValueError(f"attribution must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError("attribution contains NaN or infinite values; fix the influence scores first")
    return a


def _sorted_columns(zt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: rows by (value desc, row asc), and for each position the end of its run of equal values."""
    v, n = zt.shape
    order = np.empty((v, n), dtype=np.int64 if n > np.iinfo(np.int32).max else np.int32)
    run_end = np.empty_like(order)
    for j in range(v):
        o = np.argsort(-zt[j], kind="stable")
        order[j] = o
        values = zt[j, o]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        ends = np.r_[starts[1:], n]
        run_end[j] = np.repeat(ends, ends - starts)
    return order, run_end


def _lowest_in_rounding_ties(zt, order, run_end, ptr, tied, mean, best, selected, winner: int) -> int:
    """Lower `winner` to any unselected row whose smaller value still rounds to the best difference."""
    n = zt.shape[1]
    nxt = run_end[tied, ptr[tied]]
    open_ = nxt < n
    cols, nxt = tied[open_], nxt[open_]
    hit = zt[cols, order[cols, nxt]] - mean[cols] == best
    for j, q in zip(cols[hit], nxt[hit]):
        while q < n and zt[j, order[j, q]] - mean[j] == best:
            row = int(order[j, q])
            if not selected[row] and row < winner:
                winner = row
            q += 1
    return winner


def _advance(order: np.ndarray, ptr: np.ndarray, selected: np.ndarray, cols: np.ndarray) -> None:
    """Move the pointers of `cols` past selected rows (each pointer only moves forward)."""
    n = order.shape[1]
    while cols.size:
        ptr[cols] += 1
        cols = cols[ptr[cols] < n]
        cols = cols[selected[order[cols, ptr[cols]]]]


# The `bids` selector (registered with @register) goes below: it gets the attribution matrix from the
# signal service, calls bids_order(matrix, ctx.k) and returns Selection(ids=pool ids in that order).
