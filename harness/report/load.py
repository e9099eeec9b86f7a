"""Run records on disk -> pandas frames, one live record per cell.

A record is complete when its results.csv exists. Records under an `archive/` folder are earlier copies of a
cell: they are used only when the cell has no live complete record. Several records with one run_id (a
copied folder) count once: the newest. CSV files that share a header are parsed in one pandas call, which is
what makes thousands of records load in seconds.
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError

RESULTS, ITEMS, MANIFEST, CONFIG = "results.csv", "eval_items.csv", "manifest.json", "config.yaml"
MACRO = "macro_avg"
ARCHIVE = "archive"
SKIP_DIRS = {"checkpoints", "cache", ".hydra", "report", "wandb", "__pycache__"}
"""Folders never searched for records (caches, checkpoints, report output)."""

GROUP_KEYS = ("data", "model", "data_hash", "model_hash", "train_hash", "eval_hash", "compute", "pool_fingerprint")
"""Records are comparable only when all of these agree."""

DEFAULTS: dict[str, Any] = {
    "variant": None,
    "selector_params": "{}",
    "budget_unit": "run",
    "data_hash": "",
    "model_hash": "",
    "train_hash": "",
    "eval_hash": "",
    "compute": "",
    "pool_fingerprint": "",
    "k": np.nan,
    "n_selected": np.nan,
    "train_tokens": np.nan,
    "train_steps": np.nan,
    "train_epochs": np.nan,
    "train_flops": np.nan,
    "selection_seconds": np.nan,
    "signals_cached": np.nan,
    "n_items": np.nan,
}
"""Columns older or foreign records may lack, and what they read as."""

REQUIRED = ("run_id", "selector", "budget", "seed", "model", "data", "task", "metric", "value")


NOTES: tuple[tuple[str, str], ...] = (
    ("incomplete", "skipped {n} incomplete run(s) (no results.csv yet)"),
    ("unreadable", f"skipped {{n}} unreadable record(s) (results.csv lacks {', '.join(REQUIRED)})"),
    ("duplicates", "counted {n} duplicate record(s) of a cell once (same run_id; newest kept)"),
    ("archived_ignored", "ignored {n} archived record(s) of cells that have a live record"),
    ("from_archive", "read {n} cell(s) from their archived record (no live complete record)"),
    ("no_items", "{n} record(s) have no eval_items.csv: no paired tests for them"),
)
"""What the reader says about each count it keeps, in this order."""


@dataclass
class Records:
    """Everything the report reads: result rows, per-item rows and manifests of the counted records."""

    results: pd.DataFrame
    items: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """One line per thing skipped or merged while reading."""
        return [note.format(n=self.counts[key]) for key, note in NOTES if self.counts.get(key)]


def find_records(folder: Path) -> tuple[list[Path], list[Path], int]:
    """Complete live record folders, complete archived ones, and the number of incomplete live ones."""
    live, archived, incomplete = [], [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        in_archive = ARCHIVE in Path(root).relative_to(folder).parts
        if RESULTS in files:
            (archived if in_archive else live).append(Path(root))
        elif not in_archive and (MANIFEST in files or CONFIG in files):
            incomplete += 1
    return live, archived, incomplete


def read_csvs(
    paths: list[Path], usecols: Callable[[str], bool] | None = None, with_source: bool = False
) -> pd.DataFrame:
    """Parse many CSV files: those with one header are concatenated as text and parsed in one call.

    with_source adds `_source` (the index in `paths` of each row's file); rows are attributed by counting lines,
    and files with quoted multi-line fields fall back to one parse per file.
    """
    by_header: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for i, path in enumerate(paths):
        data = path.read_bytes()
        head, _, body = data.partition(b"\n")
        if body and not body.endswith(b"\n"):
            body += b"\n"
        by_header[head.decode().rstrip("\r")].append((i, body))
    frames = []
    for header, chunks in by_header.items():
        text = header.encode() + b"\n" + b"".join(body for _, body in chunks)
        frame = pd.read_csv(io.BytesIO(text), usecols=usecols, low_memory=False)
        if with_source:
            lines = np.array([body.count(b"\n") for _, body in chunks])
            if lines.sum() != len(frame):  # a quoted newline somewhere: fall back to one call per file
                parts = [pd.read_csv(io.BytesIO(header.encode() + b"\n" + body), usecols=usecols) for _, body in chunks]
                lines = np.array([len(p) for p in parts])
                frame = pd.concat(parts, ignore_index=True)
            frame["_source"] = np.repeat([i for i, _ in chunks], lines)
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _has_columns(path: Path, required: tuple[str, ...]) -> bool:
    """The CSV file's header names every required column (an empty or foreign file does not)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = handle.readline().strip().split(",")
    except OSError:
        return False
    return all(c in header for c in required)


def _choose(results: pd.DataFrame, dirs: list[Path], n_live: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep one record per run_id: the newest live one, else the newest archived one."""
    first = results.drop_duplicates("_source")[["_source", "run_id"]]
    first = first.assign(
        archived=first["_source"] >= n_live,
        mtime=[(dirs[i] / RESULTS).stat().st_mtime for i in first["_source"]],
    )
    first = first.sort_values(["run_id", "archived", "mtime"], ascending=[True, True, False])
    keep = first.drop_duplicates("run_id")
    dropped = first[~first["_source"].isin(keep["_source"])]
    has_live = set(first.loc[~first["archived"], "run_id"])
    counts = {
        "duplicates": int((~dropped["archived"]).sum()),
        "archived_ignored": int(dropped["archived"].sum()),
        "from_archive": int((keep["archived"] & ~keep["run_id"].isin(has_live)).sum()),
    }
    return results[results["_source"].isin(set(keep["_source"]))], counts


def _normalise(results: pd.DataFrame, dirs: list[Path]) -> pd.DataFrame:
    """Fill columns older records lack, fix dtypes, and point run_dir at where the record is now."""
    for col, default in DEFAULTS.items():
        if col not in results:
            results[col] = default
    results["variant"] = results["variant"].where(results["variant"].notna(), results["selector"])
    for col in ("data_hash", "model_hash", "train_hash", "eval_hash", "compute", "budget_unit", "selector_params"):
        results[col] = results[col].fillna(DEFAULTS[col]).astype(str)
    for col in ("run_id", "selector", "variant", "model", "data", "task", "metric"):
        results[col] = results[col].astype(str)
    results["budget"] = results["budget"].astype(float)
    results["seed"] = results["seed"].astype(int)
    results["value"] = results["value"].astype(float)
    results["record_dir"] = [str(dirs[i]) for i in results["_source"]]
    return results.drop(columns="_source").reset_index(drop=True)


def load_records(folder: str | Path, need_items: bool = True) -> Records:
    """Read every complete run record under `folder` (one per cell); raises HarnessError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HarnessError(f"no such folder: {folder}; pass the folder that holds the run records (e.g. results/)")
    live, archived, incomplete = find_records(folder)
    dirs = live + archived
    counts = {"incomplete": incomplete}
    if not dirs:
        raise HarnessError(
            f"no complete run records under {folder} ({incomplete} incomplete); "
            "run `python -m harness ...` first or point at the folder that holds them"
        )
    readable = [d for d in dirs if _has_columns(d / RESULTS, REQUIRED)]
    counts["unreadable"] = len(dirs) - len(readable)
    live_set = set(live)
    n_live = sum(1 for d in readable if d in live_set)
    dirs = readable
    if not dirs:
        raise HarnessError(
            f"no results.csv under {folder} has the columns of a run record ({', '.join(REQUIRED)}); "
            "point at the folder that holds the harness's runs"
        )
    results = read_csvs([d / RESULTS for d in dirs], with_source=True)
    results = results[results["run_id"].notna()].assign(run_id=lambda f: f["run_id"].astype(str))
    results, chosen = _choose(results, dirs, n_live)
    counts.update(chosen)
    results = _normalise(results, dirs)

    run_dirs = results.drop_duplicates("run_id")[["run_id", "record_dir"]]
    manifests: dict[str, dict[str, Any]] = {}
    for run_id, path in zip(run_dirs["run_id"], run_dirs["record_dir"]):
        try:
            manifests[run_id] = json.loads((Path(path) / MANIFEST).read_text())
        except (OSError, ValueError):
            manifests[run_id] = {}
    items = pd.DataFrame(columns=["run_id", "task", "doc_id"])
    if need_items:
        present = [(r, Path(p) / ITEMS) for r, p in zip(run_dirs["run_id"], run_dirs["record_dir"])]
        present = [(r, f) for r, f in present if f.exists()]
        counts["no_items"] = len(run_dirs) - len(present)
        if present:
            items = read_csvs([f for _, f in present], usecols=lambda c: c not in ("pred", "gold"), with_source=True)
            owners = np.array([r for r, _ in present], dtype=object)
            items["run_id"] = owners[items.pop("_source").to_numpy()]  # the record's own id, even in older files
            items["task"] = items["task"].astype(str)
    counts["records"] = len(run_dirs)
    return Records(results=results, items=items, manifests=manifests, counts=counts)


def comparability_groups(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split result rows into groups that may be compared (same pool, model, recipe, evaluation)."""
    keys = list(GROUP_KEYS)
    groups = []
    for values, frame in results.groupby(keys, sort=True, dropna=False):
        spec = dict(zip(keys, values))
        hashes = ", ".join(f"{k.split('_')[0]} {spec[k][:8]}" for k in keys[2:6] if spec[k])
        compute = f", compute by {spec['compute']}" if spec["compute"] else ""
        if not hashes and spec["pool_fingerprint"]:
            hashes = f"pool {spec['pool_fingerprint'][:8]}"
        label = f"{spec['data']} / {spec['model']}" + (f" ({hashes}{compute})" if hashes or compute else "")
        groups.append((label, frame))
    return groups


def group_differences(groups: list[tuple[str, pd.DataFrame]]) -> list[str]:
    """Names of the settings that differ between groups (for the message that says why they are apart)."""
    firsts = pd.DataFrame([frame.iloc[0][list(GROUP_KEYS)] for _, frame in groups])
    return [k for k in GROUP_KEYS if firsts[k].nunique() > 1]
