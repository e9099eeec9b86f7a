"""The report's statistics against hand-computed values, scipy's own implementations, and simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from harness.report import stats as st


@pytest.mark.parametrize("method,scipy_name", [("wilson", "wilson"), ("exact", "exact")])
def test_binomial_interval_matches_scipy(method, scipy_name):
    for k, n in [(0, 10), (1, 10), (8, 10), (10, 10), (45, 50), (17, 200), (3, 7)]:
        low, high = st.binomial_interval(k, n, 0.05, method)
        ref = stats.binomtest(k, n).proportion_ci(0.95, method=scipy_name)
        assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9), (k, n)


def test_wilson_hand_computed():
    # 8 of 10 at 95%: centre (0.8 + 1.92/10) / 1.384 = 0.7167, half-width 0.2265 (worked by hand).
    low, high = st.binomial_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_binomial_interval_vectorised_and_fractional():
    low, high = st.binomial_interval(np.array([5, 5.5, 6]), np.array([10, 10, 10]))
    assert np.all(np.diff(low) > 0) and np.all(np.diff(high) > 0)
    assert np.all(low < np.array([0.5, 0.55, 0.6])) and np.all(high > np.array([0.5, 0.55, 0.6]))


@pytest.mark.parametrize("method", ["wilson", "exact"])
def test_interval_coverage_on_small_data(method):
    rng = np.random.default_rng(0)
    n, p, trials = 50, 0.9, 2000
    k = rng.binomial(n, p, size=trials)
    low, high = st.binomial_interval(k, n, 0.05, method)
    coverage = np.mean((low <= p) & (p <= high))
    assert coverage >= 0.93, coverage
    # the central-limit interval, for contrast, falls short here: the reason for Wilson
    wald = np.sqrt(k / n * (1 - k / n) / n) * 1.96
    assert np.mean((k / n - wald <= p) & (p <= k / n + wald)) < coverage


def test_t_interval_matches_scipy():
    values = np.random.default_rng(1).normal(-1.3, 0.4, 30)
    ref = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert st.t_interval(values) == pytest.approx(ref)
    assert np.isnan(st.t_interval(np.array([1.0]))[0])


def test_holm_hand_computed():
    adjusted = st.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])


def test_mcnemar_exact_hand_computed():
    a = np.array([1] * 9 + [0] * 2 + [1] * 20 + [0] * 5, dtype=bool)
    b = np.array([0] * 9 + [1] * 2 + [1] * 20 + [0] * 5, dtype=bool)
    p, only_a, only_b = st.mcnemar_exact(a, b)
    assert (only_a, only_b) == (9, 2)
    assert p == pytest.approx(2 * (1 + 11 + 55) / 2**11)  # two-sided binomial tail of 2 of 11
    assert p == pytest.approx(stats.binomtest(9, 11, 0.5).pvalue)


def test_pooled_seed_sd_hand_computed():
    sd, df = st.pooled_seed_sd([[1.0, 3.0], [2.0, 4.0, 6.0], [5.0]])
    assert df == 3 and sd == pytest.approx(np.sqrt((2 + 8) / 3))


def _null_pair(rng, n_per_task, tasks, seeds, seed_sd=0.0):
    difficulty = rng.normal(0, 1.5, n_per_task * tasks)

    def row():
        offset = rng.normal(0, seed_sd, (1, seeds))
        prob = 1 / (1 + np.exp(-(difficulty[:, None] + 0.8 + offset)))
        return (rng.random((len(difficulty), seeds)) < prob).astype(float)

    return row(), row(), np.repeat(np.arange(tasks), n_per_task)


def test_paired_bootstrap_false_positive_rate_under_no_difference():
    rng = np.random.default_rng(3)
    trials, rejected = 300, 0
    for _ in range(trials):
        a, b, codes = _null_pair(rng, 40, 3, 1)
        rejected += st.paired_bootstrap(a, b, codes, True, rng, n_boot=400).p_value < 0.05
    assert rejected / trials <= 0.075, rejected / trials


def test_paired_bootstrap_with_seed_effects_keeps_its_level():
    rng = np.random.default_rng(4)
    trials, rejected = 200, 0
    for _ in range(trials):
        a, b, codes = _null_pair(rng, 40, 3, 3, seed_sd=0.3)
        rejected += st.paired_bootstrap(a, b, codes, True, rng, n_boot=400).p_value < 0.05
    assert rejected / trials <= 0.08, rejected / trials


def test_paired_bootstrap_finds_a_real_difference_and_is_deterministic():
    rng = np.random.default_rng(5)
    codes = np.repeat(np.arange(2), 100)
    b = (rng.random((200, 2)) < 0.5).astype(float)
    a = np.maximum(b, (rng.random((200, 2)) < 0.4).astype(float))  # a gets right all b does, and more
    one = st.paired_bootstrap(a, b, codes, True, np.random.default_rng(9), n_boot=500)
    two = st.paired_bootstrap(a, b, codes, True, np.random.default_rng(9), n_boot=500)
    assert one == two
    assert one.diff > 0.1 and one.p_value < 0.01 and one.prob_better > 0.99 and one.low > 0


def test_macro_weights_average_tasks_equally():
    codes = np.array([0, 0, 0, 1])
    values = np.array([1.0, 1.0, 1.0, 0.0])
    assert st.macro_weights(codes) @ values == pytest.approx(0.5)


def test_tie_blocks_never_separates_a_non_significant_pair():
    # A > B > C: A~B and B~C not significant, A vs C significant -> one block.
    diff = np.array([[False, False, True], [False, False, False], [True, False, False]])
    assert list(st.tie_blocks([0.9, 0.8, 0.7], diff)) == [1, 1, 1]
    everything = ~np.eye(3, dtype=bool)
    assert list(st.tie_blocks([0.7, 0.9, 0.8], everything)) == [3, 1, 2]
    only_last_two_tied = everything.copy()
    only_last_two_tied[1, 2] = only_last_two_tied[2, 1] = False
    assert list(st.tie_blocks([0.9, 0.8, 0.7], only_last_two_tied)) == [1, 2, 2]
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 8))
        upper = np.triu(rng.random((n, n)) < 0.6, 1)
        different = upper | upper.T
        scores = rng.random(n)
        ranks = st.tie_blocks(scores, different)
        for i in range(n):
            for j in range(n):
                if i != j and ranks[i] != ranks[j]:
                    assert different[i, j]
                    assert (ranks[i] < ranks[j]) == (scores[i] > scores[j])


@pytest.mark.parametrize("seeds,seed_sd", [(1, 0.0), (3, 0.6)])
def test_macro_interval_over_seeds_covers_the_truth(seeds, seed_sd):
    """4 tasks x 50 fresh items, seeds that shift the model: the row interval covers the expected macro score."""
    rng = np.random.default_rng(7)
    shift, skill, tasks, n = np.array([0.0, 0.5, 1.0, -0.5]), 1.0, 4, 50
    d, a = rng.normal(0, 1.5, 200_000), rng.normal(0, seed_sd, 200_000)
    truth = np.mean([np.mean(1 / (1 + np.exp(-(skill + a - s - d)))) for s in shift])
    covered, trials = 0, 500
    for _ in range(trials):
        difficulty, offsets = rng.normal(0, 1.5, (tasks, n)), rng.normal(0, seed_sd, seeds)
        prob = 1 / (1 + np.exp(-(skill + offsets[:, None, None] - shift[None, :, None] - difficulty[None])))
        k = (rng.random(prob.shape) < prob).sum(axis=2)  # (seeds, tasks)
        per_seed = (k / n).mean(axis=1)
        centre, below, above = st.macro_item_halfwidths(k, np.full(tasks, n))
        assert centre == pytest.approx(per_seed.mean())
        sd, df = st.pooled_seed_sd([per_seed])
        low, high = st.with_seed_uncertainty(per_seed.mean(), below, above, sd, df, seeds, 0.05)
        covered += low <= truth <= high
    assert covered / trials >= 0.93, covered / trials
