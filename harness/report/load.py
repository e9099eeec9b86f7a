"""Run records on disk -> pandas frames, one live record per cell.

A record is complete when its results.csv exists. Records under an `archive/` folder are earlier copies of a
cell: they are used only when the cell has no live complete record. Several live records with one run_id (a
copied folder) count once: the newest. A run_id does not cover the selector's file, the pool's content, the
evaluation tasks' files and data or the resolved precision, so live records of one run_id that disagree on any
of them are not duplicates: the newest is kept and the others are named in a note of their own. CSV files that
share a header are parsed in one pandas call, which is what makes thousands of records load in seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.identity import comparable_params
from harness.record import changed_inputs, recorded_inputs
from harness.seeding import stage_seeds

RESULTS, ITEMS, MANIFEST, CONFIG = "results.csv", "eval_items.csv", "manifest.json", "config.yaml"
MACRO = "macro_avg"
ARCHIVE = "archive"
SKIP_DIRS = {"checkpoints", "cache", ".hydra", "report", "wandb", "__pycache__"}
"""Folders never searched for records (caches, checkpoints, report output)."""

GROUP_KEYS = (
    "data",
    "model",
    "data_hash",
    "model_hash",
    "train_hash",
    "eval_hash",
    "compute",
    "pool_fingerprint",
    "precision",
    "eval_tasks",
)
"""Records are comparable only when all of these agree (precision: the resolved precision of training; eval_tasks:
the fingerprint of the evaluation tasks' files and data and lm-eval's version, '' in records older than it)."""

ROW_KEYS = ["variant", "setting", "budget", "budget_unit"]
"""One leaderboard row per value of these within a comparability group (`setting`: resolved selector parameters
and stage-seed overrides, so runs of one variant name with different settings never share a row)."""

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
    (
        "conflicts",
        "dropped {n} record(s) that share a run_id with a newer record but came from a different pool, selector "
        "code, evaluation tasks or precision (named below; archive or re-run them)",
    ),
    ("archived_ignored", "ignored {n} archived record(s) of cells that have a live record"),
    ("from_archive", "read {n} cell(s) from their archived record (no live complete record)"),
    ("no_items", "{n} record(s) have no eval_items.csv: no paired tests for them"),
    (
        "same_seed",
        "left out {n} record(s) that repeat the seed of a row with the same settings (kept the live, newest)",
    ),
)
"""What the reader says about each count it keeps, in this order."""


@dataclass
class Records:
    """Everything the report reads: result rows, per-item rows and manifests of the counted records."""

    results: pd.DataFrame
    items: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per thing skipped or merged while reading, then the details that name records."""
        return [note.format(n=self.counts[key]) for key, note in NOTES if self.counts.get(key)] + self.details


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


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    """A record's manifest ({} when there is none or it cannot be read)."""
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _choose(results: pd.DataFrame, dirs: list[Path], n_live: int) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """Keep one record per run_id: the newest live one, else the newest archived one.

    A live record left out is a duplicate when it agrees with the kept one on the pool, the selector file, the
    evaluation tasks and the precision; otherwise it is a conflict, named in one detail line each.
    """
    first = results.drop_duplicates("_source")
    pools = first["pool_fingerprint"] if "pool_fingerprint" in first else pd.Series(None, index=first.index)
    first = first[["_source", "run_id"]].assign(
        archived=first["_source"] >= n_live,
        mtime=[(dirs[i] / RESULTS).stat().st_mtime for i in first["_source"]],
        pool=[p if isinstance(p, str) else None for p in pools],
    )
    first = first.sort_values(["run_id", "archived", "mtime"], ascending=[True, True, False])
    keep = first.drop_duplicates("run_id")
    dropped = first[~first["_source"].isin(keep["_source"])]
    has_live = set(first.loc[~first["archived"], "run_id"])
    details, conflicts = [], 0
    kept_by_id = keep.set_index("run_id")
    for row in dropped[~dropped["archived"]].to_dict("records"):
        kept = kept_by_id.loc[row["run_id"]]
        kept_dir, my_dir = dirs[int(kept["_source"])], dirs[int(row["_source"])]
        mine, theirs = _read_manifest(my_dir), _read_manifest(kept_dir)
        # a manifest without the pool's fingerprint: the results.csv column (the pipeline writes both)
        mine.setdefault("pool_fingerprint", row["pool"])
        theirs.setdefault("pool_fingerprint", kept["pool"])
        differ = changed_inputs(mine, recorded_inputs(theirs))
        if differ:
            conflicts += 1
            details.append(f"run_id {row['run_id']}: dropped {my_dir} ({'; '.join(differ)}); kept the newer {kept_dir}")
    counts = {
        "duplicates": int((~dropped["archived"]).sum()) - conflicts,
        "conflicts": conflicts,
        "archived_ignored": int(dropped["archived"].sum()),
        "from_archive": int((keep["archived"] & ~keep["run_id"].isin(has_live)).sum()),
    }
    return results[results["_source"].isin(set(keep["_source"]))], counts, details


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


def _canonical_json(text: str, selector: str | None = None) -> str:
    """The same JSON text for the same parameters, whatever the key order, without the ones a run's identity leaves
    out (identity.comparable_params: a key added later that cannot act); foreign text is kept as it is."""
    try:
        params = json.loads(text)
    except ValueError:
        return text
    if selector is not None and isinstance(params, dict):
        params = comparable_params(selector, params)
    return json.dumps(params, sort_keys=True)


def seed_overrides(manifest: dict[str, Any], seed: int) -> dict[str, int]:
    """Stage seeds a run fixed with `seeds.<stage>=N` instead of deriving them from `seed`."""
    fixed = (manifest.get("identity") or {}).get("seeds")
    if isinstance(fixed, dict):
        return {k: int(v) for k, v in sorted(fixed.items()) if v is not None}
    resolved = manifest.get("seeds")
    if not isinstance(resolved, dict):
        return {}
    derived = stage_seeds(seed)  # a manifest without its identity: compare the resolved seeds with the derived ones
    return {k: int(v) for k, v in sorted(resolved.items()) if k in derived and int(v) != derived[k]}


def resolved_precision(manifest: dict[str, Any]) -> str:
    """The precision a run trained in, as its manifest states it ('' when it does not).

    `precision` holds what `train.mixed_precision` and `model.dtype` resolved to; older records state the mixed
    precision under `runtime` only.
    """
    stated = recorded_inputs(manifest)
    parts = [f"mixed precision {stated['mixed_precision']}"] if stated["mixed_precision"] else []
    if stated["model_dtype"]:
        parts.append(f"model dtype {stated['model_dtype']}")
    return ", ".join(parts)


def _add_settings(results: pd.DataFrame, manifests: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Columns that keep apart what must not be averaged: seed overrides, `setting`, resolved precision, the
    evaluation tasks' fingerprint."""
    runs = results.drop_duplicates("run_id")[["run_id", "seed"]]
    overrides = {r: json.dumps(seed_overrides(manifests.get(r, {}), s)) for r, s in zip(runs["run_id"], runs["seed"])}
    results["selector_params"] = [
        _canonical_json(p, s) for p, s in zip(results["selector_params"], results["selector"])
    ]
    results["seed_overrides"] = results["run_id"].map(overrides)
    results["setting"] = '{"selector": ' + results["selector_params"] + ', "seeds": ' + results["seed_overrides"] + "}"
    results["precision"] = results["run_id"].map({r: resolved_precision(manifests.get(r, {})) for r in overrides})
    tasks = {r: str(recorded_inputs(manifests.get(r, {}))["eval_tasks_sha256"] or "") for r in overrides}
    results["eval_tasks"] = results["run_id"].map(tasks)
    return _one_label_per_setting(results)


def _one_label_per_setting(results: pd.DataFrame) -> pd.DataFrame:
    """Records of one selector with the same resolved parameters and stage seeds are one variant, with one label (the
    shortest they carry): older records named an override that restated the configured value, e.g.
    `influence[aggregation=task_max]` beside `influence`, and would have been rows of their own."""
    runs = results.drop_duplicates("run_id")
    labels = {
        key: min(same["variant"], key=lambda v: (len(v), v))
        for key, same in runs.groupby(["selector", "setting"], sort=False)
    }
    return results.assign(variant=[labels[k] for k in zip(results["selector"], results["setting"])])


def _one_record_per_seed(results: pd.DataFrame, folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """Keep one record per (comparability group, row, seed): the live one over an archived one, then the newest.

    Two records that agree on everything the report keys on but have different run ids (e.g. made by versions
    that computed run ids differently) would otherwise count one seed twice in a row.
    """
    keys = [*GROUP_KEYS, *ROW_KEYS, "seed"]
    runs = results.drop_duplicates("run_id")[["run_id", "record_dir", *keys]]
    runs = runs[runs.duplicated(keys, keep=False)]
    if runs.empty:
        return results, []
    runs = runs.assign(
        archived=[ARCHIVE in Path(d).relative_to(folder).parts for d in runs["record_dir"]],
        mtime=[(Path(d) / RESULTS).stat().st_mtime for d in runs["record_dir"]],
    ).sort_values(["archived", "mtime", "run_id"], ascending=[True, False, True])
    details, dropped = [], set()
    for _, same in runs.groupby(keys, sort=True, dropna=False):
        kept, *others = same.to_dict("records")
        dropped |= {o["run_id"] for o in others}
        details.append(
            f"{kept['variant']} at budget {kept['budget']:g}, seed {kept['seed']}: {len(same)} records with the "
            f"same settings; kept {kept['record_dir']}, left out {', '.join(o['record_dir'] for o in others)}"
        )
    return results[~results["run_id"].isin(dropped)].reset_index(drop=True), details


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
    results, chosen, conflicts = _choose(results, dirs, n_live)
    counts.update(chosen)
    results = _normalise(results, dirs)

    run_dirs = results.drop_duplicates("run_id")[["run_id", "record_dir"]]
    manifests: dict[str, dict[str, Any]] = {}
    for run_id, path in zip(run_dirs["run_id"], run_dirs["record_dir"]):
        manifests[run_id] = _read_manifest(Path(path))
    results, details = _one_record_per_seed(_add_settings(results, manifests), folder)
    details = conflicts + details
    counts["same_seed"] = len(run_dirs) - results["run_id"].nunique()
    run_dirs = run_dirs[run_dirs["run_id"].isin(set(results["run_id"]))]
    manifests = {r: manifests[r] for r in run_dirs["run_id"]}
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
    return Records(results=results, items=items, manifests=manifests, counts=counts, details=details)


def budget_suffix(unit: str) -> str:
    """How a budget's unit is written after it: nothing for a run's budget, `/epoch` for a per-epoch one (RS2)."""
    return "" if unit == "run" else f"/{unit}"


def comparability_groups(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split result rows into groups that may be compared (same pool, model, recipe, evaluation)."""
    keys = list(GROUP_KEYS)
    groups = []
    several_tasks = results["eval_tasks"].nunique(dropna=False) > 1  # named only where they set groups apart
    for values, frame in results.groupby(keys, sort=True, dropna=False):
        spec = dict(zip(keys, values))
        hashes = ", ".join(f"{k.split('_')[0]} {spec[k][:8]}" for k in keys[2:6] if spec[k])
        compute = f", compute by {spec['compute']}" if spec["compute"] else ""
        if spec["precision"]:
            compute += f", {spec['precision']}"
        if several_tasks:
            compute += f", eval tasks {spec['eval_tasks'][:8] or 'unstated'}"
        if not hashes and spec["pool_fingerprint"]:
            hashes = f"pool {spec['pool_fingerprint'][:8]}"
        extra = f"{hashes}{compute}".removeprefix(", ")
        label = f"{spec['data']} / {spec['model']}" + (f" ({extra})" if extra else "")
        groups.append((label, frame))
    return groups


def _shown(value: Any) -> str:
    """A parameter value as a label shows it: lists joined by '+', everything else as text."""
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    return "-" if value is None else str(value)


def label_settings(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Give each setting of one variant name its own visible label, e.g. `el2n{keep=easy}` or `random{seeds.init=7}`.

    Labels name the selector parameters that differ between the records of one variant (e.g. after its config
    file was edited) and every stage-seed override; a label that would still clash gets a short hash.
    Returns the frame with `variant` relabelled and one note per variant that was split.
    """
    runs = frame.drop_duplicates(["variant", "setting"])
    labels: dict[tuple[str, str], str] = {}
    notes = []
    for variant, same in runs.groupby("variant", sort=True):
        params = []
        for text in same["selector_params"]:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            params.append(parsed if isinstance(parsed, dict) else {"selector_params": text})
        names = sorted(set().union(*params))
        differing = [k for k in names if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1]
        for setting, p, seeds in zip(same["setting"], params, same["seed_overrides"]):
            parts = [f"{k}={_shown(p.get(k))}" for k in differing]
            parts += [f"seeds.{k}={v}" for k, v in json.loads(seeds).items()]
            labels[(variant, setting)] = variant + ("{" + ",".join(parts) + "}" if parts else "")
        if differing:
            notes.append(
                f"`{variant}` ran with different selector parameters ({', '.join(differing)}): one row per setting, "
                f"labelled {', '.join(sorted(labels[(variant, s)] for s in same['setting']))}"
            )
    uses = Counter(labels.values())
    for key, label in list(labels.items()):
        if uses[label] > 1:
            labels[key] = label + "#" + hashlib.sha256(key[1].encode()).hexdigest()[:6]
    seeded = runs[runs["seed_overrides"] != "{}"]
    fixed = sorted({labels[k] for k in zip(seeded["variant"], seeded["setting"])})
    if fixed:
        notes.append(
            f"{', '.join(fixed)}: ran with fixed stage seeds (seeds.* overrides) instead of seeds derived from "
            "`seed`, so they are rows of their own"
        )
    relabelled = [labels[k] for k in zip(frame["variant"], frame["setting"])]
    return frame.assign(variant=relabelled), notes


def group_differences(groups: list[tuple[str, pd.DataFrame]]) -> list[str]:
    """Names of the settings that differ between groups (for the message that says why they are apart)."""
    firsts = pd.DataFrame([frame.iloc[0][list(GROUP_KEYS)] for _, frame in groups])
    return [k for k in GROUP_KEYS if firsts[k].nunique() > 1]
