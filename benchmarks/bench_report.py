"""Reading run records for the report: 1,000 synthetic records, the harness's way against the obvious one.

The harness concatenates CSV files that share a header and parses them in one pandas call; the obvious way
reads each file with its own pd.read_csv and concatenates the frames. Prints the median of a few repeats
and the ratio, then the time of the whole report (leaderboard, tests, one metric's curves, HTML).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
from timing import median_seconds

from harness.report import Settings, build_report
from harness.report.load import find_records, load_records
from harness.report.synthetic import write_sweep


def naive(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """One pd.read_csv per file and one json.load per manifest, then pd.concat."""
    live, _, _ = find_records(folder)
    results = pd.concat([pd.read_csv(d / "results.csv") for d in live], ignore_index=True)
    items = pd.concat([pd.read_csv(d / "eval_items.csv") for d in live], ignore_index=True)
    manifests = {d.name: json.loads((d / "manifest.json").read_text()) for d in live}
    return results, items, manifests


def main(n_records: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # 10 selectors x 5 budgets x 20 seeds = 1,000 records of 4 tasks x 50 items (+ 20 of full)
        selectors = tuple(f"sel{i}" for i in range(9)) + ("random",)
        seeds = tuple(range(n_records // 50))
        write_sweep(folder, selectors=selectors, budgets=(0.02, 0.05, 0.1, 0.2, 0.4), seeds=seeds, full=True)
        n = len(find_records(folder)[0])
        records = load_records(folder)
        ours = median_seconds(lambda: load_records(folder), 3)
        slow = median_seconds(lambda: naive(folder), 3)
        assert len(naive(folder)[1]) == len(records.items), "the two ways must read the same items"
        start = time.perf_counter()
        build_report(folder, Settings(), folder / "report", ["acc"])
        whole = time.perf_counter() - start
    print(f"{n} run records ({len(records.items)} evaluation items)")
    print(f"one read_csv per file : {slow:.2f} s")
    print(f"concatenated parse    : {ours:.2f} s   ({slow / ours:.1f}x faster)")
    print(f"whole report          : {whole:.2f} s   (read, leaderboard with 2,000-draw paired tests, curves, HTML)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_records", nargs="?", type=int, default=1000, help="records to write (1000: 1,020 with full)")
    main(parser.parse_args().n_records)
