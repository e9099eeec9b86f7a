"""BIDS (Dai et al., EMNLP Findings 2025): balanced selection from an influence (attribution) matrix.

Algorithm, for the raw attribution matrix A (N training rows x |V| validation columns) and a budget k:

    1. A_norm = column-wise z-score of A over all N training rows.
    2. T = []
       while |T| < k:
           mean_T = (sum of A_norm[t] for t in T, added in selection order) / |T|   (zero vector if T is empty)
           T.append(argmax over unselected i of max_j (A_norm[i, j] - mean_T[j]))
    3. return T (row indices in selection order; ties go to the lowest row index, as numpy.argmax does)

`bids_order` makes exactly these choices in O(N |V| + k |V| log k) time instead of the loop's O(k N |V|).
"""

from __future__ import annotations

import logging

import numpy as np

from harness.selection import Selection, SelectionContext, register
from harness.signals import less

log = logging.getLogger(__name__)


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
    first unselected row; one step compares |V| column heads instead of N x |V| entries. A pointer never
    passes more than k places, so each column needs only its best k + 1 rows sorted. The scores are the
    literal loop's own float64 numbers, so the maximum is the same; ties go to the lowest row among every
    row that reaches it, including rows whose different value rounds to the same difference.
    """
    z = zscore_columns(attribution)
    n, v = z.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] (the number of training rows), got {k!r}")
    cols = _Columns(z, depth=min(n, k + 1))
    del z
    selected = np.zeros(n, dtype=bool)
    total = np.zeros(v)  # float64 running sum of the selected rows of A_norm, in selection order
    chosen = np.empty(k, dtype=np.int64)
    for t in range(k):
        mean = total / t if t else np.zeros(v)
        gaps = cols.head_val - mean  # per column, the best gap of any unselected row
        best = gaps.max()
        tied = np.flatnonzero(gaps == best)
        winner = int(cols.head[tied].min())
        rounding = tied[cols.next_val[tied] - mean[tied] == best]
        if rounding.size:  # a smaller value in the same column rounds to the same gap: its rows tie too
            winner = min(winner, cols.lowest_unselected_at(rounding, mean, best, selected))
        chosen[t] = winner
        selected[winner] = True
        total += cols.zt[:, winner]
        cols.advance(np.flatnonzero(cols.head == winner), selected)
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


class _Columns:
    """Each column's best rows sorted by (value desc, row asc), and a pointer to its first unselected row.

    Only the first `depth` = k + 1 places of a column can ever hold its first unselected row (at most k rows
    are selected), so a column is partitioned and only that prefix is sorted. Arrays are flat (column j at
    [j * depth, (j + 1) * depth)) so that one step gathers from every column at once.
    """

    def __init__(self, z: np.ndarray, depth: int) -> None:
        n, v = z.shape
        self.n, self.depth = n, depth
        self.zt = np.ascontiguousarray(z.T)  # one contiguous row of values per column
        self.values = self.zt.reshape(-1)  # value of row i in column j at j * n + i
        self.z_off = np.arange(v, dtype=np.int64) * n
        self.off = np.arange(v, dtype=np.int64) * depth
        index = np.int64 if max(n, v * depth) > np.iinfo(np.int32).max else np.int32
        self.order = np.empty(v * depth, dtype=index)  # the column's best rows, best first
        self.run_end = np.empty(v * depth, dtype=index)  # per place: where its run of equal values ends
        self.below = np.empty(v)  # the largest value smaller than every value in the prefix (-inf if none)
        for j in range(v):
            part = slice(j * depth, (j + 1) * depth)
            self.order[part], self.run_end[part], self.below[j] = _rank_column(self.zt[j], depth)
        self.ptr = np.zeros(v, dtype=np.int64)  # place of each column's first unselected row
        self.head = np.empty(v, dtype=np.int64)  # that row
        self.head_val = np.empty(v)  # its value
        self.next_val = np.empty(v)  # the largest value below the head's run (-inf if none)
        self._refresh(np.arange(v))

    def _refresh(self, cols: np.ndarray) -> None:
        """Recompute head, head_val and next_val of `cols` from their pointers."""
        live, done = cols[self.ptr[cols] < self.depth], cols[self.ptr[cols] >= self.depth]
        self.head_val[done] = self.next_val[done] = -np.inf  # every row selected (only when k = N)
        pos = self.off[live] + self.ptr[live]
        self.head[live] = self.order[pos]
        self.head_val[live] = self.values[self.z_off[live] + self.head[live]]
        nxt = self.run_end[pos]
        inside = nxt < self.depth
        self.next_val[live] = self.below[live]
        at = live[inside]
        self.next_val[at] = self.values[self.z_off[at] + self.order[self.off[at] + nxt[inside]]]

    def advance(self, cols: np.ndarray, selected: np.ndarray) -> None:
        """Move the pointers of `cols` (forward only) past selected rows, and refresh those columns' heads."""
        if cols.size > 4:
            ptr = self.ptr[cols] + 1
            moving = np.arange(cols.size)
            while moving.size:
                moving = moving[ptr[moving] < self.depth]
                moving = moving[selected[self.order[self.off[cols[moving]] + ptr[moving]]]]
                ptr[moving] += 1
            self.ptr[cols] = ptr
            self._refresh(cols)
            return
        # The usual case, a row that heads one or a few columns: the same steps on scalars, which is quicker.
        for j in cols.tolist():
            base, p = j * self.depth, int(self.ptr[j]) + 1
            while p < self.depth and selected[self.order[base + p]]:
                p += 1
            self.ptr[j] = p
            if p == self.depth:
                self.head_val[j] = self.next_val[j] = -np.inf
                continue
            row, nxt = int(self.order[base + p]), int(self.run_end[base + p])
            self.head[j], self.head_val[j] = row, self.values[j * self.n + row]
            self.next_val[j] = self.values[j * self.n + self.order[base + nxt]] if nxt < self.depth else self.below[j]

    def lowest_unselected_at(self, cols: np.ndarray, mean: np.ndarray, best: float, selected: np.ndarray) -> int:
        """Lowest unselected row whose gap in one of `cols` equals `best` (a direct pass over those columns)."""
        return min(int(np.flatnonzero((self.zt[j] - mean[j] == best) & ~selected)[0]) for j in cols)


def _rank_column(values: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The first `depth` rows by (value desc, row asc); per place, the end of its run of equal values (at most
    `depth`); and the largest value smaller than every value in that prefix (-inf if none)."""
    n = values.size
    if depth < n:
        cut = np.partition(values, n - depth)[n - depth]  # the depth-th largest value
        above = np.flatnonzero(values > cut)
        rows = np.concatenate([above, np.flatnonzero(values == cut)[: depth - above.size]])
        rest = values[values < cut]
        below = float(rest.max()) if rest.size else -np.inf
    else:
        rows, below = np.arange(n), -np.inf
    order = rows[np.argsort(-values[rows])]
    ranked = values[order]
    new_run = np.r_[True, ranked[1:] != ranked[:-1]]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], depth]
    tied = np.flatnonzero(ends - starts > 1)
    if tied.size > 64:  # equal values in ascending row order: sort by (run, row) packed in one integer
        run = np.cumsum(new_run) - 1
        order = np.sort(run * n + order) - run * n
    else:
        for r in tied.tolist():
            order[starts[r] : ends[r]].sort()
    return order, np.repeat(ends, ends - starts), below


def check(params: dict) -> None:
    less.check(params)


@register("bids", check=check, shared={**less.DEFAULTS, "warmup_fraction": 1.0})
def select(ctx: SelectionContext, **settings: object) -> Selection:
    """BIDS on the LESS influence matrix (BIDS' setup: the warm-up covers the whole pool, 4 epochs)."""
    matrix, val_tasks = less.influence_matrix(ctx, settings)
    order = bids_order(np.asarray(matrix), ctx.k)
    counts = {str(t): int(c) for t, c in zip(*np.unique(val_tasks, return_counts=True))}
    if len(set(counts.values())) > 1:  # tasks enter BIDS through their number of columns
        log.warning("BIDS assumes equal validation examples per task (the paper: 50); this pool has %s", counts)
    return Selection(ids=list(ctx.pool.ids[order]), info={"validation_per_task": counts})
