"""`python -m harness.report`: leaderboards, curves and robustness on synthetic records of the run format."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.report import Settings, build_report, log_to_wandb
from harness.report.__main__ import main
from harness.report.load import load_records
from harness.report.synthetic import write_run, write_sweep

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
