"""Influence scoring over a training feature store larger than the memory it is allowed: peak resident memory
of `influence_matrix` streaming a float16 memmap, against the store's size and the obvious way's needs.

The store is synthetic (one random block of unit vectors, written again with a row shift per chunk: the
content does not matter for memory). Scoring runs in a child process, so that the parent's writing does not
count, under a hard RLIMIT_DATA (private memory) of --limit-gib; peak RSS is the child's ru_maxrss. The
obvious way (load the whole store, convert to float32, one matrix product) is run only when it fits.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 2**30


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_store(path: Path, n: int, d: int, seed: int, chunk: int = 8192) -> None:
    """A float16 .npy of n unit rows, written with plain file writes (no mapping, so no resident pages)."""
    base = unit_rows(np.random.default_rng(seed), min(chunk, n), d).astype(np.float16)
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f2")), "fortran_order": False, "shape": (n, d)}
        np.lib.format.write_array_header_1_0(f, header)
        for i, start in enumerate(range(0, n, chunk)):
            np.roll(base, i, axis=0)[: min(chunk, n - start)].tofile(f)


def meminfo_bytes(field: str) -> int:
    """A /proc/meminfo figure (MemAvailable counts the page cache that can be dropped), in bytes."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(args: argparse.Namespace) -> None:
    """Score the store under the memory limit and print one JSON line of measurements."""
    from harness.signals.influence import influence_matrix

    store = np.load(args.child, mmap_mode="r")
    val = unit_rows(np.random.default_rng(args.seed + 1), args.v, store.shape[1])
    if args.way == "streamed":
        limit = int(args.limit_gib * GIB)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        start = time.perf_counter()
        out = influence_matrix([store], [val], np.array([1.0]), block_rows=args.block_rows[0])
        seconds = time.perf_counter() - start
    else:
        start = time.perf_counter()
        dense = np.load(args.child).astype(np.float32)  # the obvious way: the whole store in memory
        out = dense @ val.T
        seconds = time.perf_counter() - start
    rows = np.r_[0:50, store.shape[0] - 50 : store.shape[0]]  # spot check against a direct product
    expected = store[rows].astype(np.float64) @ val.astype(np.float64).T
    error = float(np.abs(out[rows] - expected).max())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"seconds": seconds, "peak_rss": peak, "rss_file_end": status_kib("RssFile") * 1024, "err": error}
    print(json.dumps(result))


def run_child(path: Path, args: argparse.Namespace, way: str, block_rows: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--way", way, "--v", str(args.v), "--seed", str(args.seed)]
    cmd += ["--limit-gib", str(args.limit_gib), "--block-rows", str(block_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{way} scoring failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="training rows in the store")
    parser.add_argument("--d", type=int, default=8192, help="feature dimension")
    parser.add_argument("--v", type=int, default=64, help="validation examples (time grows with it, memory hardly)")
    parser.add_argument("--block-rows", type=int, nargs="+", default=[65536], help="rows per block (one run each)")
    parser.add_argument("--limit-gib", type=float, default=6.0, help="RLIMIT_DATA for the scoring process")
    parser.add_argument("--dir", default=None, help="where to write the store (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--way", default="streamed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    store_bytes = args.n * args.d * 2
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "train_features.npy"
        start = time.perf_counter()
        write_store(path, args.n, args.d, args.seed)
        write_s = time.perf_counter() - start
        streamed = {rows: run_child(path, args, "streamed", rows) for rows in args.block_rows}
        obvious_need = args.n * args.d * (2 + 4) + args.n * args.v * 4
        available = meminfo_bytes("MemAvailable")
        obvious = run_child(path, args, "obvious", 0) if obvious_need < available / 2 else None

    print(f"store {args.n} x {args.d} float16 = {store_bytes / GIB:.2f} GiB, written in {write_s:.0f} s")
    print(f"validation examples |V| = {args.v}")
    for rows, result in streamed.items():
        print(
            f"streamed influence_matrix, block_rows={rows}, RLIMIT_DATA {args.limit_gib:g} GiB: "
            f"{result['seconds']:.1f} s, peak RSS {result['peak_rss'] / GIB:.2f} GiB "
            f"= {result['peak_rss'] / store_bytes:.1%} of the store; file-backed pages resident at the end "
            f"{result['rss_file_end'] / 2**20:.0f} MiB (libraries included); max error on 100 rows {result['err']:.1e}"
        )
    least = min(r["peak_rss"] for r in streamed.values())
    if obvious is None:
        print(
            f"obvious way (load the store, float32, one product): not run, it needs about {obvious_need / GIB:.1f} GiB "
            f"and {available / GIB:.1f} GiB is available; memory ratio to the smallest peak {obvious_need / least:.1f}x"
        )
    else:
        print(
            f"obvious way (load the store, float32, one product): {obvious['seconds']:.1f} s, "
            f"peak RSS {obvious['peak_rss'] / GIB:.2f} GiB; memory ratio to the smallest peak "
            f"{obvious['peak_rss'] / least:.1f}x"
        )
    fits = all(r["peak_rss"] < args.limit_gib * GIB for r in streamed.values()) and args.limit_gib * GIB < store_bytes
    print(f"store larger than the limit and every peak RSS under it: {'yes' if fits else 'NO'}")


if __name__ == "__main__":
    main()
