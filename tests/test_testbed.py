"""Tests of the embedded testbed generator: determinism, planted truth, clean held-out items."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from harness.pool import EVAL_COLUMNS, PUBLIC_COLUMNS, TRUTH_COLUMNS
from harness.testbed import (
    CAPABILITIES,
    CHARSET,
    TASKS,
    TestbedConfig,
    correct_answer,
    fact_table,
    generate_testbed,
)


@pytest.fixture(scope="module")
def cfg() -> TestbedConfig:
    return TestbedConfig()


@pytest.fixture(scope="module")
def pool(cfg):
    return generate_testbed(cfg)


@pytest.fixture(scope="module")
def facts(cfg) -> dict[str, str]:
    return fact_table(cfg)


def test_shape_and_columns(pool, cfg):
    ex = pool.examples
    assert pool.n == cfg.n_pool
    assert set(PUBLIC_COLUMNS) | set(TRUTH_COLUMNS) <= set(ex.columns)
    assert pool.has_truth
    assert ex["id"].str.fullmatch(r"tb-\d{6}").all()
    assert ex["id"].is_unique
    assert list(pool.eval_items.columns) == list(EVAL_COLUMNS)
    assert ex["truth_noisy"].dtype == bool and ex["truth_filler"].dtype == bool
    assert pool.delimiter == " "


def test_deterministic_for_a_seed(pool, cfg):
    again = generate_testbed(TestbedConfig())
    pd.testing.assert_frame_equal(pool.examples, again.examples)
    pd.testing.assert_frame_equal(pool.validation, again.validation)
    pd.testing.assert_frame_equal(pool.eval_items, again.eval_items)
    assert pool.fingerprint() == again.fingerprint()
    other = generate_testbed(TestbedConfig(seed=1))
    assert other.fingerprint() != pool.fingerprint()
    assert not pool.examples["prompt"].equals(other.examples["prompt"])
    assert fact_table(TestbedConfig(seed=1)) != fact_table(cfg)


def test_fast_enough():
    start = time.perf_counter()
    generate_testbed(TestbedConfig(seed=7))
    assert time.perf_counter() - start < 2.0


def test_tasks_capabilities_and_imbalance(pool):
    assert len(TASKS) >= 6 and pool.tasks == sorted(TASKS)
    assert len(set(CAPABILITIES.values())) >= 2
    assert pool.capabilities == {t: CAPABILITIES[t] for t in TASKS}
    counts = pool.examples["task"].value_counts()
    assert counts.max() >= 8 * counts.min()


def test_tasks_interleave(pool):
    # shuffled: no long runs of one task
    tasks = pool.examples["task"].to_numpy()
    runs = np.flatnonzero(tasks[1:] != tasks[:-1])
    assert len(runs) > pool.n / 3


def test_label_noise(pool, cfg, facts):
    ex = pool.examples
    assert abs(ex["truth_noisy"].mean() - cfg.noise_rate) < 0.005
    assert not (ex["truth_noisy"] & ex["truth_filler"]).any()
    for row in ex[~ex["truth_filler"]].itertuples():
        right = correct_answer(row.task, row.prompt, facts)
        if row.truth_noisy:
            assert row.response != right, row
            assert len(row.response) > 0 and set(row.response) <= CHARSET
        else:
            assert row.response == right, row
    # noise reaches every task
    assert set(ex.loc[ex["truth_noisy"], "task"]) == set(TASKS)


def test_noisy_answers_have_the_same_form(pool, facts):
    noisy = pool.examples[pool.examples["truth_noisy"]]
    for row in noisy.itertuples():
        if row.task in ("addition", "maximum", "counting"):
            assert row.response.isdigit()
        elif row.task in ("reversal", "sorting"):
            right = correct_answer(row.task, row.prompt, facts)
            assert sorted(row.response) == sorted(right)
        else:
            assert row.response in set(facts.values())


def test_near_duplicate_groups(pool, cfg):
    ex = pool.examples
    in_group = ex[ex["truth_dup_group"] >= 0]
    assert abs(len(in_group) / pool.n - cfg.dup_rate) < 0.02
    sizes = in_group.groupby("truth_dup_group").size()
    assert len(sizes) >= 20
    assert sizes.between(cfg.dup_group_min, cfg.dup_group_max).all()
    for _, g in in_group.groupby("truth_dup_group"):
        assert g["response"].nunique() == 1
        assert g["task"].nunique() == 1
        assert g["prompt"].is_unique  # near, not exact, duplicates
    assert not (in_group["truth_noisy"] | in_group["truth_filler"]).any()


def test_filler(pool, cfg):
    ex = pool.examples
    filler = ex[ex["truth_filler"]]
    assert abs(len(filler) / pool.n - cfg.filler_rate) < 0.005
    assert (filler["truth_dup_group"] == -1).all()
    assert filler["task"].nunique() >= 4
    # filler follows the task shares roughly: the largest task gets the most filler
    assert filler["task"].value_counts().idxmax() == ex["task"].value_counts().idxmax()


def test_validation(pool, cfg, facts):
    val = pool.validation
    per_task = val.groupby("task").size()
    assert set(per_task.index) == set(TASKS)
    assert per_task.nunique() == 1 and per_task.iloc[0] == cfg.n_validation_per_task >= 20
    assert val["id"].is_unique and not set(val["id"]) & set(pool.examples["id"])
    for row in val.itertuples():
        assert row.response == correct_answer(row.task, row.prompt, facts)


def test_eval_items(pool, cfg, facts):
    ev = pool.eval_items
    per_task = ev.groupby("task").size()
    assert set(per_task.index) == set(TASKS)
    assert (per_task >= 100).all() and (per_task == cfg.n_eval_per_task).all()
    for _task, g in ev.groupby("task"):
        assert sorted(g["doc_id"]) == list(range(len(g)))
    golds = np.zeros(cfg.n_choices, dtype=int)
    for row in ev.itertuples():
        assert len(row.choices) == cfg.n_choices == len(set(row.choices))
        right = correct_answer(row.task, row.prompt, facts)
        assert row.choices[row.gold] == right
        assert sum(c == right for c in row.choices) == 1
        golds[row.gold] += 1
        lengths = [len(c) for c in row.choices]
        assert max(lengths) - min(lengths) <= 2, row
    # choice order is shuffled: the gold position is spread over all slots
    assert golds.min() > 0.15 * len(ev)


def test_held_out_items_are_unseen(pool):
    pool_prompts = set(pool.examples["prompt"])
    val_prompts = set(pool.validation["prompt"])
    for task in TASKS:
        if CAPABILITIES[task] == "knowledge":
            continue
        ev = set(pool.eval_items.loc[pool.eval_items["task"] == task, "prompt"])
        va = set(pool.validation.loc[pool.validation["task"] == task, "prompt"])
        assert len(ev) == len(pool.eval_items[pool.eval_items["task"] == task])
        assert not ev & pool_prompts
        assert not va & pool_prompts
        assert not ev & val_prompts


def test_facts_are_taught_and_a_small_subset_misses_many(pool, facts):
    ex = pool.examples
    assert 100 <= len(facts) <= 200
    ev = pool.eval_items[pool.eval_items["task"] == "facts"]
    asked = {p.split()[2] for p in ev["prompt"]}  # canonical "home of <entity> ="
    assert asked == set(facts)
    taught = ex[(ex["task"] == "facts") & ~ex["truth_noisy"] & ~ex["truth_filler"]]
    entities = taught["prompt"].map(lambda p: next(w for w in p.replace("?", "").split() if w in facts))
    per_fact = entities.value_counts()
    assert set(per_fact.index) == set(facts) and per_fact.min() >= 1
    rng = np.random.default_rng(0)
    subset = ex.iloc[rng.choice(pool.n, round(0.05 * pool.n), replace=False)]
    sub = subset[(subset["task"] == "facts") & ~subset["truth_noisy"] & ~subset["truth_filler"]]
    covered = {w for p in sub["prompt"] for w in p.split() if w in facts}
    assert len(covered) < 0.6 * len(facts)


def test_small_character_set_and_short_text(pool):
    texts = pd.concat(
        [
            pool.examples["prompt"],
            pool.examples["response"],
            pool.validation["prompt"],
            pool.validation["response"],
            pool.eval_items["prompt"],
            pool.eval_items["choices"].explode(),
        ]
    )
    used = set("".join(texts))
    assert used <= CHARSET, used - CHARSET
    assert texts.str.len().max() <= 48
    assert (pool.examples["response"].str.len() <= 16).all()
    assert (texts.str.len() > 0).all()
    assert not texts.str.contains("  ").any()
    assert not texts.str.startswith(" ").any() and not texts.str.endswith(" ").any()


def test_checker_reads_every_phrasing():
    assert correct_answer("addition", "add 37 45 =") == "82"
    assert correct_answer("addition", "what is 37 + 45 ?") == "82"
    assert correct_answer("maximum", "q: max of 37 82 19 =") == "82"
    assert correct_answer("counting", "how many a in abaca ?") == "3"
    assert correct_answer("counting", "please count d in abc =") == "0"
    assert correct_answer("reversal", "kbq reversed =") == "qbk"
    assert correct_answer("sorting", "ok sort the word dbca =") == "abcd"
    assert correct_answer("facts", "where is zorvak from ?", {"zorvak": "melin"}) == "melin"
    with pytest.raises(ValueError):
        correct_answer("addition", "add 1 =")
    with pytest.raises(ValueError):
        correct_answer("nope", "add 1 2 =")


def test_config_knobs():
    small = TestbedConfig(
        seed=3,
        n_pool=600,
        task_shares={"addition": 3, "reversal": 1, "facts": 1},
        noise_rate=0.0,
        dup_rate=0.0,
        filler_rate=0.0,
        n_validation_per_task=20,
        n_eval_per_task=100,
        add_min=100,
        add_max=999,
    )
    p = generate_testbed(small)
    assert p.tasks == ["addition", "facts", "reversal"]
    assert p.examples["task"].value_counts().to_dict() == {"addition": 360, "reversal": 120, "facts": 120}
    assert not p.examples[["truth_noisy", "truth_filler"]].any().any()
    assert (p.examples["truth_dup_group"] == -1).all()
    add = p.examples[p.examples["task"] == "addition"]
    assert add["prompt"].map(lambda s: min(int(x) for x in s.split() if x.isdigit()) >= 100).all()
    with pytest.raises(ValueError, match="unknown testbed tasks"):
        generate_testbed(TestbedConfig(task_shares={"division": 1.0}))
    with pytest.raises(ValueError, match="ran out of distinct problems"):
        generate_testbed(TestbedConfig(add_min=1, add_max=5, task_shares={"addition": 1.0}))
