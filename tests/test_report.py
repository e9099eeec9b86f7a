"""`python -m harness.report`: leaderboards, curves and robustness on synthetic records of the run format."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.report import Settings, build_report, log_to_wandb, method_text
from harness.report.__main__ import main
from harness.report.load import load_records, resolved_precision, seed_overrides
from harness.report.synthetic import TASKS, write_run, write_sweep
from harness.seeding import stage_seeds

FAST = Settings(n_boot=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_sweep(root, selectors=("random", "el2n", "bids"), budgets=(0.05, 0.2), seeds=(0, 1), n_per_task=30)
    return root


def test_leaderboard_rows_columns_and_files(sweep, tmp_path):
    report = build_report(sweep, FAST, tmp_path / "out", ["acc", "gold_loglik"])
    (table,) = report.tables.values()
    assert len(table) == 3 * 2 + 1  # variants x budgets, plus full
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert set(csv["variant"]) == {"random", "el2n", "bids", "full"}
    full = csv[csv["variant"] == "full"].iloc[0]
    assert full["budget"] == 1.0 and pd.isna(full["rank"]) and pd.isna(full["diff_vs_random"])
    assert {"task:arithmetic", "task:facts", "worst_task", "task_sd", "p_vs_random", "prob_better"} <= set(csv)
    assert (
        (csv["n_seeds"] == 2).all() and (csv["ci_low"] < csv["score"]).all() and (csv["score"] < csv["ci_high"]).all()
    )
    random = csv[csv["variant"] == "random"]
    assert random["diff_vs_random"].isna().all() and random["rank"].notna().all()
    others = csv[~csv["variant"].isin(["random", "full"])]
    assert others["p_vs_random"].between(0, 1).all() and (others["p_vs_random"] >= others["p_raw"]).all()
    for name in ("leaderboard.md", "report.html", "curve_acc.png", "cost_acc.png", "curve_gold_loglik.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert "| ref | full |" in report.markdown
    diagnostics = pd.read_csv(tmp_path / "out" / "diagnostics.csv")
    assert {"kept_noisy", "pool_noisy", "kept:facts", "pool:facts"} <= set(diagnostics)


def test_a_clear_winner_is_marked_and_ranked_alone(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "random", 0.1, seed, skill=-0.5, n_per_task=60)
        write_run(tmp_path, "bids", 0.1, seed, skill=2.0, n_per_task=60)
        write_run(tmp_path, "el2n", 0.1, seed, skill=-0.45, n_per_task=60)
    (table,) = build_report(tmp_path, FAST, tmp_path / "out", ["acc"]).tables.values()
    by = table.set_index("variant")
    assert by.at["bids", "vs_random"] == "better" and by.at["bids", "rank"] == 1
    assert by.at["bids", "p_vs_random"] < 0.05 and by.at["bids", "prob_better"] > 0.99
    assert by.at["el2n", "vs_random"] == "" and by.at["el2n", "rank"] == by.at["random", "rank"] == 2


def test_other_metrics_and_tests(sweep, tmp_path):
    loglik = build_report(sweep, Settings(metric="gold_loglik", n_boot=300), tmp_path / "ll", [])
    (table,) = loglik.tables.values()
    assert table["score"].lt(0).all() and table["ci_low"].notna().all() and (table["ci_low"] < table["ci_high"]).all()
    item_only = build_report(sweep, Settings(metric="correct", n_boot=300), tmp_path / "c", [])
    assert len(next(iter(item_only.tables.values()))) == 7
    mcnemar = build_report(sweep, Settings(test="mcnemar", correction="none"), tmp_path / "m", [])
    (table,) = mcnemar.tables.values()
    assert table.loc[~table["variant"].isin(["random", "full"]), "p_vs_random"].between(0, 1).all()
    exact = build_report(sweep, Settings(interval="exact", n_boot=200), tmp_path / "e", [])
    wilson = build_report(sweep, Settings(n_boot=200), tmp_path / "w", [])
    widths = [(t["ci_high"] - t["ci_low"]).mean() for t in (*exact.tables.values(), *wilson.tables.values())]
    assert widths[0] > widths[1]  # Clopper-Pearson is the more conservative interval
    with pytest.raises(HarnessError, match="unknown metric 'bleu'.*acc_norm"):
        build_report(sweep, Settings(metric="bleu"), tmp_path / "x")


def test_real_folders_incomplete_archived_duplicate(tmp_path):
    write_run(tmp_path, "random", 0.1, 0)
    live = write_run(tmp_path, "bids", 0.1, 0)
    write_run(tmp_path, "bids", 0.1, 1, complete=False)  # still training
    shutil.copytree(live, tmp_path / "copy_of_bids")  # the same cell copied elsewhere
    shutil.copytree(live, tmp_path / "old")
    shutil.move(tmp_path / "old", live / "archive" / "20260101-000000")  # rerun=true moved an earlier copy aside
    only_archived = write_run(tmp_path, "el2n", 0.1, 0)
    shutil.copytree(only_archived, tmp_path / "old")
    shutil.move(tmp_path / "old", only_archived / "archive" / "20260101-000000")
    for name in ("results.csv", "eval_items.csv"):  # its rerun has not finished
        (only_archived / name).unlink()
    (tmp_path / "other" / "empty").mkdir(parents=True)
    (tmp_path / "other" / "empty" / "results.csv").write_text("")  # not a run record: skipped, counted
    (tmp_path / "other" / "results.csv").write_text("model,score\nx,1\n")
    records = load_records(tmp_path)
    assert records.counts["unreadable"] == 2 and "2 unreadable" in " ".join(records.notes())
    assert records.results.groupby("run_id")["record_dir"].nunique().max() == 1
    assert sorted(records.results.drop_duplicates("run_id")["variant"]) == ["bids", "el2n", "random"]
    assert records.counts["incomplete"] == 2 and records.counts["duplicates"] == 1
    assert records.counts["archived_ignored"] == 1 and records.counts["from_archive"] == 1
    assert len(records.items) == 3 * 4 * 50
    notes = " ".join(records.notes())
    assert "2 incomplete" in notes and "duplicate" in notes and "archived" in notes


def _same_run_id_twice(root: Path, older: dict, newer: dict) -> tuple[Path, Path]:
    """Two live records of one run_id in two folders (the newer 60 of 80 items right, the older 20), with the
    given manifest fields; a random record beside them so a report can be built."""
    write_run(root, "random", 0.1, 0)
    dirs = []
    for i, (fields, n_right) in enumerate(((older, 20), (newer, 60))):
        run = write_run(root, "bids", 0.1, 0, run_id="b1d5" * 3, items=_fixed_items(n_right), folder=f"copy{i}")
        _set_manifest(run, **fields)
        stamp = 1_700_000_000 + 1000 * i  # the second one is the newer
        os.utime(run / "results.csv", (stamp, stamp))
        dirs.append(run)
    return dirs[0], dirs[1]


@pytest.mark.parametrize(
    ("field", "older", "newer", "phrase"),
    [
        (
            "pool",
            {"pool_fingerprint": "a" * 64},
            {"pool_fingerprint": "b" * 64},
            "pool content changed (fingerprint aaaaaaaa -> bbbbbbbb)",
        ),
        (
            "selector",
            {"selector_file": "s.py", "selector_file_sha256": "1" * 64},
            {"selector_file": "s.py", "selector_file_sha256": "2" * 64},
            "selector file s.py changed (sha256 11111111 -> 22222222)",
        ),
        (
            "precision",
            {"precision": {"mixed_precision": "no", "model_dtype": "float32"}},
            {"precision": {"mixed_precision": "bf16", "model_dtype": "float32"}},
            "mixed precision no -> bf16",
        ),
        (
            "eval tasks",
            {"eval_tasks_sha256": "e" * 64},
            {"eval_tasks_sha256": "f" * 64},
            "evaluation tasks, their data or lm-eval changed (sha256 eeeeeeee -> ffffffff)",
        ),
    ],
)
def test_same_run_id_from_other_inputs_is_no_duplicate(tmp_path, field, older, newer, phrase):
    """One run_id, but another pool, selector file or precision: the newer record is kept, the other is named."""
    old, new = _same_run_id_twice(tmp_path, older, newer)
    records = load_records(tmp_path)
    assert records.counts.get("conflicts", 0) == 1 and records.counts["duplicates"] == 0
    bids = records.results[records.results["run_id"] == "b1d5" * 3]
    assert set(bids["record_dir"]) == {str(new)}
    macro = bids[(bids["task"] == "macro_avg") & (bids["metric"] == "acc")]["value"]
    assert list(macro) == [pytest.approx(0.75)]  # the newer record's 60 of 80
    items = records.items[records.items["run_id"] == "b1d5" * 3]
    assert len(items) == 80 and items["correct"].sum() == 60  # the kept record's items only
    notes = records.notes()
    head = "dropped 1 record(s) that share a run_id with a newer record but came from a different pool, selector code"
    assert any(n.startswith(head) for n in notes)
    assert not any("duplicate record" in n for n in notes)
    (detail,) = [n for n in notes if n.startswith("run_id ")]
    assert phrase in detail and f"dropped {old}" in detail and f"kept the newer {new}" in detail
    report = build_report(tmp_path, FAST, tmp_path / "out", [])
    assert detail in report.notes and detail in (tmp_path / "out" / "leaderboard.md").read_text()
    assert any(n.startswith(head) for n in report.notes)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ({}, {}),  # the synthetic writer's manifests state none of the inputs
        (
            {"pool_fingerprint": "a" * 64, "selector_file_sha256": "1" * 64, "precision": {"mixed_precision": "no"}},
            {"pool_fingerprint": "a" * 64, "selector_file_sha256": "1" * 64, "precision": {"mixed_precision": "no"}},
        ),
        ({}, {"selector_file_sha256": "2" * 64, "precision": {"model_dtype": "float32"}}),  # older: not compared
        ({"runtime": {"mixed_precision": "no"}}, {"precision": {"mixed_precision": "no", "model_dtype": "bfloat16"}}),
    ],
)
def test_same_run_id_from_the_same_inputs_is_a_duplicate(tmp_path, older, newer):
    _, new = _same_run_id_twice(tmp_path, older, newer)
    records = load_records(tmp_path)
    assert records.counts["duplicates"] == 1 and records.counts.get("conflicts", 0) == 0
    assert set(records.results.loc[records.results["run_id"] == "b1d5" * 3, "record_dir"]) == {str(new)}
    notes = " ".join(records.notes())
    assert "counted 1 duplicate record(s) of a cell once" in notes
    assert "share a run_id" not in notes and "run_id b1d5" not in notes


def test_records_scored_on_other_task_data_are_never_averaged(tmp_path):
    """Two seeds of one cell, one scored before the user edited the task's data: two comparability groups, named
    by the task fingerprint, never one mean over both."""
    from harness.report.load import comparability_groups, group_differences

    for seed, sha in ((0, "e" * 64), (1, "f" * 64)):
        _set_manifest(write_run(tmp_path, "random", 0.1, seed), eval_tasks_sha256=sha)
    groups = comparability_groups(load_records(tmp_path).results)
    assert len(groups) == 2 and group_differences(groups) == ["eval_tasks"]
    assert sorted(label.rsplit("eval tasks ", 1)[1].rstrip(")") for label, _ in groups) == ["eeeeeeee", "ffffffff"]


def test_pool_fingerprint_of_results_csv_stands_in_for_the_manifest_and_archives_are_not_conflicts(tmp_path):
    """A manifest without the pool's fingerprint: results.csv's column is compared. An archived record of another
    pool is what rerun=true leaves behind: ignored as before, not named as a conflict."""
    for i, pool in enumerate(("a" * 64, "b" * 64)):
        run = write_run(tmp_path, "bids", 0.1, 0, run_id="b1d5" * 3, folder=f"copy{i}", pool_fingerprint=pool)
        os.utime(run / "results.csv", (1_700_000_000 + 1000 * i,) * 2)
    aside = write_run(tmp_path, "bids", 0.1, 0, run_id="b1d5" * 3, folder="copy1.old", pool_fingerprint="c" * 64)
    shutil.move(aside, tmp_path / "copy1" / "archive" / "20260101-000000")
    records = load_records(tmp_path)
    assert records.counts.get("conflicts", 0) == 1 and records.counts["duplicates"] == 0
    assert records.counts["archived_ignored"] == 1
    assert set(records.results["pool_fingerprint"]) == {"b" * 64}
    (detail,) = [n for n in records.notes() if n.startswith("run_id ")]
    assert "fingerprint aaaaaaaa -> bbbbbbbb" in detail and "cccccccc" not in detail


def test_different_settings_are_never_mixed(tmp_path):
    write_sweep(tmp_path / "a", selectors=("random", "bids"), budgets=(0.1,), seeds=(0,), full=False)
    for selector in ("random", "bids"):
        write_run(tmp_path / "b", selector, 0.1, 0, model="bigger", model_hash="x" * 12)
    report = build_report(tmp_path, FAST, tmp_path / "out", ["acc"])
    assert len(report.tables) == 2
    for table in report.tables.values():
        assert len(table) == 2
    assert any("differ in model, model_hash" in n for n in report.notes)
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert csv["group"].nunique() == 2 and (tmp_path / "out" / "g2_cost_acc.png").exists()


def test_empty_and_missing_folders_say_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="no complete run records"):
        build_report(tmp_path / "empty")
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    write_run(tmp_path / "half", "random", 0.1, 0, complete=False)
    with pytest.raises(HarnessError, match=r"\(1 incomplete\)"):
        build_report(tmp_path / "half")


def test_cli_writes_beside_the_records(sweep, capsys):
    assert main([str(sweep), "--n-boot", "200", "--correction", "none", "--curves", "acc"]) == 0
    out = capsys.readouterr().out
    assert "# Leaderboard" in out and "| bids |" in out and "leaderboard.csv" in out
    assert (sweep / "report" / "report.html").exists()
    assert main([str(sweep), "--n-boot", "5"]) == 2


def test_wandb_offline_logs_tables_and_curves(sweep, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    report = build_report(sweep, FAST, tmp_path / "out", ["acc"])
    folder = log_to_wandb(report)
    run_dir = (tmp_path / "out" / "wandb").glob("offline-run-*")
    assert folder and any(p.suffix == ".wandb" for d in run_dir for p in d.iterdir())
    tables = list((tmp_path / "out" / "wandb").rglob("media/table/leaderboard/*.table.json"))
    curves = list((tmp_path / "out" / "wandb").rglob("media/images/curves/curve_acc*.png"))
    assert len(tables) == 1 and len(curves) == 1
    assert '"bids"' in tables[0].read_text() and '"full"' in tables[0].read_text()


def _set_manifest(run_dir: Path, **fields) -> None:
    """Add fields to a synthetic record's manifest (what the pipeline records beyond the synthetic writer's)."""
    path = run_dir / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _archive(run_dir: Path, stamp: str = "20260101-000000") -> None:
    """Move a record aside the way rerun=true does (into its folder's archive/)."""
    aside = run_dir.parent / f"{run_dir.name}.aside"
    shutil.move(run_dir, aside)
    run_dir.mkdir()
    (run_dir / "archive").mkdir()
    shutil.move(aside, run_dir / "archive" / stamp)


def test_an_edited_selector_config_never_shares_a_row(tmp_path):
    """el2n seeds 0,1 with keep=drop_top, then keep edited in its YAML and seed 0 rerun: two rows, not 'seeds 0 0 1'."""
    old, new = {"keep": "drop_top", "offset": 0.1}, {"keep": "drop_bottom", "offset": 0.1}
    for seed in (0, 1):
        write_run(tmp_path, "random", 0.1, seed)
        write_run(tmp_path, "el2n", 0.1, seed, selector_params=old, variant="el2n", run_id=f"0e2{seed}" * 3)
    rerun = tmp_path / "testbed" / "tiny" / "el2n" / "b0.1_s0"
    write_run(tmp_path, "el2n", 0.1, 0, selector_params=old, variant="el2n", run_id="0e20" * 3, folder=str(rerun))
    _archive(rerun)  # the archived record is still read: its run id has no live record
    write_run(tmp_path, "el2n", 0.1, 0, selector_params=new, variant="el2n", run_id="0e2a" * 3, folder=str(rerun))
    report = build_report(tmp_path, FAST, tmp_path / "out", ["acc"])
    (table,) = report.tables.values()
    rows = table.set_index("variant")
    assert set(rows.index) == {"random", "el2n{keep=drop_top}", "el2n{keep=drop_bottom}"}
    assert rows.at["el2n{keep=drop_top}", "seeds"] == "0 1" and rows.at["el2n{keep=drop_bottom}", "seeds"] == "0"
    assert (table["n_seeds"] == table["seeds"].str.split().map(len)).all()
    assert any("`el2n` ran with different selector parameters (keep)" in n for n in report.notes)
    assert "el2n{keep=drop_bottom}" in report.markdown
    assert set(pd.read_csv(tmp_path / "out" / "diagnostics.csv")["variant"]) == set(rows.index)


def test_stage_seed_overrides_get_rows_of_their_own(tmp_path):
    """Runs with seeds.selection=7 are not averaged into the default runs' row, and the default stays the baseline."""
    for seed in (0, 1):
        write_run(tmp_path, "random", 0.1, seed)
        write_run(tmp_path, "bids", 0.1, seed, skill=0.3)
        fixed = write_run(tmp_path, "random", 0.1, seed, run_id=f"5eed{seed}" * 3, folder=f"fixed/s{seed}")
        _set_manifest(fixed, identity={"seeds": {"selection": 7, "init": None, "order": None}})
    report = build_report(tmp_path, FAST, tmp_path / "out", ["acc"])
    (table,) = report.tables.values()
    rows = table.set_index("variant")
    assert set(rows.index) == {"random", "random{seeds.selection=7}", "bids"}
    assert (rows["n_seeds"] == 2).all() and rows.at["random{seeds.selection=7}", "seeds"] == "0 1"
    assert pd.notna(rows.at["random{seeds.selection=7}", "diff_vs_random"])  # compared with the default random
    assert any("random{seeds.selection=7}: ran with fixed stage seeds" in n for n in report.notes)


def test_stage_seed_overrides_from_resolved_seeds_without_an_identity(tmp_path):
    """A manifest without its identity: overrides are the resolved stage seeds that differ from the derived ones."""
    derived = stage_seeds(3)
    assert seed_overrides({"seeds": derived}, 3) == {}
    assert seed_overrides({"seeds": {**derived, "init": 11}}, 3) == {"init": 11}
    assert seed_overrides({"identity": {"seeds": {"selection": None, "order": 5}}}, 3) == {"order": 5}


def test_different_resolved_precision_is_never_mixed(tmp_path):
    for code, (folder, precision) in enumerate((("fp32", "no"), ("bf16", "bf16"))):
        for seed in (0, 1):
            for selector in ("random", "bids"):
                run_id = (
                    f"{code}{selector == 'bids':d}{seed}" * 4
                )  # one id per record; only the precision tells the sets apart
                run = write_run(tmp_path / folder, selector, 0.1, seed, run_id=run_id)
                _set_manifest(run, runtime={"device": "cuda", "mixed_precision": precision})
    report = build_report(tmp_path, FAST, tmp_path / "out", ["acc"])
    assert len(report.tables) == 2 and any("differ in precision" in n for n in report.notes)
    assert sorted(report.tables) == sorted(label for label in report.tables if "mixed precision" in label)
    assert any("mixed precision bf16" in label for label in report.tables)
    for table in report.tables.values():
        assert len(table) == 2 and (table["seeds"] == "0 1").all()
    stated = {"precision": {"mixed_precision": "bf16", "model_dtype": "float32"}, "runtime": {"mixed_precision": "no"}}
    assert resolved_precision(stated) == "mixed precision bf16, model dtype float32"
    assert resolved_precision({"runtime": {"mixed_precision": "no"}}) == "mixed precision no"
    assert resolved_precision({}) == ""


def test_a_repeated_seed_in_a_row_keeps_one_record_and_says_so(tmp_path):
    """Two records of one setting and seed with different run ids (e.g. made by another version): one is kept."""
    for seed in (0, 1):
        write_run(tmp_path, "random", 0.1, seed)
        write_run(tmp_path, "bids", 0.1, seed)
    twin = write_run(tmp_path, "bids", 0.1, 0, run_id="7e1e" * 3, folder="elsewhere/bids_s0")
    report = build_report(tmp_path, FAST, tmp_path / "out", ["acc"])
    (table,) = report.tables.values()
    assert (table["seeds"] == "0 1").all() and (table["n_seeds"] == 2).all()
    notes = " ".join(report.notes)
    assert "left out 1 record(s) that repeat the seed" in notes and "bids at budget 0.1, seed 0: 2 records" in notes
    assert str(twin) in notes and str(tmp_path / "testbed" / "tiny" / "bids" / "b0.1_s0") in notes


def _fixed_items(n_right: int) -> pd.DataFrame:
    """4 tasks x 20 items, the first n_right (in task order) answered correctly."""
    correct = (np.arange(80) < n_right).astype(float)
    return pd.DataFrame(
        {
            "task": np.repeat(TASKS, 20),
            "doc_id": np.tile(np.arange(20), 4),
            "correct": correct.astype(bool),
            "acc": correct,
            "acc_norm": correct,
            "gold_loglik": np.log(0.2 + 0.6 * correct),
            "gold_prob": 0.2 + 0.6 * correct,
            "pred": 0,
            "gold": 1,
            "n_choices": 4,
        }
    )


@pytest.fixture
def out_of_seed_order(tmp_path):
    """random and bids at seeds 0 and 1, random's seed 1 found first; bids gets 6 more right than random per seed."""
    right = {("random", 0): 60, ("random", 1): 20, ("bids", 0): 66, ("bids", 1): 26}
    order = [("random", 1), ("random", 0), ("bids", 0), ("bids", 1)]  # the order of the folders on disk
    for i, (selector, seed) in enumerate(order):
        write_run(tmp_path, selector, 0.1, seed, items=_fixed_items(right[(selector, seed)]), folder=f"{i}_{selector}")
    return tmp_path


def test_paired_tests_match_seeds_whatever_the_discovery_order(out_of_seed_order, tmp_path):
    found = load_records(out_of_seed_order).results.drop_duplicates("run_id")
    assert list(found["seed"]) == [1, 0, 0, 1]  # random's seed 1 is read first
    mcnemar = build_report(out_of_seed_order, Settings(test="mcnemar", correction="none"), tmp_path / "m", [])
    (table,) = mcnemar.tables.values()
    bids = table.set_index("variant").loc["bids"]
    # seed 0 with seed 0, seed 1 with seed 1: bids alone right on 6 + 6 items, random alone on none
    assert bids["p_raw"] == pytest.approx(2 * 0.5**12)
    assert bids["diff_vs_random"] == pytest.approx(0.075)  # (6/20) / 4 tasks per seed
    boot = build_report(out_of_seed_order, FAST, tmp_path / "b", [])
    (table,) = boot.tables.values()
    bids = table.set_index("variant").loc["bids"]
    # matched seeds: bids is at least as good on every item of every seed, so no draw favours random
    assert bids["diff_low"] >= 0 and bids["diff_high"] <= 0.15 and bids["prob_better"] > 0.99
    assert list(table.set_index("variant").at["random", "_seed_values"]) == [0, 1]


def test_method_text_says_the_difference_interval_is_not_adjusted():
    text = method_text(Settings())
    assert "percentile interval of the bootstrap, not adjusted for multiple comparisons" in text
    assert "Holm-adjusted p-values" in text
    assert "percentile interval" not in method_text(Settings(correction="none"))


def test_records_of_one_setting_share_one_label(tmp_path):
    """Older records labelled an override that restated the configured value (`el2n[offset=0.1]` where 0.1 is what
    el2n runs with anyway): the same selector with the same resolved parameters is one row, under the shorter label."""
    params = {"keep": "drop_top", "offset": 0.1}
    for seed in (0, 1):
        write_run(tmp_path, "random", 0.1, seed)
    write_run(tmp_path, "el2n", 0.1, 0, selector_params=params, variant="el2n[offset=0.1]", folder="a/el2n/b0.1_s0")
    write_run(tmp_path, "el2n", 0.1, 1, selector_params=params, variant="el2n", folder="b/el2n/b0.1_s1")
    write_run(tmp_path, "el2n", 0.1, 1, selector_params={**params, "offset": 0.2}, variant="el2n[offset=0.2]")
    report = build_report(tmp_path, FAST, tmp_path / "out", ["acc"])
    (table,) = report.tables.values()
    rows = table.set_index("variant")
    assert set(rows.index) == {"random", "el2n", "el2n[offset=0.2]"}, rows.index
    assert rows.at["el2n", "seeds"] == "0 1"
