"""Edge cases and paper fidelity of the non-influence selectors (RS2, EL2N/GraNd keep rules, kMQ), on fake signals:
no model is trained here, so every case runs in milliseconds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import REPO_ROOT
from harness.clustering import kmeans
from harness.errors import HarnessError
from harness.pool import PoolView
from harness.scores import warmup_seed
from harness.selection import SelectionContext, equal_quotas, get_selector, keep_by_score, load_plugins, run_selector


def plugin(name: str):
    """The loaded module of selectors/<name>.py (plugins load under private module names)."""
    load_plugins()
    path = (REPO_ROOT / "selectors" / f"{name}.py").resolve()
    return next(m for m in list(sys.modules.values()) if Path(getattr(m, "__file__", "") or "").resolve() == path)


def view(prompts: list[str], responses: list[str], tasks: list[str] | None = None) -> PoolView:
    n = len(prompts)
    frame = pd.DataFrame(
        {"id": [f"e{i}" for i in range(n)], "task": tasks or ["t"] * n, "prompt": prompts, "response": responses}
    )
    return PoolView(frame=frame, validation=frame.iloc[:0])


class FakeSignals:
    """Stands in for the signal service: fixed embeddings, per-warm-up scores derived from the warm-up's seed."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors, self.used, self.warmups = vectors, [], []

    def warmup(self, **spec):
        self.warmups.append(spec)
        return spec["seed"]

    def embeddings(self, warm) -> np.ndarray:
        return self.vectors

    def losses(self, warm, rows=None) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(warm % (2**32))
        every = {"loss": rng.random(len(self.vectors)), "el2n": rng.random(len(self.vectors))}
        return every if rows is None else {name: values[rows] for name, values in every.items()}

    def grad_norms(self, warm) -> np.ndarray:
        return np.random.default_rng(warm % (2**32) + 1).random(len(self.vectors))


def separated(groups: int, per_group: int, dim: int = 8) -> np.ndarray:
    """Points in `groups` tight, far-apart groups (k-means finds the groups exactly)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(groups, dim)) * 100
    return np.repeat(centres, per_group, axis=0) + rng.normal(size=(groups * per_group, dim)) * 0.01


def run(name: str, pool: PoolView, k: int, seed: int = 0, signals=None, epochs: int = 1, **params):
    load_plugins()
    ctx = SelectionContext(pool=pool, budget=k / pool.n, k=k, seed=seed, signals=signals, epochs=epochs)
    return run_selector(get_selector(name), ctx, params)


def numbered(n: int) -> PoolView:
    return view([f"p{i}" for i in range(n)], [f"r{i}" for i in range(n)])


# ---------------------------------------------------------------- kMQ


def test_kmq_with_more_clusters_than_k_draws_the_clusters_at_random_not_by_label():
    """K > k: each cluster's equal quota is below one, so k clusters give one example each; which ones must not be
    the k lowest k-means labels (labels follow k-means++ seeding order, which favours outlying regions)."""
    vectors = separated(groups=20, per_group=3)
    pool = numbered(len(vectors))
    picked = []
    for seed in range(4):
        sel = run("diversity", pool, 5, seed=seed, signals=FakeSignals(vectors), n_clusters=20)
        labels = kmeans(vectors, 20, seed)
        rows = pool.frame.set_index("id").index.get_indexer(sel.ids)
        assert len(set(labels[rows])) == 5  # one per cluster
        picked.append(set(labels[rows].tolist()))
    assert any(p != set(range(5)) for p in picked), picked


def test_equal_quotas_water_fill_and_share_the_remainder_at_random():
    sizes = np.array([1, 5, 5, 5])
    assert equal_quotas(sizes, 8).tolist() == [1, 3, 2, 2]  # without an rng: lowest index first
    got = [equal_quotas(sizes, 8, np.random.default_rng(s)).tolist() for s in range(12)]
    assert all(q[0] == 1 and sorted(q[1:]) == [2, 2, 3] for q in got)
    assert len({tuple(q) for q in got}) > 1  # the one-more group varies with the seed
    assert got[3] == equal_quotas(sizes, 8, np.random.default_rng(3)).tolist()  # and is fixed by it
    assert equal_quotas(np.array([0, 3, 0]), 5, np.random.default_rng(0)).tolist() == [0, 3, 0]  # capped at the pool


@pytest.mark.parametrize("k", [1, 7, 30])
@pytest.mark.parametrize("n_clusters", [None, 1, 30])
def test_kmq_keeps_exactly_k_distinct_and_is_seeded(k, n_clusters):
    vectors = separated(groups=6, per_group=5)
    pool = numbered(len(vectors))
    a = run("diversity", pool, k, seed=1, signals=FakeSignals(vectors), n_clusters=n_clusters)
    b = run("diversity", pool, k, seed=1, signals=FakeSignals(vectors), n_clusters=n_clusters)
    assert len(a.ids) == k == len(set(a.ids)) and a.ids == b.ids
    if k < len(vectors):  # another seed, another subset
        seeds = {
            tuple(run("diversity", pool, k, seed=s, signals=FakeSignals(vectors), n_clusters=n_clusters).ids)
            for s in range(2, 5)
        }
        assert len(seeds | {tuple(a.ids)}) > 1


def test_kmq_equal_quota_redistributes_what_small_clusters_cannot_fill():
    """Groups of 1, 2 and 27: a quota of 10 each leaves 9 of the two small ones to the large cluster."""
    rng = np.random.default_rng(0)
    vectors = np.concatenate([np.full((1, 4), 100.0), np.full((2, 4), -100.0), rng.normal(size=(27, 4)) * 0.1])
    assert len(set(run("diversity", numbered(30), 30, signals=FakeSignals(vectors), n_clusters=3).ids)) == 30
    sel = run("diversity", numbered(30), 12, signals=FakeSignals(vectors), n_clusters=3)
    rows = sorted(int(i[1:]) for i in sel.ids)
    assert rows[:3] == [0, 1, 2] and len(rows) == 12  # both small clusters whole, 9 from the large one


def test_kmq_identical_embeddings_leave_empty_clusters_and_still_keep_k():
    vectors = np.ones((20, 4), dtype=np.float32)
    with pytest.warns(Warning):  # k-means: fewer distinct points than clusters
        sel = run("diversity", numbered(20), 7, signals=FakeSignals(vectors), n_clusters=5)
    assert len(set(sel.ids)) == 7 and sel.info["cluster_sizes_min_max"] == [0, 20]


def test_kmq_tfidf_on_one_word_one_example_and_no_words():
    sel = run("diversity", view(["a"] * 10, [""] * 10), 3, embedding="tfidf")  # a one-word vocabulary
    assert len(set(sel.ids)) == 3
    sel = run("diversity", view(["a b"], ["c"]), 1, embedding="tfidf")  # one example: K = sqrt(1) = 1
    assert sel.ids == ["e0"] and sel.info["n_clusters"] == 1
    with pytest.raises(HarnessError, match="embedding=rds") as err:
        run("diversity", view([" "] * 4, [""] * 4), 2, embedding="tfidf")
    assert "\n" not in str(err.value)


def test_kmq_more_clusters_than_examples_is_a_one_line_error():
    with pytest.raises(HarnessError, match="use fewer clusters") as err:
        run("diversity", numbered(10), 2, signals=FakeSignals(np.eye(10)), n_clusters=11)
    assert "\n" not in str(err.value)


def test_iterative_kmq_keeps_k_trains_on_the_selection_and_skips_empty_rounds():
    vectors = separated(groups=6, per_group=5)
    signals = FakeSignals(vectors)
    sel = run("diversity", numbered(30), 12, signals=signals, n_clusters=6, rounds=3, temperature=0.5)
    assert len(set(sel.ids)) == 12 and len(sel.info["rounds"]) == 2
    trained = [w["ids"] for w in signals.warmups if "ids" in w]
    assert [len(t) for t in trained] == [4, 8] and set(trained[0]) < set(trained[1]) < set(sel.ids)
    again = run("diversity", numbered(30), 12, signals=FakeSignals(vectors), n_clusters=6, rounds=3, temperature=0.5)
    assert again.ids == sel.ids
    signals = FakeSignals(vectors)
    sel = run("diversity", numbered(30), 2, signals=signals, n_clusters=6, rounds=3)  # k < rounds
    assert len(set(sel.ids)) == 2 and len([w for w in signals.warmups if "ids" in w]) == 1


# ---------------------------------------------------------------- RS2


@pytest.mark.parametrize("n,k,epochs", [(10, 3, 20), (10, 7, 20), (10, 10, 4), (10, 1, 25), (7, 6, 30), (9, 9, 1)])
def test_rs2_without_replacement_covers_the_pool_once_per_pass_across_epoch_boundaries(n, k, epochs):
    rs2 = plugin("rs2")
    schedule = rs2.without_replacement(np.random.default_rng(0), n, k, epochs)
    assert len(schedule) == epochs and all(len(e) == k == len(set(e.tolist())) for e in schedule)
    flat = np.concatenate(schedule)
    for start in range(0, len(flat) - n + 1, n):  # every full pass holds every example exactly once
        assert sorted(flat[start : start + n].tolist()) == list(range(n))
    again = rs2.without_replacement(np.random.default_rng(0), n, k, epochs)
    assert all(np.array_equal(a, b) for a, b in zip(schedule, again))


def test_rs2_with_replacement_draws_an_independent_subset_per_epoch():
    rs2 = plugin("rs2")
    schedule = rs2.with_replacement(np.random.default_rng(0), 50, 10, 8)
    assert all(len(set(e.tolist())) == 10 for e in schedule)
    assert len({tuple(sorted(e.tolist())) for e in schedule}) == 8
    counts = np.bincount(np.concatenate(schedule), minlength=50)
    assert counts.max() >= 2  # repeats before a full pass are allowed (and expected)


def test_rs2_schedule_has_the_recipe_epochs_and_k_per_epoch():
    sel = run("rs2", numbered(40), 6, epochs=9)
    assert sel.kind == "schedule" and len(sel.epochs) == 9 and all(len(e) == 6 for e in sel.epochs)
    assert sel.epochs == run("rs2", numbered(40), 6, epochs=9).epochs


# ---------------------------------------------------------------- EL2N / GraNd keep rules and averaging


def test_keep_rules_offset_and_ties():
    scores = np.arange(10.0)  # row i scores i
    assert keep_by_score(scores, 3, "hardest").tolist() == [9, 8, 7]
    assert keep_by_score(scores, 3, "easiest").tolist() == [0, 1, 2]
    assert keep_by_score(scores, 3, "drop_top", 0.2).tolist() == [7, 6, 5]  # skips the top 20% of the pool
    assert keep_by_score(scores, 3, "drop_top", 0.0).tolist() == [9, 8, 7]
    assert keep_by_score(scores, 9, "drop_top", 0.2).tolist() == list(range(8, -1, -1))  # offset shrinks to fit
    ties = np.array([1.0, 2.0, 2.0, 2.0, 0.0])
    assert keep_by_score(ties, 2, "hardest").tolist() == [1, 2]  # ties by row
    assert keep_by_score(ties, 2, "drop_top", 0.2).tolist() == [2, 3]
    assert keep_by_score(np.ones(5), 2, "easiest").tolist() == [0, 1]


@pytest.mark.parametrize("name,signal", [("el2n", "el2n"), ("grand", "grand")])
def test_scores_are_the_mean_over_independent_warm_up_seeds(name, signal):
    vectors = np.zeros((40, 2))
    signals = FakeSignals(vectors)
    sel = run(name, numbered(40), 8, seed=5, signals=signals, warmup_seeds=3, keep="hardest")
    seeds = [w["seed"] for w in signals.warmups]
    load_plugins()
    ctx = SelectionContext(pool=numbered(40), budget=0.2, k=8, seed=5)
    assert seeds == [warmup_seed(ctx, i) for i in range(3)] and len(set(seeds)) == 3
    per_seed = [signals.losses(s)["el2n"] if signal == "el2n" else signals.grad_norms(s) for s in seeds]
    expect = np.mean(per_seed, axis=0)
    np.testing.assert_allclose(sel.scores.to_numpy(), expect)
    assert set(sel.ids) == {f"e{i}" for i in np.argsort(-expect)[:8]}


def test_balanced_random_on_a_pool_with_one_task_keeps_k():
    sel = run("balanced_random", numbered(25), 9, seed=2)
    assert len(set(sel.ids)) == 9
    two = view(["a"] * 12, ["b"] * 12, tasks=["x"] * 2 + ["y"] * 10)
    tasks = [two.frame.set_index("id").loc[i, "task"] for i in run("balanced_random", two, 8).ids]
    assert tasks.count("x") == 2 and tasks.count("y") == 6  # the small task whole, the rest to the other


def tasks_view(sizes: list[int]) -> PoolView:
    """A pool of tasks named a, b, c, ... with the given sizes, interleaved (the rows of one task are not adjacent)."""
    tasks = [name for i in range(max(sizes)) for name, size in zip("abcdefgh", sizes) if i < size]
    return view([f"p{i}" for i in range(len(tasks))], ["r"] * len(tasks), tasks=tasks)


def test_balanced_random_gives_the_remainder_to_tasks_drawn_at_random():
    """k = 8 over 6 tasks: two take one more; which two changes with the seed (not always the first names)."""
    pool = tasks_view([20] * 6)
    task_of = pool.frame.set_index("id")["task"]
    extra = set()
    for seed in range(30):
        counts = task_of.loc[run("balanced_random", pool, 8, seed=seed).ids].value_counts()
        assert counts.sum() == 8 and sorted(counts.tolist()) == [1, 1, 1, 1, 2, 2]
        extra.add(tuple(sorted(counts[counts == 2].index)))
    assert len(extra) > 3 and len({t for pair in extra for t in pair}) == 6, extra


@pytest.mark.parametrize("seed", [0, 3])
def test_balanced_random_without_a_remainder_draws_as_before(seed):
    """k divisible by the number of tasks (none too small): the quota stream is not drawn, and every task's examples
    are ctx.rng()'s draws in task order, as they were before the remainder went to random tasks."""
    pool = tasks_view([30, 25, 40, 22, 35, 50])
    k = 120
    ctx = SelectionContext(pool=pool, budget=k / pool.n, k=k, seed=seed)
    rng, tasks = ctx.rng(), pool.tasks
    expected = np.concatenate(
        [rng.choice(np.flatnonzero(tasks == t), size=k // 6, replace=False) for t in np.unique(tasks)]
    )
    assert run("balanced_random", pool, k, seed=seed).ids == list(pool.ids[np.sort(expected)])
