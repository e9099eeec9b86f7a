"""One run's record: resolved config, manifest, training log, per-item results, and results.csv last.

A run is complete exactly when results.csv exists; it is written atomically after everything else.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from harness import REPO_ROOT, __version__
from harness.storage import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULTS = "results.csv"
MANIFEST = "manifest.json"
ITEMS = "eval_items.csv"
CONFIG = "config.yaml"
PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "datasets", "lm_eval", "hydra-core", "numpy")
RESULT_COLUMNS = (
    "run_id",
    "selector",
    "budget",
    "budget_unit",
    "seed",
    "model",
    "data",
    "pool_fingerprint",
    "n_selected",
    "train_tokens",
    "task",
    "metric",
    "value",
    "n_items",
    "selection_seconds",
)


class RunRecord:
    """The files of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def path(self, name: str) -> Path:
        return self.dir / name

    def is_complete(self) -> bool:
        return self.path(RESULTS).exists()

    def archive(self) -> Path | None:
        """Move an earlier record aside (archive/<time>/) so a rerun never overwrites it."""
        entries = [p for p in self.dir.iterdir() if p.name != "archive"] if self.dir.is_dir() else []
        entries = [p for p in entries if not p.name.endswith(".log")]
        if not entries:
            return None
        dest = self.dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
        while dest.exists():
            dest = dest.with_name(dest.name + "_")
        dest.mkdir(parents=True)
        for p in entries:
            shutil.move(str(p), dest / p.name)
        return dest

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.path(CONFIG), yaml_text)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.path(MANIFEST), manifest)

    def write_items(self, items: pd.DataFrame) -> None:
        atomic_write_bytes(self.path(ITEMS), items.to_csv(index=False).encode())

    def write_results(self, results: pd.DataFrame) -> None:
        atomic_write_bytes(self.path(RESULTS), results.to_csv(index=False).encode())


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

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cell_id(cfg: Any) -> str:
    """Short hash of everything that defines the cell's result (not where it is written or logged)."""
    from omegaconf import OmegaConf

    spec = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("rerun", "paths", "logger")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def command_line() -> str:
    return " ".join([Path(sys.executable).name, "-m", "harness", *sys.argv[1:]])


def tidy_results(metrics: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """One row per task and metric (plus macro_avg), with the run's identifying columns."""
    frame = metrics.copy()
    for key, value in meta.items():
        frame[key] = value
    return frame[list(RESULT_COLUMNS)]
