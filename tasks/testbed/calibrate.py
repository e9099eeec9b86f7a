"""Calibration of the testbed: full data against a 5% random subset on several seeds.

Runs the cells through the harness itself (one Hydra multirun) unless they are complete already,
then prints the table in the README: per-task accuracy (mean and seed-to-seed standard deviation),
the macro average, and whether full beats random by more than the spread of seeds.

    python tasks/testbed/calibrate.py --results results/calibration --seeds 0 1 2
    python tasks/testbed/calibrate.py --seeds 0 1 --budgets 0.05 -- data.n_pool=2000   # overrides after --
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.report.load import ARCHIVE


def run_cells(results: Path, seeds: list[int], budgets: list[float], extra: list[str]) -> None:
    """Every (selector, budget, seed) cell through `python -m harness -m`; complete cells are skipped."""
    seed_list = ",".join(str(s) for s in seeds)
    for selector, budget_list in (("full", "1.0"), ("random", ",".join(str(b) for b in budgets))):
        cmd = [
            sys.executable,
            "-m",
            "harness",
            "-m",
            f"selector={selector}",
            f"budget={budget_list}",
            f"seed={seed_list}",
            f"paths.results={results}",
            *extra,
        ]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)


def load(results: Path, seeds: list[int], budgets: list[float]) -> pd.DataFrame:
    """Accuracy rows of the calibration cells only: `full`, and `random` at the asked budgets, of the asked seeds.
    The folder may hold a whole sweep (other selectors, parameter variants, other budgets): those are left out."""
    paths = sorted(results.glob("runs/**/results.csv"))
    # live records only: an archive/ folder holds an earlier attempt that rerun=true moved aside (often of another
    # configuration of the same cell), never the cell's current result
    frames = [pd.read_csv(p) for p in paths if ARCHIVE not in p.relative_to(results).parts]
    if not frames:
        raise SystemExit(f"no complete runs under {results}")
    table = pd.concat(frames, ignore_index=True)
    table = table[(table["metric"] == "acc") & (table["variant"] == table["selector"]) & table["seed"].isin(seeds)]
    asked = table["budget"].round(6).isin([round(b, 6) for b in budgets])
    table = table[(table["selector"] == "full") | ((table["selector"] == "random") & asked)]
    if not (table["selector"] == "full").any():
        raise SystemExit(f"no complete `full` cell of seeds {seeds} under {results}; run without --no-run first")
    repeated = table[table.duplicated(["selector", "budget", "seed", "task"], keep=False)]
    if not repeated.empty:
        row = repeated.iloc[0]
        raise SystemExit(
            f"{results} holds several records of {row['selector']} budget {row['budget']} seed {row['seed']} (other "
            "settings); pass --results a folder with one configuration's cells"
        )
    return table


def calibration_table(acc: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and seed standard deviation per (selector, budget) and task."""
    acc = acc.assign(
        task=acc["task"].str.removeprefix("testbed_"), cell=acc["selector"] + " " + acc["budget"].astype(str)
    )
    stats = acc.groupby(["cell", "task"])["value"].agg(["mean", "std", "count"]).reset_index()
    mean = stats.pivot(index="cell", columns="task", values="mean")
    std = stats.pivot(index="cell", columns="task", values="std")
    return mean, std


def markdown(mean: pd.DataFrame, std: pd.DataFrame, n_seeds: int) -> str:
    tasks = [c for c in mean.columns if c != "macro_avg"] + ["macro_avg"]
    lines = [
        f"| cell (acc, mean ± sd over {n_seeds} seeds) | " + " | ".join(tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for cell in mean.index:
        cells = [f"{mean.loc[cell, t]:.3f} ± {std.loc[cell, t]:.3f}" for t in tasks]
        lines.append(f"| {cell} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/calibration"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05])
    parser.add_argument("--no-run", action="store_true", help="only tabulate the records already there")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every cell")
    args = parser.parse_args()
    if not args.no_run:
        run_cells(args.results.resolve(), args.seeds, args.budgets, args.overrides)
    mean, std = calibration_table(load(args.results, args.seeds, args.budgets))
    print(markdown(mean, std, len(args.seeds)))
    full = mean.loc["full 1.0", "macro_avg"]
    for cell in mean.index.drop("full 1.0"):
        gap = full - mean.loc[cell, "macro_avg"]
        spread = max(std.loc["full 1.0", "macro_avg"], std.loc[cell, "macro_avg"])
        verdict = "more" if gap > spread else "NOT more"
        print(f"\nfull - {cell}: {gap:+.3f} macro acc, {verdict} than the largest seed sd ({spread:.3f})")
    per_task = mean.drop(columns="macro_avg").loc["full 1.0"]
    print(f"full data per task: min {per_task.min():.3f}, max {per_task.max():.3f} (chance 0.25, saturation 1.0)")


if __name__ == "__main__":
    main()
