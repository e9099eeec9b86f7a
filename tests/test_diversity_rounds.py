"""Iterative kMQ (selectors/diversity.py, rounds > 1): a cluster is scored by the losses of its examples selected so
far (the authors' rule, the default) or of all its members (cluster_score=pool); unscored clusters get a neutral
prior; the selection keeps exactly k, is the same for a seed, and rounds=1 run ids do not see the new key."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness import REPO_ROOT, plan
from harness.errors import HarnessError
from harness.identity import identity, identity_hash
from harness.pool import PoolView
from harness.selection import SelectionContext, get_selector, load_plugins, run_selector


def diversity():
    """The loaded module of selectors/diversity.py (plugins load under private module names)."""
    load_plugins()
    path = (REPO_ROOT / "selectors" / "diversity.py").resolve()
    return next(m for m in list(sys.modules.values()) if Path(getattr(m, "__file__", "") or "").resolve() == path)


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    e = np.exp((np.asarray(x) - np.max(x)) / temperature)
    return e / e.sum()


# ---------------------------------------------------------------- the cluster weights


def test_selected_cluster_score_is_the_mean_over_the_scored_rows_not_the_pool():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    sizes = np.bincount(labels)
    loss = np.array([1.0, 9.0, 9.0, 9.0, 4.0, 0.0, 0.0, 0.0])  # pool means: 7 and 1; rows 0 and 4: 1 and 4
    rows = np.array([0, 4])
    selected = diversity().cluster_weights(loss[rows], labels, sizes, 1.0, rows)
    pool = diversity().cluster_weights(loss, labels, sizes, 1.0)
    assert np.allclose(selected, softmax([1.0, 4.0])) and selected[1] > selected[0]
    assert np.allclose(pool, softmax([7.0, 1.0])) and pool[0] > pool[1]
    assert np.allclose(diversity().cluster_weights(loss[rows], labels, sizes, 0.5, rows), softmax([1.0, 4.0], 0.5))


def test_a_cluster_with_nothing_selected_gets_the_mean_of_the_scored_clusters_and_an_empty_one_nothing():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    sizes = np.bincount(labels, minlength=4)  # cluster 3: k-means left it empty
    rows = np.array([0, 1, 2])  # clusters 0 and 1 scored (means 2 and 5), cluster 2 has members but no score
    loss = np.array([1.0, 3.0, 5.0])
    weights = diversity().cluster_weights(loss, labels, sizes, 1.0, rows)
    assert weights[3] == 0 and np.isclose(weights.sum(), 1)
    assert np.allclose(weights[:3], softmax([2.0, 5.0, 3.5]))  # 3.5: the mean of the scored clusters' scores


def test_an_example_without_a_loss_scores_nothing():
    """A response with no tokens has a NaN loss: it must not turn its cluster's weight (and so every weight) NaN."""
    labels = np.array([0, 0, 1, 1])
    loss = np.array([2.0, np.nan, 4.0, 6.0])
    weights = diversity().cluster_weights(loss, labels, np.bincount(labels), 1.0)
    assert np.allclose(weights, softmax([2.0, 5.0]))
    alone = diversity().cluster_weights(np.array([np.nan, 4.0]), labels, np.bincount(labels), 1.0, np.array([0, 2]))
    assert np.allclose(alone, softmax([4.0, 4.0]))  # cluster 0 unscored: the scored clusters' mean


# ---------------------------------------------------------------- the rule end to end, on stand-in signals


class Remembering:
    """Stands in for the signal service: fixed embeddings, and a 'model' (the ids a warm-up trained on) whose loss
    on an example depends on its cluster and on whether it trained on it."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, ids: np.ndarray, trained: dict, untrained: dict):
        self.vectors, self.labels, self.ids = vectors, labels, ids
        self.trained, self.untrained = trained, untrained
        self.used, self.passes = [], []

    def warmup(self, **spec):
        return frozenset(spec["ids"]) if "ids" in spec else None

    def embeddings(self, warm) -> np.ndarray:
        return self.vectors

    def losses(self, warm, rows=None) -> dict[str, np.ndarray]:
        rows = np.arange(len(self.ids)) if rows is None else np.asarray(rows)
        self.passes.append(len(rows))
        table = [self.trained if self.ids[r] in warm else self.untrained for r in rows]
        loss = np.array([t[self.labels[r]] for t, r in zip(table, rows)], dtype=np.float64)
        return {"loss": loss, "el2n": loss}


def grouped(groups: int, per_group: int) -> tuple[PoolView, np.ndarray, np.ndarray]:
    """A pool of `groups` tight, far-apart groups (k-means finds them exactly): the view, vectors, group labels."""
    rng = np.random.default_rng(0)
    vectors = np.repeat(rng.normal(size=(groups, 8)) * 100, per_group, axis=0)
    vectors += rng.normal(size=vectors.shape) * 0.01
    n = groups * per_group
    frame = pd.DataFrame(
        {"id": [f"e{i}" for i in range(n)], "task": ["t"] * n, "prompt": ["p"] * n, "response": ["r"] * n}
    )
    return PoolView(frame=frame, validation=frame.iloc[:0]), vectors, np.repeat(np.arange(groups), per_group)


def iterate(pool: PoolView, signals, k: int, seed: int = 0, **params):
    load_plugins()
    ctx = SelectionContext(pool=pool, budget=k / pool.n, k=k, seed=seed, signals=signals)
    return run_selector(get_selector("diversity"), ctx, params)


def test_round_two_follows_the_selected_examples_losses_by_default():
    """Group A's examples left out are hard (pool mean high) but the model learnt the ones it trained on; group B's
    trained examples are still wrong. The authors' rule (default) sends round 2 to B; cluster_score=pool to A."""
    pool, vectors, groups = grouped(3, 20)
    trained, untrained = {0: 0.0, 1: 3.0, 2: 0.0}, {0: 10.0, 1: 0.0, 2: 0.0}
    ids = pool.ids

    def kept(**params) -> tuple[np.ndarray, list[int]]:
        signals = Remembering(vectors, groups, ids, trained, untrained)
        sel = iterate(pool, signals, 12, n_clusters=3, rounds=2, temperature=0.1, **params)
        assert len(sel.ids) == len(set(sel.ids)) == 12
        rows = [int(i[1:]) for i in sel.ids]  # ids are e<row>
        return np.bincount(groups[rows], minlength=3), signals.passes

    counts, passes = kept()
    assert counts.tolist() == [2, 8, 2] and passes == [6]  # one loss pass, over the 6 examples of round 1
    counts, passes = kept(cluster_score="pool")
    assert counts.tolist() == [8, 2, 2] and passes == [60]


def test_unscored_clusters_can_still_be_drawn():
    """More clusters than round 1's share: the clusters round 1 skipped have no score but take part in round 2."""
    pool, vectors, groups = grouped(8, 5)
    signals = Remembering(vectors, groups, pool.ids, {g: 1.0 for g in range(8)}, {g: 1.0 for g in range(8)})
    sel = iterate(pool, signals, 8, n_clusters=8, rounds=2)
    assert len(set(sel.ids)) == 8 and sel.info["rounds"][0]["unscored_clusters"] == 4
    assert np.isclose(sel.info["rounds"][0]["weights_max"], 1 / 8)  # equal losses: the prior is their mean


def test_unknown_cluster_score_is_a_one_line_error():
    pool, vectors, groups = grouped(3, 4)
    with pytest.raises(HarnessError, match=r"unknown cluster_score 'gold'; use one of \['selected', 'pool'\]") as err:
        iterate(pool, Remembering(vectors, groups, pool.ids, {}, {}), 4, n_clusters=3, cluster_score="gold")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- on the test pool, with the real signal service


@pytest.fixture(scope="module")
def small_bed(tmp_path_factory):
    from test_signal_service import MODEL, RECIPE, service_for

    from harness.testbed import TestbedConfig, generate_testbed_with_truth

    def bed(cache: Path):
        pool, truth = generate_testbed_with_truth(
            TestbedConfig(n_pool=240, n_validation_per_task=4, n_eval_per_task=4, n_facts=24)
        )
        return service_for(pool, truth, MODEL, RECIPE, cache)

    return bed(tmp_path_factory.mktemp("rounds-a")), bed(tmp_path_factory.mktemp("rounds-b"))


class Counting:
    """The signal service, counting the examples each loss pass covers."""

    def __init__(self, service) -> None:
        self.service, self.lengths = service, []

    def __getattr__(self, name: str):
        return getattr(self.service, name)

    def losses(self, warm, epoch: int = -1, rows=None) -> dict[str, np.ndarray]:
        out = self.service.losses(warm, epoch, rows)
        self.lengths.append(len(out["loss"]))
        return out


def test_two_rounds_on_the_test_pool_keep_k_and_repeat_for_a_seed(small_bed):
    """rounds=2 on TF-IDF clusters: k exactly, the same ids from a fresh cache, other ids for another seed; the
    loss pass covers only round 1's examples, and a pass over some rows agrees with the pool-wide pass there."""
    (pool, _, service), (_, _, fresh) = small_bed
    k = 36

    def pick(signals, seed: int = 0):
        ctx = SelectionContext(pool=pool.view(), budget=k / pool.n, k=k, seed=seed, signals=signals)
        load_plugins()
        return get_selector("diversity").fn(ctx, embedding="tfidf", n_clusters=12, rounds=2)

    counting = Counting(service)
    a, b = pick(counting), pick(fresh)
    assert len(a.ids) == len(set(a.ids)) == k and a.ids == b.ids and counting.lengths == [k // 2]
    assert pick(service, seed=1).ids != a.ids
    warm = service.warmup(epochs=1, seed=7, ids=list(pool.view().ids[:20]))
    rows = np.array([5, 230, 17, 99])
    some, every = service.losses(warm, rows=rows)["loss"], service.losses(warm)["loss"]
    assert some.shape == (4,) and np.allclose(some, every[rows], atol=1e-4)


# ---------------------------------------------------------------- cost plan and run identity


def test_the_plan_costs_the_loss_pass_over_what_the_round_model_trained_on():
    size = plan.ModelSize(10**6, 10**6, 64, 2)

    def passes(*overrides: str) -> list[float]:
        cfg = plan.cell_config(["selector=diversity", "selector.rounds=3", *overrides])
        jobs = plan.selection_jobs(cfg, 1000, 100, 90, cfg.seed, size_of=lambda *a, **kw: (size, size.trainable))
        return [j.flops for j in jobs if j.kind == plan.PASS]

    forward = 2 * size.params * 100
    assert passes() == [forward * 30, forward * 60]  # rounds 2 and 3: the 30 and 60 examples selected so far
    assert passes("selector.cluster_score=pool") == [forward * 1000] * 2


def test_cluster_score_leaves_one_round_run_ids_as_they_were():
    """The key cannot act with one round: those cells (the reference sweep's) keep their run ids whatever its
    value; with rounds > 1 it is part of the identity."""
    cfg = plan.cell_config(["selector=diversity", "budget=0.05"])
    assert cfg.selector.embedding == "tfidf" and cfg.selector.cluster_score == "selected"  # the testbed preset
    tree = OmegaConf.to_container(cfg, resolve=True)
    before = {**tree, "selector": {k: v for k, v in tree["selector"].items() if k != "cluster_score"}}
    pool = {**tree, "selector": {**tree["selector"], "cluster_score": "pool"}}
    assert identity_hash(identity(tree)) == identity_hash(identity(before)) == identity_hash(identity(pool))
    three = {**tree, "selector": {**tree["selector"], "rounds": 3}}
    three_pool = {**three, "selector": {**three["selector"], "cluster_score": "pool"}}
    three_before = {**three, "selector": before["selector"] | {"rounds": 3}}
    assert len({identity_hash(identity(t)) for t in (three, three_pool, three_before)}) == 3


def test_a_report_keeps_one_round_records_from_before_and_after_the_key_in_one_row(tmp_path):
    """Seed 0 recorded before cluster_score existed, seed 1 after: one row at rounds=1 (the key cannot act there),
    two rows at rounds=3 (the earlier record scored clusters by the pool)."""
    from harness.report import Settings, build_report
    from harness.report.synthetic import write_run

    base = {"embedding": "tfidf", "n_clusters": 600, "temperature": 1.0, "round_epochs": 1}
    for rounds, budget in ((1, 0.1), (3, 0.2)):
        before, after = {**base, "rounds": rounds}, {**base, "rounds": rounds, "cluster_score": "selected"}
        for seed, params in ((0, before), (1, after)):
            write_run(tmp_path, "random", budget, seed)
            run_id = f"d{rounds}{seed}" * 4
            write_run(tmp_path, "diversity", budget, seed, selector_params=params, variant="diversity", run_id=run_id)
    (table,) = build_report(tmp_path, Settings(n_boot=100), tmp_path / "out", ["acc"]).tables.values()
    rows = table[table["selector"] == "diversity"].set_index(["variant", "budget"])["seeds"].to_dict()
    assert rows == {
        ("diversity{cluster_score=-,rounds=1}", 0.1): "0 1",
        ("diversity{cluster_score=-,rounds=3}", 0.2): "0",
        ("diversity{cluster_score=selected,rounds=3}", 0.2): "1",
    }, rows
