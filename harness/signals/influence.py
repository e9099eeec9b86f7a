"""LESS-style influence: per-checkpoint cosines between training and validation gradient features, summed with
learning-rate weights, then aggregated into one score per training example (Xia et al., ICML 2024).

Pure numpy. Training feature stores may be far larger than memory (e.g. 1M x 8192 float16 = 16 GiB memmaps):
they are streamed in row blocks, and the pages of a memory-mapped block are handed back once it is used, so
the process keeps about one block plus the N x |V| result resident.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np

from harness.errors import HarnessError

AGGREGATIONS = ("task_max", "instance_max", "sum")
"""How the N x |V| matrix becomes one score per training example (see `aggregate`)."""


def lr_weights(avg_lrs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Checkpoint weights for the influence sum: each epoch's average learning rate, renormalised to sum to 1."""
    lrs = np.asarray(avg_lrs, dtype=np.float64)
    if lrs.ndim != 1 or lrs.size == 0 or not np.isfinite(lrs).all() or (lrs < 0).any() or lrs.sum() <= 0:
        raise HarnessError(
            f"checkpoint learning rates must be a non-empty list of finite values >= 0 with a positive sum, "
            f"got {lrs.tolist()}; check the warm-up run's learning-rate log"
        )
    return lrs / lrs.sum()


def influence_matrix(
    train_stores: list[np.ndarray], val_feats: list[np.ndarray], weights: np.ndarray, block_rows: int = 8192
) -> np.ndarray:
    """N x |V| float32 matrix: sum over checkpoints c of weights[c] * cosine(train_c[i], val_c[j]).

    Features must already be L2-normalised, so dot products are cosines. Each training store (N x d, any float
    dtype, often a read-only memmap) is read `block_rows` rows at a time and accumulated in float32.
    """
    weights = np.asarray(weights, dtype=np.float64)
    _check_shapes(train_stores, val_feats, weights, block_rows)
    n, nv = train_stores[0].shape[0], val_feats[0].shape[0]
    out = np.zeros((n, nv), dtype=np.float32)
    for store, val, w in zip(train_stores, val_feats, weights):
        scaled_val_t = np.ascontiguousarray((np.asarray(val, dtype=np.float64) * w).T, dtype=np.float32)
        for start in range(0, n, block_rows):
            view = store[start : start + block_rows]
            block = np.asarray(view, dtype=np.float32)
            out[start : start + len(block)] += block @ scaled_val_t
            del block
            _release_pages(view)
    return out


def aggregate(matrix: np.ndarray, val_tasks: np.ndarray | None, how: str = "task_max") -> np.ndarray:
    """One float64 score per training example from the N x |V| influence matrix.

    task_max (LESS, the default): mean over each target task's validation columns, then the max over tasks;
    instance_max: max over validation columns; sum: sum over validation columns.
    """
    if how not in AGGREGATIONS:
        raise HarnessError(f"unknown influence aggregate {how!r}; use one of {', '.join(AGGREGATIONS)}")
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[1] == 0:
        raise HarnessError(f"influence matrix must be N x |V| with |V| >= 1, got shape {m.shape}")
    if how == "instance_max":
        return m.max(axis=1).astype(np.float64)
    if how == "sum":
        return m.sum(axis=1, dtype=np.float64)
    tasks = np.asarray(val_tasks) if val_tasks is not None else None
    if tasks is None or tasks.shape != (m.shape[1],):
        got = "none" if tasks is None else f"shape {tasks.shape}"
        raise HarnessError(f"aggregate='task_max' needs one task label per validation column ({m.shape[1]}), got {got}")
    names = np.unique(tasks)
    per_task = np.empty((m.shape[0], len(names)))
    for t, name in enumerate(names):
        per_task[:, t] = m[:, tasks == name].mean(axis=1, dtype=np.float64)
    return per_task.max(axis=1)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first; equal scores go to the lowest index first."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or np.isnan(s).any():
        raise HarnessError(f"scores must be a 1-D array without NaN, got shape {s.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= s.size:
        raise HarnessError(f"top_k needs an integer k in [1, {s.size}] (the number of scores), got {k!r}")
    if k == s.size:
        keep = np.arange(s.size)
    else:
        threshold = np.partition(s, s.size - k)[s.size - k]  # the k-th largest score
        above = np.flatnonzero(s > threshold)
        keep = np.concatenate([above, np.flatnonzero(s == threshold)[: k - above.size]])
    return keep[np.lexsort((keep, -s[keep]))]


def _check_shapes(train_stores, val_feats, weights: np.ndarray, block_rows: int) -> None:
    """One-line errors for checkpoint lists that do not line up."""
    if not train_stores or len(train_stores) != len(val_feats) or weights.shape != (len(train_stores),):
        raise HarnessError(
            f"influence needs the same number (>= 1) of training stores, validation feature sets and weights, "
            f"got {len(train_stores)}, {len(val_feats)} and {weights.size}"
        )
    if not np.isfinite(weights).all():
        raise HarnessError(f"checkpoint weights must be finite, got {weights.tolist()}")
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise HarnessError(f"block_rows must be a positive integer, got {block_rows!r}")
    n, nv = train_stores[0].shape[0], val_feats[0].shape[0]
    for c, (store, val) in enumerate(zip(train_stores, val_feats)):
        if store.ndim != 2 or val.ndim != 2 or store.shape[1] != val.shape[1]:
            raise HarnessError(
                f"checkpoint {c}: training features {store.shape} and validation features {val.shape} must both "
                f"be 2-D with the same feature dimension; rebuild the feature store"
            )
        if store.shape[0] != n or val.shape[0] != nv:
            raise HarnessError(
                f"checkpoint {c} has {store.shape[0]} training and {val.shape[0]} validation rows, checkpoint 0 "
                f"has {n} and {nv}; every checkpoint must cover the same examples"
            )


def _release_pages(view: np.ndarray) -> None:
    """Drop a consumed block of a shared memory map from this process's resident memory.

    The data stays in the file and the page cache; only this process's mapping lets go of it, so reading a store
    larger than memory does not grow the resident set. Private (copy-on-write) maps are left alone.
    """
    if not isinstance(view, np.memmap) or view.mode == "c" or not view.flags.c_contiguous or view.nbytes == 0:
        return
    mm = view.base
    while mm is not None and not isinstance(mm, mmap.mmap):
        mm = getattr(mm, "base", None)
    if mm is None or mm.closed:
        return
    base_address = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    start = view.__array_interface__["data"][0] - base_address
    page_start = start - start % mmap.PAGESIZE
    end = min(start + view.nbytes, len(mm))
    mm.madvise(mmap.MADV_DONTNEED, page_start, end - page_start)
