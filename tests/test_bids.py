"""BIDS core: the fast per-column selection makes exactly the literal loop's choices, in the same order."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from harness import REPO_ROOT
from harness.selection import load_plugins


@pytest.fixture(scope="module")
def bids():
    """selectors/bids.py as the plugin loader imports it (selectors/ is a folder of files, not a package)."""
    load_plugins()
    path = (REPO_ROOT / "selectors" / "bids.py").resolve()
    return next(m for m in list(sys.modules.values()) if Path(getattr(m, "__file__", None) or "").resolve() == path)


def literal_bids(z: np.ndarray, k: int) -> list[int]:
    """The paper's loop, O(k N |V|), on the z-scored matrix: score every unselected row against the mean of the
    selected rows (also the benchmark's obvious way)."""
    n, v = z.shape
    selected = np.zeros(n, dtype=bool)
    total = np.zeros(v)
    order = []
    for t in range(k):
        mean = total / t if t else np.zeros(v)
        scores = (z - mean).max(axis=1)
        scores[selected] = -np.inf
        i = int(np.argmax(scores))
        order.append(i)
        selected[i] = True
        total += z[i]
    return order


def random_matrix(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A random attribution matrix of one of several tie-heavy or awkward kinds."""
    n, v = int(rng.integers(1, 40)), int(rng.integers(1, 9))
    if kind == "normal":
        return rng.normal(size=(n, v))
    if kind == "small_int":
        return rng.integers(-2, 3, size=(n, v)).astype(float)
    if kind == "binary":
        return rng.integers(0, 2, size=(n, v)).astype(float)
    if kind == "duplicate_rows":
        base = rng.integers(-3, 4, size=(max(1, n // 3), v)).astype(float)
        return base[rng.integers(0, len(base), size=n)]
    if kind == "constant_columns":
        a = rng.normal(size=(n, v))
        a[:, rng.random(v) < 0.5] = rng.normal()
        return a
    if kind == "rounding":
        # Values of very different sizes: after a big row is selected, distinct tiny values round to the same gap.
        a = rng.integers(1, 1000, size=(n, v)) * 1e-20
        big = rng.random((n, v)) < 0.2
        a[big] = rng.choice([-1.0, 1.0], size=int(big.sum()))
        return a
    raise ValueError(kind)


KINDS = ["normal", "small_int", "binary", "duplicate_rows", "constant_columns", "rounding"]


@pytest.mark.parametrize("kind", KINDS)
def test_fast_order_equals_literal_loop_on_random_matrices(bids, kind):
    rng = np.random.default_rng(KINDS.index(kind))
    for _ in range(60):
        a = random_matrix(rng, kind)
        n = a.shape[0]
        for k in sorted({1, n, int(rng.integers(1, n + 1))}):
            fast = bids.bids_order(a, k)
            assert fast.tolist() == literal_bids(bids.zscore_columns(a), k), (kind, a.shape, k)
            assert len(set(fast.tolist())) == k


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 1), (2, 2)])
def test_edge_shapes(bids, shape):
    a = np.random.default_rng(1).normal(size=shape)
    for k in range(1, shape[0] + 1):
        assert bids.bids_order(a, k).tolist() == literal_bids(bids.zscore_columns(a), k)


def test_larger_matrix_and_float32_input(bids):
    a = np.random.default_rng(7).normal(size=(400, 30)).astype(np.float32)
    a[::7] = a[3]  # some duplicate rows
    assert bids.bids_order(a, 300).tolist() == literal_bids(bids.zscore_columns(a), 300)


def test_many_tied_runs_per_column(bids):
    # Thousands of rows over 100 distinct values: every column has many runs of equal values to order by row.
    a = np.random.default_rng(8).integers(0, 100, size=(3000, 4)).astype(float)
    assert bids.bids_order(a, 800).tolist() == literal_bids(bids.zscore_columns(a), 800)


def test_rounding_ties_are_resolved_not_just_exact_ties(bids, monkeypatch):
    """Rows 2..5 have distinct z-scores that all round to the same gap once row 0 is selected; the lowest wins."""
    a = np.array([[1.0], [-1.0], [1e-20], [2e-20], [3e-20], [4e-20]])
    z = bids.zscore_columns(a)[:, 0]
    assert len(set(z[2:].tolist())) == 4 and len(set((z[2:] - z[0]).tolist())) == 1
    assert bids.bids_order(a, 6).tolist() == literal_bids(bids.zscore_columns(a), 6) == [0, 2, 3, 4, 5, 1]
    # The same when the head's run of equal values reaches the end of the sorted prefix (k + 1 places):
    # the tie with the smaller values below the prefix must still be seen.
    b = np.array([[1.0], [-1.0], [1e-20], [2e-20], [3e-20], [3e-20], [3e-20]])
    assert bids.bids_order(b, 2).tolist() == literal_bids(bids.zscore_columns(b), 2) == [0, 2]
    # Without the rounding-tie pass the column head (largest value) would win: the pass is what is tested.
    monkeypatch.setattr(bids._Columns, "lowest_unselected_at", lambda self, *args: self.n)
    assert bids.bids_order(a, 2).tolist() == [0, 5]
    assert bids.bids_order(b, 2).tolist() == [0, 4]


def test_hand_worked_example(bids):
    # Column 0 = (5, 4, 0, 0, 0, 0): mean 1.5, std sqrt(27.5 / 6) = 2.1409,
    #   z0 = (1.635, 1.168, -0.701, -0.701, -0.701, -0.701).
    # Column 1 = (0, 0, 1, 1, 1, 0): mean 0.5, std 0.5, z1 = (-1, -1, 1, 1, 1, -1).
    # Step 1, mean 0: row maxima (1.635, 1.168, 1, 1, 1, -0.701) -> row 0.
    # Step 2, mean = z[0] = (1.635, -1): gaps row 1 (-0.467, 0) -> 0; rows 2-4 (-2.336, 2) -> 2;
    #   row 5 (-2.336, 0) -> 0. Rows 2, 3, 4 tie at exactly 2 -> the lowest, row 2.
    # Step 3, mean = ((1.635 - 0.701) / 2, (-1 + 1) / 2) = (0.467, 0): row 1 (0.701, -1) -> 0.701;
    #   rows 3, 4 (-1.168, 1) -> 1; row 5 -> -1 -> row 3.
    # Step 4, mean = (0.078, 0.333): row 1 (1.090, -1.333) -> 1.090; row 4 (-0.779, 0.667) -> 0.667 -> row 1.
    # Step 5, mean = (0.350, 0): row 4 (-1.051, 1) -> 1; row 5 (-1.051, -1) -> -1.051 -> row 4; then row 5.
    # Ranking by the largest z-score alone would take row 1 second; BIDS takes it fourth, after column 1's rows.
    a = np.array([[5, 0], [4, 0], [0, 1], [0, 1], [0, 1], [0, 0]], dtype=float)
    assert bids.bids_order(a, 6).tolist() == [0, 2, 3, 1, 4, 5]
    assert bids.bids_order(a, 3).tolist() == [0, 2, 3]


def test_zscore_columns(bids):
    rng = np.random.default_rng(3)
    a = rng.normal(3.0, 2.0, size=(50, 4))
    a[:, 2] = 0.1  # a column with zero spread contributes zeros
    z = bids.zscore_columns(a)
    assert z.dtype == np.float64
    np.testing.assert_array_equal(z[:, 2], 0.0)
    expected = (a - a.mean(axis=0)) / a.std(axis=0)
    np.testing.assert_allclose(np.delete(z, 2, axis=1), np.delete(expected, 2, axis=1), rtol=1e-12)
    np.testing.assert_allclose(np.delete(z, 2, axis=1).mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.delete(z, 2, axis=1).std(axis=0), 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    "matrix, k, message",
    [
        (np.ones(5), 1, "2-D"),
        (np.ones((2, 3, 4)), 1, "2-D"),
        (np.ones((0, 3)), 1, "2-D"),
        (np.ones((4, 0)), 1, "2-D"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 1, "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), 1, "NaN"),
        (np.ones((3, 2)), 0, "k must be"),
        (np.ones((3, 2)), 4, "k must be"),
        (np.ones((3, 2)), 1.5, "k must be"),
        (np.array([["a"], ["b"]]), 1, "real numbers"),
    ],
)
def test_bad_input_is_one_line_value_error(bids, matrix, k, message):
    with pytest.raises(ValueError, match=message) as info:
        bids.bids_order(matrix, k)
    assert "\n" not in str(info.value)
