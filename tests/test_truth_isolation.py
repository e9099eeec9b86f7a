"""The testbed's hidden truth lives where the select stage cannot reach it; the record still reports it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import MICRO, MICRO_POOL
from omegaconf import OmegaConf

from harness import REPO_ROOT
from harness.data import load_pool, load_truth
from harness.diagnostics import selection_diagnostics
from harness.pool import TRUTH_COLUMNS, Pool
from harness.report.diagnostics import diagnostics_table, markdown
from harness.selection import Selection

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
    keys |= {"redundant_duplicates", "pool_noisy", "pool_filler", "pool_duplicates", "pool_redundant_duplicates"}
    assert set(diag) == keys
    assert diag["n_distinct"] == 60 and sum(diag["per_task"].values()) == 60 and diag["pool_noisy"] > 0


def _testbed_cfg():
    """conf/data/testbed.yaml with the tests' small pool (conftest.MICRO_POOL, the pool the micro runs use)."""
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "testbed.yaml")
    cfg.merge_with(OmegaConf.from_dotlist([o.removeprefix("data.") for o in MICRO_POOL]))
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


def _recount(rows: dict, ids: list[str]) -> dict:
    """The diagnostics counted one example at a time from the generated rows (independent of the code under test)."""
    out = {"noisy": 0, "filler": 0, "duplicates": 0, "per_task": {}}
    groups, seen = set(), set()
    for i in ids:
        if i in seen:
            continue
        seen.add(i)
        row = rows[i]
        out["per_task"][row["task"]] = out["per_task"].get(row["task"], 0) + 1
        out["noisy"] += bool(row["truth_noisy"])
        out["filler"] += bool(row["truth_filler"])
        if row["truth_dup_group"] >= 0:
            out["duplicates"] += 1
            groups.add(row["truth_dup_group"])
    out.update(n_distinct=len(seen), duplicate_groups=len(groups), redundant_duplicates=out["duplicates"] - len(groups))
    return out


@pytest.fixture(scope="module")
def small():
    cfg = _testbed_cfg()
    pool, truth = load_pool(cfg), load_truth(cfg)
    rows = {r["id"]: r for r in pool.examples.merge(truth, on="id").to_dict("records")}
    return pool, truth, rows


def test_diagnostics_match_a_recount_for_fixed_selections_and_schedules(small):
    """Fixed selections (with repeats) and a per-epoch schedule: counts over the distinct ids, recounted by hand."""
    pool, truth, rows = small
    ids = list(pool.examples["id"])
    rng = np.random.default_rng(0)
    schedule = Selection(epochs=[list(rng.choice(ids, 40, replace=False)) for _ in range(3)])
    fixed = [list(rng.choice(ids, k, replace=True)) for k in (1, 40, 150)]
    for chosen in [*fixed, schedule.distinct_ids, ids]:
        diag = selection_diagnostics(pool, chosen, truth)
        want = _recount(rows, chosen)
        for key, value in want.items():
            got = {t: c for t, c in diag[key].items() if c} if key == "per_task" else diag[key]
            assert got == value, (key, got, value)
        assert diag["pool_per_task"] == _recount(rows, ids)["per_task"]
    over_run = _recount(rows, [i for epoch in schedule.epochs for i in epoch])["n_distinct"]
    assert selection_diagnostics(pool, schedule.distinct_ids, truth)["n_distinct"] == over_run > 40
    everything = _recount(rows, ids)
    assert everything["duplicates"] > everything["duplicate_groups"] > 0  # the small pool has groups
    for name in ("noisy", "filler", "duplicates", "redundant_duplicates"):
        assert diag[f"pool_{name}"] == everything[name], name


def test_the_report_shows_redundant_near_duplicates_beside_the_pool(small):
    """A selection that keeps one member of every near-duplicate group keeps a larger share of group members than
    the pool has, but no redundant one: the report shows both, each beside the pool's share."""
    pool, truth, rows = small
    firsts = truth[truth["truth_dup_group"] >= 0].drop_duplicates("truth_dup_group")["id"].tolist()
    singles = truth.loc[truth["truth_dup_group"] < 0, "id"].tolist()
    runs = {
        "dedup": selection_diagnostics(pool, firsts + singles[: len(firsts)], truth),
        "whole": selection_diagnostics(pool, truth.loc[truth["truth_dup_group"] >= 0, "id"].tolist(), truth),
    }
    frame = pd.DataFrame(
        [{"run_id": r, "variant": r, "setting": "{}", "budget": 0.1, "budget_unit": "run", "seed": 0} for r in runs]
    )
    table = diagnostics_table(frame, {r: {"selection_diagnostics": d} for r, d in runs.items()}).set_index("variant")
    everything = _recount(rows, list(pool.examples["id"]))
    pool_redundant = everything["redundant_duplicates"] / pool.n
    assert table.loc["dedup", "kept_duplicates"] > table.loc["dedup", "pool_duplicates"]
    assert table.loc["dedup", "kept_redundant_duplicates"] == 0
    assert table.loc["whole", "kept_redundant_duplicates"] == pytest.approx(1 - len(firsts) / everything["duplicates"])
    assert table["pool_redundant_duplicates"].tolist() == pytest.approx([pool_redundant] * 2)
    head = markdown(table.reset_index()).splitlines()[0]
    assert "| redundant % (pool) |" in head and "| duplicates % (pool) |" in head


def test_the_report_averages_kept_shares_over_seeds_and_names_the_budget_unit():
    """Shares per run (of the distinct examples kept), then the mean over a row's seeds; a per-epoch row says so."""
    pool_counts = {"a": 80, "b": 20}

    def diag(a: int, b: int, noisy: int, redundant: int) -> dict:
        return {
            "per_task": {"a": a, "b": b},
            "pool_per_task": pool_counts,
            "n_distinct": a + b,
            "noisy": noisy,
            "pool_noisy": 4,
            "redundant_duplicates": redundant,
            "pool_redundant_duplicates": 6,
        }

    counts = {"r0": diag(9, 1, 1, 0), "r1": diag(10, 10, 2, 4), "e0": diag(30, 10, 0, 2), "old": {}}
    manifests = {r: {"selection_diagnostics": d} for r, d in counts.items()}
    rows = [("random", "run", 0, "r0"), ("random", "run", 1, "r1"), ("rs2", "epoch", 0, "e0")]
    rows += [("random", "run", 2, "old")]  # a record without diagnostics is left out of the mean
    frame = pd.DataFrame(
        [
            {"run_id": r, "variant": v, "setting": "{}", "budget": 0.1, "budget_unit": u, "seed": s, "task": t}
            for v, u, s, r in rows
            for t in ("a", "b")  # one frame row per task and metric: a run counts once
        ]
    )
    table = diagnostics_table(frame, manifests).set_index("variant")
    random = table.loc["random"]
    assert random["n_seeds"] == 2 and random["n_kept"] == 15
    assert random["kept_noisy"] == pytest.approx((1 / 10 + 2 / 20) / 2) and random["pool_noisy"] == 0.04
    assert random["kept_redundant_duplicates"] == pytest.approx((0 + 4 / 20) / 2)
    assert random["kept:b"] == pytest.approx((1 / 10 + 10 / 20) / 2) and random["pool:b"] == 0.2
    lines = markdown(table.reset_index()).splitlines()
    assert lines[2].startswith("| random | 0.1 | 15 | 10.0 (4.0) | 10.0 (6.0) |")
    assert lines[3].startswith("| rs2 | 0.1/epoch | 40 | 0.0 (4.0) | 5.0 (6.0) |")
    # a record from before the pool-wide redundant count: its kept share, with no pool share beside it
    older = {k: v for k, v in counts["r0"].items() if k != "pool_redundant_duplicates"}
    table = diagnostics_table(frame.iloc[:1], {"r0": {"selection_diagnostics": older}})
    assert markdown(table).splitlines()[2].startswith("| random | 0.1 | 10 | 10.0 (4.0) | 0.0 |")
