"""Tests of the embedded testbed generator: determinism, planted truth, clean held-out items."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from harness.pool import EVAL_COLUMNS, PUBLIC_COLUMNS, TRUTH_COLUMNS
from harness.testbed import (
    CAPABILITIES,
    CHARSET,
    GENERATIVE_TASKS,
    TASKS,
    TEMPLATES,
    TestbedConfig,
    correct_answer,
    fact_table,
    generate_testbed,
    generate_testbed_with_truth,
    testbed_truth,
)


@pytest.fixture(scope="module")
def cfg() -> TestbedConfig:
    return TestbedConfig()


@pytest.fixture(scope="module")
def both(cfg):
    return generate_testbed_with_truth(cfg)


@pytest.fixture(scope="module")
def pool(both):
    return both[0]


@pytest.fixture(scope="module")
def examples(both) -> pd.DataFrame:
    """Pool examples joined with their truth (the Pool itself has none)."""
    pool, truth = both
    return pool.examples.merge(truth, on="id", validate="one_to_one")


@pytest.fixture(scope="module")
def facts(cfg) -> dict[str, str]:
    return fact_table(cfg)


def test_shape_and_columns(pool, examples, both, cfg):
    ex = examples
    assert pool.n == cfg.n_pool
    assert list(pool.examples.columns) == list(PUBLIC_COLUMNS)  # the truth lives apart from the pool
    assert list(both[1].columns) == ["id", *TRUTH_COLUMNS] and list(both[1]["id"]) == list(pool.examples["id"])
    pd.testing.assert_frame_equal(testbed_truth(cfg), both[1])
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


def test_label_noise(examples, cfg, facts):
    ex = examples
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


def _form(text: str) -> str:
    return "digits" if text.isdigit() else "letters"


def test_noisy_answers_answer_another_skill(examples, facts):
    """noise_kind=mismatched (default): a noisy response is the answer to a problem of another skill, so in
    most cases it has the wrong form (digits for a letter task or the other way round)."""
    noisy = examples[examples["truth_noisy"]]
    letters_answers = set(facts.values())
    wrong_form = 0
    for row in noisy.itertuples():
        right = correct_answer(row.task, row.prompt, facts)
        assert row.response != right
        if row.response.isdigit():
            continue  # an addition, maximum or counting answer
        # a fact's town, or a reversal/sorting answer: distinct letters (sorting's in order)
        assert row.response in letters_answers or len(set(row.response)) == len(row.response), row
        wrong_form += _form(row.response) != _form(right)
    assert wrong_form >= len(noisy) / 3


def test_near_miss_noise_has_the_same_form():
    cfg = TestbedConfig(noise_kind="near_miss", n_pool=2000)
    pool, truth = generate_testbed_with_truth(cfg)
    facts = fact_table(cfg)
    ex = pool.examples.assign(truth_noisy=truth["truth_noisy"].to_numpy())
    noisy = ex[ex["truth_noisy"]]
    assert len(noisy) == round(cfg.noise_rate * cfg.n_pool)
    for row in noisy.itertuples():
        right = correct_answer(row.task, row.prompt, facts)
        assert row.response != right
        if row.task in ("addition", "maximum", "counting"):
            assert row.response.isdigit()
        elif row.task in ("reversal", "sorting"):
            assert sorted(row.response) == sorted(right)
        else:
            assert row.response in set(facts.values())


def test_near_duplicate_groups(pool, examples, cfg):
    ex = examples
    in_group = ex[ex["truth_dup_group"] >= 0]
    assert abs(len(in_group) / pool.n - cfg.dup_rate) < 0.02
    sizes = in_group.groupby("truth_dup_group").size()
    assert len(sizes) >= 20
    assert sizes.between(cfg.dup_group_min, cfg.dup_group_max).all()
    for _, g in in_group.groupby("truth_dup_group"):
        assert g["response"].nunique() == 1
        assert g["task"].nunique() == 1
        assert g["prompt"].is_unique  # near, not exact, duplicates
        (task,) = set(g["task"])
        assert len({_key(task, p) for p in g["prompt"]}) == 1, g  # one problem, phrased differently
    assert not (in_group["truth_noisy"] | in_group["truth_filler"]).any()
    # per task, round(dup_rate * count) members (a remainder smaller than a group is dropped)
    for task, n in ex["task"].value_counts().items():
        members = int((in_group["task"] == task).sum())
        assert round(cfg.dup_rate * n) - cfg.dup_group_min < members <= round(cfg.dup_rate * n), task


def test_no_near_duplicates_outside_the_groups(examples):
    """Outside facts (which teaches each entity several times on purpose), two taught examples share a problem
    under any phrasing or commutative rewrite only when they are members of one near-duplicate group."""
    taught = examples[~examples["truth_filler"] & (examples["task"] != "facts")]
    keys = [(t, _key(t, p)) for t, p in zip(taught["task"], taught["prompt"])]
    groups_of = taught.groupby(pd.Series(keys, index=taught.index))["truth_dup_group"].agg(lambda g: sorted(set(g)))
    sizes = taught.groupby(pd.Series(keys, index=taught.index)).size()
    repeated = groups_of[sizes > 1]
    assert len(repeated) > 0 and all(len(g) == 1 and g[0] >= 0 for g in repeated), repeated[:5]
    assert sizes[sizes > 1].sum() == (taught["truth_dup_group"] >= 0).sum()


def test_planted_counts_are_exact(examples, cfg):
    """Noise and filler are round(rate * n_pool) examples, and no example carries two roles."""
    assert examples["truth_noisy"].sum() == round(cfg.noise_rate * cfg.n_pool)
    assert examples["truth_filler"].sum() == round(cfg.filler_rate * cfg.n_pool)
    roles = examples["truth_noisy"].astype(int) + examples["truth_filler"] + (examples["truth_dup_group"] >= 0)
    assert roles.max() == 1


def test_filler(pool, examples, cfg):
    ex = examples
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
    ev = pool.eval_items[pool.eval_items["task"].isin(TASKS)]
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


def _key(task: str, prompt: str) -> tuple:
    """A problem's identity up to commutative rewrites, read independently of the generator's own code."""
    if task in ("addition", "maximum"):
        return tuple(sorted(int(x) for x in re.findall(r"\d+", prompt)))
    if task == "counting":
        return re.search(r"\b([a-z]) in ([a-z]+)\b", prompt).groups()
    template_words = {w for t in TEMPLATES[task] for w in re.findall(r"[a-z]+", t)} | {"q", "please", "ok"}
    (word,) = [w for w in re.findall(r"[a-z]+", prompt) if w not in template_words]
    return tuple(sorted(word)) if task == "sorting" else (word,)


def _keys(frame: pd.DataFrame, task: str, skill: str | None = None) -> list[tuple]:
    """Keys of the rows of one task (a generative task's prompts read as its skill's)."""
    return [_key(skill or task, p) for p in frame.loc[frame["task"] == task, "prompt"]]


def test_commutative_rewrites_share_a_key():
    assert _key("addition", "add 37 45 =") == _key("addition", "q: what is 45 + 37 ?")
    assert _key("maximum", "max 3 9 4 =") == _key("maximum", "ok largest of 9 4 3 =")
    assert _key("sorting", "sort dbca =") == _key("sorting", "please order abcd =")
    assert _key("reversal", "reverse abc =") != _key("reversal", "flip cba =")


@pytest.mark.parametrize("seed", [0, 1])
def test_held_out_items_share_no_problem_with_pool_or_validation(seed):
    """Under every phrasing and commutative rewrite: evaluation, generative items, validation and pool are disjoint."""
    pool, truth = generate_testbed_with_truth(TestbedConfig(seed=seed))
    taught = pool.examples[~truth["truth_filler"].to_numpy()]
    for task in TASKS:
        if task == "facts":
            continue
        ev = _keys(pool.eval_items, task)
        gen = [k for g, skill in GENERATIVE_TASKS.items() if skill == task for k in _keys(pool.eval_items, g, task)]
        va = _keys(pool.validation, task)
        po = set(_keys(taught, task))
        assert len(set(ev)) == len(ev) and len(set(gen)) == len(gen) and len(set(va)) == len(va), task
        for name, held in (("evaluation", ev), ("generative", gen), ("validation", va)):
            assert not set(held) & po, (task, name)
        assert not set(ev) & set(va) and not set(gen) & set(va) and not set(ev) & set(gen), task


@pytest.mark.parametrize("mode", ["untaught", "taught"])
def test_facts_ask_taught_entities_outside_validation(mode):
    pool, truth = generate_testbed_with_truth(TestbedConfig(facts_validation=mode))
    examples = pool.examples.assign(truth_filler=truth["truth_filler"].to_numpy())
    asked = _keys(pool.eval_items, "facts")
    validated = _keys(pool.validation, "facts")
    assert len(set(asked)) == len(asked) == 200 and len(set(validated)) == len(validated) == 50
    assert not set(asked) & set(validated)  # evaluation asks about entities validation never shows
    mentioned = set(_keys(examples[(examples["task"] == "facts") & ~examples["truth_filler"]], "facts"))
    assert set(asked) <= mentioned  # the pool teaches what evaluation asks
    if mode == "untaught":  # held out like every other skill's validation: the pool never mentions them
        assert not set(validated) & mentioned
    else:
        assert set(validated) <= mentioned


def test_conf_matches_the_generator_defaults():
    """conf/data/testbed.yaml is what runs; the dataclass defaults are what the tests above check."""
    import dataclasses

    from omegaconf import OmegaConf

    from harness import REPO_ROOT

    conf = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "data" / "testbed.yaml"))
    defaults = TestbedConfig()
    for f in dataclasses.fields(TestbedConfig):
        assert conf[f.name] == getattr(defaults, f.name), f.name


def test_small_fact_tables_keep_the_split(caplog):
    p = generate_testbed(TestbedConfig(n_pool=300, n_validation_per_task=20, n_eval_per_task=12, n_facts=16))
    assert "raise data.n_facts to 32" in caplog.text
    asked, validated = _keys(p.eval_items, "facts"), _keys(p.validation, "facts")
    assert len(asked) == 12 and len(validated) == 4 and not set(asked) & set(validated)


def test_generative_items(pool, facts, cfg):
    gen = pool.eval_items[pool.eval_items["task"] == "addition_gen"]
    assert len(gen) == cfg.n_eval_per_task and sorted(gen["doc_id"]) == list(range(len(gen)))
    for row in gen.itertuples():
        assert len(row.choices) == 1 and row.gold == 0
        assert row.choices[0] == correct_answer("addition", row.prompt)
    no_addition = generate_testbed(TestbedConfig(task_shares={"reversal": 1.0}, n_pool=200))
    assert set(no_addition.eval_items["task"]) == {"reversal"}


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
    truth = testbed_truth(small)
    assert not truth[["truth_noisy", "truth_filler"]].any().any()
    assert (truth["truth_dup_group"] == -1).all()
    add = p.examples[p.examples["task"] == "addition"]
    assert add["prompt"].map(lambda s: min(int(x) for x in s.split() if x.isdigit()) >= 100).all()
    with pytest.raises(ValueError, match="unknown testbed tasks"):
        generate_testbed(TestbedConfig(task_shares={"division": 1.0}))
    with pytest.raises(ValueError, match="ran out of distinct problems"):
        generate_testbed(TestbedConfig(add_min=1, add_max=5, task_shares={"addition": 1.0}))
