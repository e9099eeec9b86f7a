"""BIDS selection: the per-column fast path (selectors/bids.py) against the paper's literal O(k N |V|) loop.

Part 1 runs both on the same random attribution matrix, checks that they select the same rows in the same
order, and prints the ratio. When the literal loop would take too long (--literal-steps), it runs only its
first steps, which are checked against the fast path's first steps, and its full time is extrapolated from
the measured per-step time (every literal step costs the same: one N x |V| pass). Part 2 times the fast
path alone at the paper's scale (UltraInteract, ~288K examples, 50 validation examples x 7 benchmarks).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import numpy as np

from harness import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests"))
from test_bids import literal_bids  # noqa: E402  (the literal loop the tests check the fast path against)


def load_bids():
    """selectors/bids.py, imported by path (selectors/ is a folder of plugin files, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_bids_core", REPO_ROOT / "selectors" / "bids.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attribution(n: int, v: int, seed: int) -> np.ndarray:
    """A random influence-like matrix: a shared per-example offset plus per-column noise, float32 like the store."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 1)) * 0.5 + rng.normal(size=(n, v))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="training rows for the comparison")
    parser.add_argument("--v", type=int, default=300, help="validation columns for the comparison")
    parser.add_argument("--budget", type=float, default=0.15, help="k = round(budget * N)")
    parser.add_argument("--literal-steps", type=int, default=0, help="run only this many literal steps (0 = all k)")
    parser.add_argument("--paper-n", type=int, default=288000, help="training rows at the paper's scale (0 skips)")
    parser.add_argument("--paper-v", type=int, default=350, help="validation columns at the paper's scale")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bids = load_bids()

    a = attribution(args.n, args.v, args.seed)
    k = int(round(args.budget * args.n))
    fast_times = []
    for _ in range(3):
        start = time.perf_counter()
        fast = bids.bids_order(a, k)
        fast_times.append(time.perf_counter() - start)
    fast_s = statistics.median(fast_times)
    steps = k if args.literal_steps <= 0 else min(k, args.literal_steps)
    start = time.perf_counter()
    z = bids.zscore_columns(a)
    literal = literal_bids(z, steps)
    literal_s = time.perf_counter() - start
    assert fast[:steps].tolist() == literal, "the fast path and the literal loop must select the same rows"
    print(f"N={args.n} |V|={args.v} k={k} (budget {args.budget:.0%})")
    print(f"fast path           : {fast_s:8.2f} s   (median of 3)")
    if steps == k:
        print(f"literal loop        : {literal_s:8.2f} s   (once; identical order of all {k} rows)")
        print(f"ratio               : {literal_s / fast_s:8.1f}x")
    else:
        total = literal_s / steps * k
        print(f"literal loop        : {literal_s:8.2f} s for its first {steps} of {k} steps (same rows as fast path)")
        print(f"literal, all k steps: {total:8.2f} s   (extrapolated: {literal_s / steps * 1e3:.1f} ms per step x {k})")
        print(f"ratio               : {total / fast_s:8.1f}x   (against the extrapolated literal time)")

    if args.paper_n > 0:
        a = attribution(args.paper_n, args.paper_v, args.seed + 1)
        k = int(round(args.budget * args.paper_n))
        start = time.perf_counter()
        order = bids.bids_order(a, k)
        paper_s = time.perf_counter() - start
        assert len(set(order.tolist())) == k
        print(f"paper scale N={args.paper_n} |V|={args.paper_v} k={k}: fast path {paper_s:.1f} s")


if __name__ == "__main__":
    main()
