"""One run's record: resolved config, manifest, training log, per-item results, and results.csv last.

A run is complete exactly when results.csv exists; it is written atomically after everything else.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from harness import REPO_ROOT, __version__
from harness.locking import HeartbeatLock
from harness.storage import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULTS = "results.csv"
MANIFEST = "manifest.json"
ITEMS = "eval_items.csv"
CONFIG = "config.yaml"
PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "datasets", "lm_eval", "hydra-core", "numpy")
SCORES = "scores.csv"
LM_EVAL = "lm_eval.json"
LOG = "harness.log"
LOCK = ".lock"
RESULT_COLUMNS = (
    "run_id",
    "run_dir",
    "selector",
    "variant",
    "selector_params",
    "budget",
    "budget_unit",
    "k",
    "seed",
    "model",
    "model_hash",
    "data",
    "data_hash",
    "train_hash",
    "eval_hash",
    "pool_fingerprint",
    "n_selected",
    "train_tokens",
    "train_steps",
    "train_epochs",
    "train_flops",
    "compute",
    "selection_seconds",
    "signals_cached",
    "task",
    "metric",
    "value",
    "n_items",
)
"""Columns of results.csv: who the run is (identity hashes per stage, so a report never mixes settings),
what it trained on and for how long, what it cost, and one tidy (task, metric, value) per row."""


class RunRecord:
    """The files of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def path(self, name: str) -> Path:
        return self.dir / name

    def is_complete(self) -> bool:
        return self.path(RESULTS).exists()

    def manifest(self) -> dict[str, Any] | None:
        """The stored manifest (None when there is none or it cannot be read)."""
        try:
            return json.loads(self.path(MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def has_content(self) -> bool:
        """Anything but Hydra's log, the lock and the archive: an earlier (complete or unfinished) attempt."""
        if not self.dir.is_dir():
            return False
        return any(p.name not in (LOG, "archive") and not _lock_file(p.name) for p in self.dir.iterdir())

    def lock(self) -> HeartbeatLock:
        """The per-run-folder lock: one process runs a cell at a time."""
        return HeartbeatLock(self.path(LOCK))

    def archive(self) -> Path | None:
        """Move everything of an earlier attempt aside (archive/<time>/), Hydra's log included, so a rerun never
        overwrites or mixes with it; the open log handler continues in a fresh file."""
        if not self.has_content():
            return None
        dest = self.dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
        while dest.exists():
            dest = dest.with_name(dest.name + "_")
        dest.mkdir(parents=True)
        for p in list(self.dir.iterdir()):
            if p.name == "archive" or _lock_file(p.name):
                continue
            if p.name == LOG:
                _move_open_log(p, dest / p.name)
            else:
                shutil.move(str(p), dest / p.name)
        return dest

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.path(CONFIG), yaml_text)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.path(MANIFEST), manifest)

    def write_scores(self, scores: pd.Series) -> None:
        frame = pd.DataFrame({"id": scores.index.astype(str), "score": scores.to_numpy(dtype=float)})
        atomic_write_bytes(self.path(SCORES), frame.to_csv(index=False).encode())

    def write_lm_eval(self, metadata: dict[str, Any]) -> None:
        atomic_write_json(self.path(LM_EVAL), metadata)

    def write_items(self, items: pd.DataFrame) -> None:
        atomic_write_bytes(self.path(ITEMS), items.to_csv(index=False).encode())

    def write_results(self, results: pd.DataFrame) -> None:
        atomic_write_bytes(self.path(RESULTS), results.to_csv(index=False).encode())


def _move_open_log(src: Path, dest: Path) -> None:
    """Move a log file that a logging.FileHandler of this process may hold open, and make it reopen `src`."""
    handlers = [
        h
        for h in logging.root.handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == src.resolve()
    ]
    for h in handlers:
        h.acquire()
    try:
        for h in handlers:
            h.flush()
            if h.stream is not None:
                h.stream.close()
                h.stream = None  # reopened (append mode) on the next record
        shutil.move(str(src), dest)
    finally:
        for h in handlers:
            h.release()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "harness": __version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state() -> dict[str, Any]:
    """Commit of the checkout the harness runs from, and whether it had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    if not (REPO_ROOT / ".git").exists():  # not a checkout: say so without git printing "fatal: ..."
        return {"commit": None, "dirty": None}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=normal")  # a new selector file makes it dirty
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def command_line() -> str:
    return " ".join([Path(sys.executable).name, "-m", "harness", *sys.argv[1:]])


def tidy_results(metrics: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """One row per task and metric (plus macro_avg), with the run's identifying columns."""
    frame = metrics.copy()
    for key, value in meta.items():
        frame[key] = value
    return frame[list(RESULT_COLUMNS)]


def _lock_file(name: str) -> bool:
    """The run folder's lock and the short-lived files of breaking or releasing it (never archived)."""
    return name == LOCK or name.startswith(f"{LOCK}.break") or name.startswith(f"{LOCK}.gone")


def recorded_inputs(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a stored record depended on beyond its identity: the selector's file, the pool's content, the evaluation
    tasks' files and data (with lm-eval's version) and the resolved precision (older records state the mixed
    precision under `runtime` only, and no task fingerprint)."""
    precision = manifest.get("precision") or {}
    return {
        "selector_file_sha256": manifest.get("selector_file_sha256"),
        "pool_fingerprint": manifest.get("pool_fingerprint"),
        "eval_tasks_sha256": manifest.get("eval_tasks_sha256"),
        "mixed_precision": precision.get("mixed_precision", (manifest.get("runtime") or {}).get("mixed_precision")),
        "model_dtype": precision.get("model_dtype"),
    }


def changed_inputs(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One phrase per input whose value in the `stored` manifest differs from `current` (as `recorded_inputs`
    gives it); an input that either side does not know is not compared."""
    before = recorded_inputs(stored)
    changes = []
    for key, now in current.items():
        then = before.get(key)
        if then is None or now is None or then == now:
            continue
        if key == "selector_file_sha256":
            name = Path(str(stored.get("selector_file") or "?")).name
            changes.append(f"selector file {name} changed (sha256 {then[:8]} -> {now[:8]})")
        elif key == "pool_fingerprint":
            changes.append(f"pool content changed (fingerprint {then[:8]} -> {now[:8]})")
        elif key == "eval_tasks_sha256":
            changes.append(f"evaluation tasks, their data or lm-eval changed (sha256 {then[:8]} -> {now[:8]})")
        elif key == "mixed_precision":
            changes.append(f"mixed precision {then} -> {now}")
        else:
            changes.append(f"model dtype {then} -> {now}")
    return changes
