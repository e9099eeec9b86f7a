"""The benchmarks that benchmarks/README.md lists run on the current code (a quick variant) and answer --help."""

from __future__ import annotations

import subprocess
import sys

from harness import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300, cwd=BENCH
    )


def test_the_tokenize_benchmark_runs_on_a_small_pool():
    """It unpacked an older return value of encode_examples and failed before printing anything."""
    done = bench("bench_tokenize.py", "--n-pool", "300")
    assert done.returncode == 0, done.stderr
    assert "pool of 300 examples" in done.stdout and "cache, later runs" in done.stdout


def test_benchmarks_without_argparse_answer_help():
    """`--help` was read as the record count (a traceback) or ignored (the whole benchmark ran)."""
    for script in ("bench_report.py", "bench_tokenize.py"):
        done = bench(script, "--help")
        assert done.returncode == 0 and done.stdout.startswith("usage:"), (script, done.stderr)
