"""Selector plugins: registration, the three baselines, truth isolation, user plugin folders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.pool import TRUTH_COLUMNS
from harness.selection import (
    Selection,
    SelectionContext,
    budget_to_k,
    get_selector,
    load_plugins,
    run_selector,
)
from harness.testbed import TestbedConfig, generate_testbed


@pytest.fixture(scope="module")
def pool():
    return generate_testbed(TestbedConfig(n_pool=600, n_eval_per_task=100, n_validation_per_task=20, n_facts=24))


def select(name, pool, budget, seed=0, **params):
    load_plugins()
    k = budget_to_k(budget, pool.n)
    return run_selector(get_selector(name), SelectionContext(pool.view(), budget, k, seed), params)


def test_no_selectors_package_shadows_the_standard_library():
    assert not (REPO_ROOT / "selectors" / "__init__.py").exists()
    done = subprocess.run(
        [sys.executable, "-c", "import subprocess, asyncio, selectors; selectors.SelectSelector"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_builtin_selectors_register():
    assert {"random", "balanced_random", "full"} <= set(load_plugins())


def test_random_keeps_k_distinct_ids_and_is_seeded(pool):
    a, b, c = select("random", pool, 0.1, seed=3), select("random", pool, 0.1, seed=3), select("random", pool, 0.1, 4)
    assert len(a.ids) == 60 == len(set(a.ids))
    assert a.ids == b.ids and a.ids != c.ids


def test_balanced_random_gives_equal_quotas_and_redistributes(pool):
    sel = select("balanced_random", pool, 0.3, seed=1)
    tasks = pool.examples.set_index("id").loc[sel.ids, "task"]
    counts = tasks.value_counts()
    sizes = pool.examples["task"].value_counts()
    assert len(sel.ids) == 180
    full_tasks = counts[counts == sizes[counts.index]]  # tasks too small for the quota are kept whole
    others = counts.drop(full_tasks.index)
    assert others.max() - others.min() <= 1
    assert (counts.reindex(sizes.index, fill_value=0) <= sizes).all()


def test_full_keeps_everything(pool):
    sel = select("full", pool, 0.01)
    assert sel.ids == list(pool.examples["id"]) and not get_selector("full").uses_budget


def test_unknown_selector_lists_the_available_ones():
    load_plugins()
    with pytest.raises(HarnessError, match="available: .*balanced_random.*full.*random"):
        get_selector("nope")


def test_unknown_parameter_is_an_error(pool):
    with pytest.raises(HarnessError, match="no parameter"):
        select("random", pool, 0.1, temperature=2)


def test_user_plugin_folder_and_truth_isolation(tmp_path, pool):
    (tmp_path / "peek.py").write_text(
        "from harness.selection import Selection, register\n"
        "@register('peek_test')\n"
        "def select(ctx, *, stride: int = 2):\n"
        "    ids = list(ctx.pool.ids[::stride][: ctx.k])\n"
        "    return Selection(ids=ids, info={'columns': list(ctx.pool.frame.columns)})\n"
    )
    load_plugins([str(tmp_path)])
    sel = select("peek_test", pool, 0.1, stride=3)
    assert len(sel.ids) == 60
    assert not set(TRUTH_COLUMNS) & set(sel.info["columns"])
    assert not set(TRUTH_COLUMNS) & set(pool.examples.columns)  # nor the Pool: harness.data.load_truth has it


def test_budget_that_keeps_nothing_is_an_error():
    with pytest.raises(HarnessError, match="keeps 0 of 100"):
        budget_to_k(0.001, 100)
    assert budget_to_k(0.01, 100) == 1 and budget_to_k(0.15, 4000) == 600


def test_selection_hash_depends_on_order():
    a, b = Selection(ids=["x", "y"]), Selection(ids=["y", "x"])
    assert a.sha256() != b.sha256()
    assert Selection(epochs=[["x"], ["y"]]).kind == "schedule"
    with pytest.raises(ValueError):
        Selection()
    assert np.array_equal(Selection(epochs=[["x", "y"], ["y", "z"]]).distinct_ids, ["x", "y", "z"])


def test_the_readme_example_selector_runs(harness_cli, tmp_path):
    """The 'Adding a selector' example of the README, dropped into a plugin folder, runs end to end."""
    import re

    from conftest import MICRO, plugin_folder, record_path

    from harness import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a selector") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    plugins = plugin_folder(tmp_path, "low_loss.py", code)
    code_, out, err = harness_cli(
        [*MICRO, f"plugins=[{plugins}]", "selector=random", "selector.name=low_loss", "train.epochs=1"]
    )
    assert code_ == 0, err
    import pandas as pd

    scores = pd.read_csv(record_path(out) / "scores.csv")
    assert len(scores) == 300 and scores["score"].notna().all()
