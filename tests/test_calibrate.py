"""tasks/testbed/calibrate.py tabulates the calibration cells only, from a folder that may hold a whole sweep."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from harness import REPO_ROOT
from harness.report.synthetic import write_sweep

SCRIPT = REPO_ROOT / "tasks" / "testbed" / "calibrate.py"


def calibrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_the_table_of_a_sweep_folder_holds_full_and_the_asked_random_cells(tmp_path):
    """The README runs it on the reference sweep's folder (every selector there): it printed a row per selector
    and budget found, and averaged a selector's parameter variants into one row."""
    write_sweep(tmp_path / "runs", selectors=("random", "bids"), budgets=(0.05, 0.1, 0.2), seeds=(0, 1), n_per_task=5)
    done = calibrate("--results", str(tmp_path), "--no-run", "--seeds", "0", "1", "--budgets", "0.05", "0.1")
    assert done.returncode == 0, done.stderr
    rows = [
        line.split("|")[1].strip()
        for line in done.stdout.splitlines()
        if line.startswith("| ") and "± " in line and "mean ± sd" not in line
    ]
    assert sorted(rows) == ["full 1.0", "random 0.05", "random 0.1"], done.stdout
    assert "bids" not in done.stdout


def test_a_folder_without_the_full_cell_says_so(tmp_path):
    write_sweep(tmp_path / "runs", selectors=("random",), budgets=(0.05,), seeds=(0,), n_per_task=5, full=False)
    done = calibrate("--results", str(tmp_path), "--no-run", "--seeds", "0")
    assert done.returncode != 0 and "no complete `full` cell" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_archived_records_beside_a_live_one_are_left_out(tmp_path):
    """rerun=true moves an earlier attempt (often of another configuration of the cell) into archive/: the table
    reads the live record only (it refused the folder as holding several records of the cell)."""
    write_sweep(tmp_path / "runs", selectors=("random",), budgets=(0.05,), seeds=(0,), n_per_task=5)
    live = next(p for p in (tmp_path / "runs").glob("**/results.csv") if "full" in p.parts)
    old = live.parent / "archive" / "20200101-000000"
    old.mkdir(parents=True)
    frame = pd.read_csv(live)
    frame["value"] = 0.0  # another configuration's (worse) result
    frame.to_csv(old / "results.csv", index=False)
    done = calibrate("--results", str(tmp_path), "--no-run", "--seeds", "0", "--budgets", "0.05")
    assert done.returncode == 0, done.stderr
    full_row = next(line for line in done.stdout.splitlines() if line.startswith("| full"))
    assert "0.000 ±" not in full_row, done.stdout
