"""Influence scoring: the streamed checkpoint-weighted cosine matrix, its aggregations, and the global top-k."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.signals.influence import _release_pages, aggregate, influence_matrix, lr_weights, top_k


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dense_influence(train, val, weights) -> np.ndarray:
    """The direct computation in float64: every checkpoint's full cosine matrix, weighted and summed."""
    return sum(w * (np.asarray(t, np.float64) @ np.asarray(v, np.float64).T) for t, v, w in zip(train, val, weights))


@pytest.fixture()
def features():
    rng = np.random.default_rng(0)
    train = [unit_rows(rng, 103, 16) for _ in range(3)]
    val = [unit_rows(rng, 9, 16) for _ in range(3)]
    return train, val, lr_weights([2e-5, 1.5e-5, 5e-6])


def test_lr_weights_renormalise_average_learning_rates():
    np.testing.assert_allclose(lr_weights([2e-5, 1e-5, 1e-5]), [0.5, 0.25, 0.25])
    assert lr_weights([3.0]).tolist() == [1.0]
    for bad in ([], [0.0, 0.0], [1.0, -1.0], [1.0, np.nan], [[1.0]]):
        with pytest.raises(HarnessError, match="learning rates"):
            lr_weights(bad)


@pytest.mark.parametrize("block_rows", [1, 10, 103, 65536])
def test_influence_matrix_matches_dense_for_any_block_size(features, block_rows):
    train, val, w = features
    got = influence_matrix(train, val, w, block_rows=block_rows)
    assert got.shape == (103, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, dense_influence(train, val, w), rtol=1e-5, atol=1e-6)


def test_memmapped_float16_store_streamed_in_small_blocks(features, tmp_path):
    train, val, w = features
    stores = []
    for c, t in enumerate(train):
        path = tmp_path / f"train_{c}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=t.shape)
        mm[:] = t
        mm.flush()
        del mm
        stores.append(np.load(path, mmap_mode="r"))
    val16 = [v.astype(np.float16) for v in val]
    got = influence_matrix(stores, val16, w, block_rows=7)
    # Same float16 values, computed densely in float64: only float32 accumulation differs.
    np.testing.assert_allclose(got, dense_influence(stores, val16, w), rtol=1e-5, atol=1e-6)
    # float16 rounding of the features moves the cosines only slightly.
    np.testing.assert_allclose(got, dense_influence(train, val, w), atol=5e-3)
    assert all(np.array_equal(s, t.astype(np.float16)) for s, t in zip(stores, train))  # the store is untouched


def test_release_pages_keeps_data_readable_and_skips_private_maps(tmp_path):
    path = tmp_path / "x.npy"
    data = np.arange(5000 * 8, dtype=np.float32).reshape(5000, 8)
    np.save(path, data)
    for mode in ("r", "r+", "c"):
        store = np.load(path, mmap_mode=mode)
        if mode == "c":
            store[0, 0] = -1.0  # a private change that releasing pages would lose
        for start in range(0, 5000, 999):
            _release_pages(store[start : start + 999])
        assert store[0, 0] == (-1.0 if mode == "c" else 0.0)
        np.testing.assert_array_equal(store[1:], data[1:])


def test_weights_and_checkpoints_matter(features):
    train, val, _ = features
    first_only = influence_matrix(train, val, np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(first_only, train[0] @ val[0].T, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first_only, influence_matrix(train, val, np.array([0.0, 1.0, 0.0])))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, v, w: (t[:2], v, w), "same number"),
        (lambda t, v, w: (t, v, w[:2]), "same number"),
        (lambda t, v, w: ([], [], np.array([])), "same number"),
        (lambda t, v, w: ([t[0][:, :8], t[1], t[2]], v, w), "same feature dimension"),
        (lambda t, v, w: ([t[0][:50], t[1], t[2]], v, w), "same examples"),
        (lambda t, v, w: (t, [v[0], v[1][:3], v[2]], w), "same examples"),
        (lambda t, v, w: (t, v, np.array([1.0, np.inf, 0.0])), "finite"),
    ],
)
def test_influence_matrix_rejects_mismatched_checkpoints(features, change, message):
    t, v, w = change(*features)
    with pytest.raises(HarnessError, match=message) as info:
        influence_matrix(t, v, w)
    assert "\n" not in str(info.value)


def test_influence_matrix_rejects_bad_block_rows(features):
    with pytest.raises(HarnessError, match="block_rows"):
        influence_matrix(*features, block_rows=0)


def test_aggregations_against_direct_loops():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(40, 7)).astype(np.float32)
    tasks = np.array(["b", "a", "b", "c", "a", "b", "c"])
    task_max = aggregate(m, tasks, "task_max")
    for i in range(40):
        means = [np.mean([float(m[i, j]) for j in range(7) if tasks[j] == t]) for t in ("a", "b", "c")]
        assert task_max[i] == pytest.approx(max(means), rel=1e-12)
        assert aggregate(m, tasks, "instance_max")[i] == max(float(x) for x in m[i])
        assert aggregate(m, None, "sum")[i] == pytest.approx(sum(float(x) for x in m[i]), rel=1e-12)
    np.testing.assert_array_equal(aggregate(m, tasks), task_max)  # task_max is the default


def test_task_max_differs_from_instance_max():
    # Example 0 helps one validation example a lot; example 1 helps every example of task "a" a little.
    m = np.array([[0.9, -0.9, 0.0, 0.0], [0.3, 0.3, 0.0, 0.0]])
    tasks = np.array(["a", "a", "b", "b"])
    assert top_k(aggregate(m, tasks, "instance_max"), 1).tolist() == [0]
    assert top_k(aggregate(m, tasks, "task_max"), 1).tolist() == [1]


def test_aggregate_errors_are_one_line():
    m = np.zeros((3, 2))
    with pytest.raises(HarnessError, match="task_max, instance_max, sum") as info:
        aggregate(m, np.array(["a", "b"]), "mean")
    assert "\n" not in str(info.value)
    with pytest.raises(HarnessError, match="one task label per validation column"):
        aggregate(m, np.array(["a"]), "task_max")
    with pytest.raises(HarnessError, match="one task label per validation column"):
        aggregate(m, None, "task_max")


def test_top_k_is_descending_with_lowest_index_first_on_ties():
    scores = np.array([0.5, 2.0, 0.5, 1.0, 2.0, 0.5, -1.0])
    assert top_k(scores, 1).tolist() == [1]
    assert top_k(scores, 3).tolist() == [1, 4, 3]
    assert top_k(scores, 5).tolist() == [1, 4, 3, 0, 2]
    assert top_k(scores, 7).tolist() == [1, 4, 3, 0, 2, 5, 6]
    rng = np.random.default_rng(2)
    for _ in range(50):
        s = rng.integers(0, 4, size=int(rng.integers(1, 30))).astype(float)
        k = int(rng.integers(1, s.size + 1))
        by_sort = sorted(range(s.size), key=lambda i: (-s[i], i))[:k]
        assert top_k(s, k).tolist() == by_sort


@pytest.mark.parametrize(
    "scores, k", [(np.ones(3), 0), (np.ones(3), 4), (np.array([1.0, np.nan]), 1), (np.ones((2, 2)), 1)]
)
def test_top_k_rejects_bad_input(scores, k):
    with pytest.raises(HarnessError):
        top_k(scores, k)


def rss_file_kib() -> int:
    """Resident pages of mapped files in this process (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_streaming_a_memmap_does_not_keep_it_resident(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.full((2048, 8192), 1 / 8192**0.5, dtype=np.float16))  # 32 MiB of unit rows
    store = np.load(path, mmap_mode="r")
    val = np.full((3, 8192), 1 / 8192**0.5, dtype=np.float32)
    before = rss_file_kib()
    got = influence_matrix([store], [val], np.array([1.0]), block_rows=256)
    streamed = rss_file_kib() - before
    np.testing.assert_allclose(got, 1.0, rtol=1e-3)
    float(np.asarray(store, dtype=np.float32).sum())  # the control: reading without releasing keeps the pages
    kept = rss_file_kib() - before
    assert streamed < 8 * 1024 < 24 * 1024 < kept, (streamed, kept)
