"""lm-eval's result dict made tidy: one row per evaluated item, one row per task and metric, JSON-safe metadata."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

MACRO = "macro_avg"
"""Task label of the rows that average the tasks (unweighted) for each metric."""

METRIC_COLUMNS = ("task", "metric", "value", "n_items")
ITEM_COLUMNS = ("task", "doc_id", "correct", "gold_loglik", "gold_prob", "pred", "gold", "n_choices")
"""Fixed per-item columns; every per-sample metric lm-eval reports (acc, exact_match, ...) follows as a float column."""
CONTINUOUS_METRICS = ("gold_loglik", "gold_prob")
"""Computed here from the per-item log-likelihoods (multiple-choice and loglikelihood tasks)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    """A per-sample metric value as a float (booleans count 0/1); NaN for what is not a number."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if _is_number(value):
        return float(value)
    return math.nan


def _gold_index(target: Any, continuations: list[str], lls: np.ndarray) -> int | None:
    """Index of the gold choice: an int, a choice text, or (several golds) the likeliest of them."""
    n = len(continuations)
    if isinstance(target, (list, tuple)):
        golds = [g for g in (_gold_index(t, continuations, lls) for t in target) if g is not None]
        return max(golds, key=lambda g: lls[g]) if golds else None
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target) if 0 <= int(target) < n else None
    if isinstance(target, str):
        stripped = [c.strip() for c in continuations]
        if target.strip() in stripped:
            return stripped.index(target.strip())
        if target.strip().isdigit() and int(target) < n:
            return int(target)
    return None


def metric_name(metric: str, filter_name: str) -> str:
    """A metric's name in the results table and the per-item columns: `acc` for lm-eval's "none" filter, else
    `exact_match,strict-match` (metric,filter), as lm-eval keys its results."""
    return metric if filter_name == "none" else f"{metric},{filter_name}"


def _sample_metrics(sample: dict, filter_name: str = "none") -> dict[str, float]:
    """Every per-sample metric lm-eval logged for this sample, as floats, named as in the results table."""
    names = [m for m in sample.get("metrics", []) if m in sample]
    return {metric_name(str(m), filter_name): _as_float(sample[m]) for m in names}


def _item_row(
    task: str,
    sample: dict,
    output_type: str | None,
    doc_id_from_doc: bool,
    gold_of: Callable[[Any], Any] | None = None,
) -> dict:
    doc = sample.get("doc")
    if doc_id_from_doc and isinstance(doc, dict) and _is_number(doc.get("doc_id")):
        doc_id = int(doc["doc_id"])
    else:
        doc_id = int(sample["doc_id"])
    row: dict[str, Any] = {"task": task, "doc_id": doc_id, "correct": False, "gold_loglik": math.nan}
    row.update(gold_prob=math.nan, pred=-1, gold=-1, n_choices=0)
    metrics = _sample_metrics(sample, sample.get("filter", "none"))
    resps = sample.get("filtered_resps") or []
    if output_type == "multiple_choice" and resps:
        lls = np.array([float(r[0]) for r in resps])
        continuations = [str(a[1]) for a in sample.get("arguments", [])]
        if "acc_mutual_info" in sample:  # the second half are the unconditional log-likelihoods
            lls, continuations = lls[: len(lls) // 2], continuations[: len(lls) // 2]
        # A task with one context per choice (winogrande) scores one continuation: its gold is doc_to_text's index.
        target = gold_of(doc) if gold_of is not None else sample.get("target")
        gold = _gold_index(target, continuations, lls)
        pred = int(np.argmax(lls))
        row.update(pred=pred, n_choices=len(lls))
        if gold is not None:
            probs = np.exp(lls - lls.max())
            probs /= probs.sum()
            row.update(gold=gold, gold_loglik=float(lls[gold]), gold_prob=float(probs[gold]))
        row["correct"] = bool(sample["acc"]) if _is_number(sample.get("acc")) else gold == pred
    elif output_type == "loglikelihood" and resps:
        loglik, greedy = resps[0]
        row.update(gold_loglik=float(loglik), correct=bool(sample.get("acc", greedy)))
    else:  # generation and other tasks: correct when the first numeric metric is full marks
        first = next((v for v in metrics.values() if not math.isnan(v)), None)
        row["correct"] = first is not None and first >= 1.0
    return {**row, **{k: v for k, v in metrics.items() if k not in ITEM_COLUMNS}}


def items_frame(
    results: dict, dict_tasks: set[str], gold_of: Mapping[str, Callable[[Any], Any]] | None = None
) -> pd.DataFrame:
    """One row per evaluated item: the fixed columns from the 'none' filter (else the first), then one float column
    per per-sample metric of every filter, named as in the results table (sorted; NaN where a task lacks it).

    gold_of: task -> doc -> gold, for tasks whose logged target is not the gold choice (one context per choice)."""
    rows = []
    configs = results.get("configs", {})
    for task, samples in results.get("samples", {}).items():
        if not samples:
            continue
        filters = list(dict.fromkeys(s.get("filter", "none") for s in samples))
        base = "none" if "none" in filters else filters[0]
        output_type = (configs.get(task) or {}).get("output_type")
        by_doc: dict[Any, dict] = {}
        for s in samples:
            if s.get("filter", "none") == base:
                by_doc[s["doc_id"]] = _item_row(task, s, output_type, task in dict_tasks, (gold_of or {}).get(task))
        for s in samples:
            if s.get("filter", "none") != base:
                by_doc[s["doc_id"]].update(_sample_metrics(s, s.get("filter", "none")))
        rows.extend(by_doc.values())
    extra = sorted({k for r in rows for k in r} - set(ITEM_COLUMNS))
    frame = pd.DataFrame(rows, columns=[*ITEM_COLUMNS, *extra])
    dtypes = {"task": str, "doc_id": np.int64, "correct": bool, "gold_loglik": float, "gold_prob": float}
    dtypes.update({"pred": np.int64, "gold": np.int64, "n_choices": np.int64}, **{k: float for k in extra})
    return frame.astype(dtypes)


def metrics_frame(results: dict, items: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows per task (and group) and metric, then per metric the unweighted mean over top-level tasks."""
    table = results.get("results", {})
    n_samples = results.get("n-samples", {})
    subtasks = results.get("group_subtasks", {}) or {}

    def leaves(name: str) -> list[str]:
        if name in subtasks:
            return [leaf for child in subtasks[name] for leaf in leaves(child)]
        return [name] if name in n_samples else []

    def n_items(name: str) -> int:
        return int(sum((n_samples[leaf] or {}).get("effective", 0) for leaf in leaves(name)))

    rows: list[tuple[str, str, float, int]] = []
    for name, entry in table.items():
        for key, value in entry.items():
            if "," not in key or "_stderr," in key or not _is_number(value):
                continue
            metric, filter_name = key.split(",", 1)
            rows.append((name, metric_name(metric, filter_name), float(value), n_items(name)))
        covered = items[items["task"].isin(leaves(name))]
        for metric in CONTINUOUS_METRICS:
            values = covered[metric].dropna()
            if len(values):
                rows.append((name, metric, float(values.mean()), int(len(values))))

    # Macro average over the top level: tasks and groups nobody asked for as part of a group; a group
    # lm-eval reports no metric for stands aside for its members.
    has_rows = {r[0] for r in rows}
    children = {c for members in subtasks.values() for c in members}
    top, pending = [], [n for n in list(table) + list(subtasks) if n not in children]
    while pending:
        name = pending.pop(0)
        if name in has_rows and name not in top:
            top.append(name)
        elif name not in has_rows and name in subtasks:
            pending.extend(subtasks[name])
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    top_rows = frame[frame["task"].isin(top)]
    macro = [
        (MACRO, metric, float(group["value"].mean()), int(group["n_items"].sum()))
        for metric, group in top_rows.groupby("metric", sort=False)
    ]
    frame = pd.DataFrame(rows + macro, columns=list(METRIC_COLUMNS))
    return frame.astype({"task": str, "metric": str, "value": float, "n_items": np.int64})


def shots_used(results: dict) -> dict[str, int]:
    """Few-shot examples per evaluated task, as lm-eval ran them (its "n-shot" entry)."""
    out = {}
    for task, n in (results.get("n-shot") or {}).items():
        if _is_number(n):
            out[str(task)] = int(n)
    return out


def json_safe(value: Any) -> Any:
    """A copy that json.dumps accepts in strict mode: str keys, finite floats (else None), other objects as str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in (sorted(value, key=str) if isinstance(value, (set, frozenset)) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return str(value)


def metadata(results: dict) -> dict[str, Any]:
    """lm-eval's results metadata (task versions, n-shot, task configs, higher_is_better, versions, ...) as JSON."""
    keep = {k: v for k, v in results.items() if k != "samples"}
    safe = json_safe(keep)
    json.dumps(safe, allow_nan=False)  # a bug here, not the user's: fail loudly
    return safe
