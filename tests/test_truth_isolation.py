"""The testbed's hidden truth lives where the select stage cannot reach it; the record still reports it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import MICRO
from omegaconf import OmegaConf

from harness import REPO_ROOT
from harness.data import load_pool, load_truth
from harness.diagnostics import selection_diagnostics
from harness.pool import TRUTH_COLUMNS, Pool

WALKER = '''
"""A selector that walks up the call stack looking for the testbed's truth columns anywhere it can reach."""

import inspect
import types

import numpy as np
import pandas as pd

from harness.selection import Selection, register

SKIP = ("/_pytest/", "/pluggy/", "/tests/")


def walk(skip_tests=True):
    """Every frame's locals and the attributes of objects found there (4 levels deep): truth columns found."""
    seen, found = set(), []
    stats = {"objects": 0, "frames": 0, "pool_frames": 0, "functions": []}

    def visit(obj, where, depth):
        if depth > 4 or id(obj) in seen:
            return
        seen.add(id(obj))
        stats["objects"] += 1
        if isinstance(obj, pd.DataFrame):
            stats["pool_frames"] += int("prompt" in obj.columns)
            hits = [str(c) for c in obj.columns if str(c).startswith("truth_")]
            if hits:
                found.append(f"{where} {hits}")
            return
        if isinstance(obj, pd.Series):
            if str(obj.name).startswith("truth_") or any(str(i).startswith("truth_") for i in obj.index[:50]):
                found.append(where)
            return
        skip = (str, bytes, int, float, bool, type(None), np.ndarray, type, types.ModuleType, types.FunctionType)
        if isinstance(obj, skip) or callable(obj) and not hasattr(obj, "__dict__"):
            return
        if isinstance(obj, dict):
            for k, v in list(obj.items())[:300]:
                if str(k).startswith("truth_"):
                    found.append(f"{where}[{k!r}]")
                visit(v, f"{where}[{k!r}]", depth + 1)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for i, v in enumerate(list(obj)[:300]):
                visit(v, f"{where}[{i}]", depth + 1)
            return
        names = list(getattr(obj, "__dict__", {}) or {}) + list(getattr(obj, "__dataclass_fields__", {}) or {})
        for name in dict.fromkeys(names):
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            visit(value, f"{where}.{name}", depth + 1)

    for info in inspect.stack()[1:]:
        if skip_tests and any(s in info.filename for s in SKIP):
            continue
        stats["frames"] += 1
        stats["functions"].append(info.function)
        for name, value in list(info.frame.f_locals.items()):
            visit(value, f"{info.function}:{name}", 0)
    return found, stats


@register("walker_test")
def select(ctx):
    found, stats = walk()
    return Selection(ids=list(ctx.pool.ids[: ctx.k]), info={"found": found, **stats})
'''


@pytest.fixture(scope="module")
def walker_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("walker") / "plugins"
    folder.mkdir()
    (folder / "walker.py").write_text(WALKER)
    return folder


def test_the_walker_finds_truth_within_reach(walker_dir):
    """The instrument works: truth held in a local, or inside an object a local holds, is found."""
    spec = importlib.util.spec_from_file_location("walker_probe", walker_dir / "walker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Holder:
        def __init__(self, frame):
            self.inner = {"x": [frame]}

    def hold():
        holder = Holder(pd.DataFrame({"id": ["a"], "prompt": ["p"], "truth_noisy": [True]}))  # noqa: F841
        return module.walk(skip_tests=False)

    found, stats = hold()
    assert found and any("holder.inner['x'][0]" in f for f in found), found
    assert stats["pool_frames"] >= 1


def test_selector_reaches_no_truth_and_the_record_reports_it(harness_cli, walker_dir, tmp_path):
    args = [*MICRO, f"plugins=[{walker_dir}]", "selector=random", "selector.name=walker_test", "budget=0.2"]
    code, _, err = harness_cli(args)
    assert code == 0, err
    manifest = json.loads(next((tmp_path / "results").rglob("manifest.json")).read_text())
    info = manifest["selection_info"]
    assert info["found"] == []
    assert "run" in info["functions"] and "select" in info["functions"]  # the pipeline's frames were walked
    assert info["pool_frames"] >= 1 and info["objects"] > 100  # and the pool's frames were reached
    diag = manifest["selection_diagnostics"]
    keys = {"per_task", "pool_per_task", "n_distinct", "noisy", "filler", "duplicates", "duplicate_groups"}
    keys |= {"redundant_duplicates", "pool_noisy", "pool_filler", "pool_duplicates"}
    assert set(diag) == keys
    assert diag["n_distinct"] == 60 and sum(diag["per_task"].values()) == 60 and diag["pool_noisy"] > 0


def _testbed_cfg():
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "testbed.yaml")
    cfg.merge_with({"n_pool": 300, "n_validation_per_task": 20, "n_eval_per_task": 12, "n_facts": 16})
    return cfg


def test_load_pool_has_no_truth_and_load_truth_has_it(tmp_path):
    cfg = _testbed_cfg()
    pool = load_pool(cfg)
    assert not set(TRUTH_COLUMNS) & set(pool.examples.columns) and not hasattr(pool, "has_truth")
    truth = load_truth(cfg)
    assert list(truth.columns) == ["id", *TRUTH_COLUMNS] and list(truth["id"]) == list(pool.examples["id"])
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    assert load_truth(OmegaConf.create({"source": "jsonl", "path": str(jsonl)})) is None


def test_a_pool_refuses_truth_columns():
    examples = pd.DataFrame({"id": ["a"], "task": ["t"], "prompt": ["p"], "response": ["r"], "truth_noisy": [True]})
    with pytest.raises(ValueError, match="must not carry truth columns"):
        Pool(name="x", examples=examples, validation=examples.iloc[:0, :4])


def test_diagnostics_with_and_without_truth():
    cfg = _testbed_cfg()
    pool, truth = load_pool(cfg), load_truth(cfg)
    ids = list(pool.examples["id"][:50]) + list(pool.examples["id"][:10])  # repeats count once
    plain = selection_diagnostics(pool, ids, None)
    assert set(plain) == {"per_task", "pool_per_task", "n_distinct"} and plain["n_distinct"] == 50
    full = selection_diagnostics(pool, ids, truth)
    kept = truth.set_index("id").loc[ids[:50]]
    assert full["noisy"] == int(kept["truth_noisy"].sum()) and full["filler"] == int(kept["truth_filler"].sum())
    assert full["pool_duplicates"] == int((truth["truth_dup_group"] >= 0).sum())
    with pytest.raises(ValueError, match="does not cover every pool id"):
        selection_diagnostics(pool, ids, truth.iloc[1:])
