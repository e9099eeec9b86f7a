"""Leaderboards, scaling curves and paired statistics from the run records under a folder.

`python -m harness.report results/ [--metric acc] [--out DIR] [--alpha 0.05] [--correction holm|none] [--wandb]`
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import HarnessError
from harness.report import Settings, build_report, log_to_wandb
from harness.report.stats import INTERVALS


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="folder holding run records (searched recursively)")
    p.add_argument("--metric", default="acc", help="acc (default), acc_norm, gold_loglik, gold_prob, exact_match, ...")
    p.add_argument("--out", default=None, help="output folder (default: FOLDER/report)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - interval level, and the test's level (0.05)")
    p.add_argument("--correction", choices=("holm", "none"), default="holm", help="multiple comparisons (holm)")
    p.add_argument("--interval", choices=INTERVALS, default="wilson", help="interval for 0/1 metrics (wilson)")
    p.add_argument("--test", choices=("bootstrap", "mcnemar"), default="bootstrap", help="paired test (bootstrap)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws (2000)")
    p.add_argument("--curves", default=None, help="comma-separated metrics to plot (default: every metric)")
    p.add_argument("--logger", choices=("none", "wandb"), default="none", help="wandb: also log to one wandb run")
    p.add_argument("--wandb", action="store_true", help="the same as --logger wandb")
    p.add_argument("--wandb-project", default="data-selection-harness")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    settings = Settings(args.metric, args.alpha, args.correction, args.interval, args.test, args.n_boot)
    try:
        if args.n_boot < 100:
            raise HarnessError(f"--n-boot {args.n_boot} is too few for a p-value; use at least 100 (default 2000)")
        curves = args.curves.split(",") if args.curves else None
        report = build_report(args.folder, settings, args.out, curves)
        print(report.markdown)
        if args.wandb or args.logger == "wandb":
            print(f"wandb: logged to {log_to_wandb(report, args.wandb_project)}")
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("wrote: " + ", ".join(str(p) for p in report.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
