"""Evaluation through lm-eval: testbed task definitions, task-name checks, and tidy per-task and per-item results.

Standard lm-eval tasks are passed by name (they need their datasets: network or a local HF cache);
the testbed's tasks are passed as task dicts built from the YAML under `tasks/testbed/` with the data
paths filled in at run time. `evaluate` runs `lm_eval.simple_evaluate` on an in-memory model and
returns one tidy metrics table (plus a macro average) and one row per evaluated item.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness import REPO_ROOT
from harness.errors import HarnessError, first_line
from harness.hub import hub_offline
from harness.pool import EVAL_COLUMNS, Pool
from harness.storage import atomic_write_text

log = logging.getLogger(__name__)

TESTBED_TASK_DIR = REPO_ROOT / "tasks" / "testbed"
"""Where the testbed's lm-eval task definitions live: `_template.yaml` plus optional `<skill>.yaml` overrides."""

TESTBED_PREFIX = "testbed_"
"""lm-eval name of a testbed skill: `testbed_<skill>`."""

MACRO = "macro_avg"
"""Task label of the rows that average the tasks (unweighted) for each metric."""

METRIC_COLUMNS = ("task", "metric", "value", "n_items")
ITEM_COLUMNS = ("task", "doc_id", "correct", "gold_loglik", "gold_prob", "pred", "gold", "n_choices")
CONTINUOUS_METRICS = ("gold_loglik", "gold_prob")
"""Computed here from the per-item log-likelihoods (multiple-choice and loglikelihood tasks)."""

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_EXPECTED_HFLM_WARNINGS = (
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)


@dataclass
class EvalOutcome:
    """What one evaluation produced: tidy metrics, per-item results, and lm-eval's own summary."""

    metrics: pd.DataFrame
    """Columns task, metric, value, n_items: one row per task and metric, then the `macro_avg` rows."""
    items: pd.DataFrame
    """Columns task, doc_id, correct, gold_loglik, gold_prob, pred, gold, n_choices: one row per item."""
    raw: dict[str, Any] = field(default_factory=dict)
    """lm-eval's result dict without the per-sample logs (configs, versions, n-shot, ...; not all JSON-safe)."""


# --------------------------------------------------------------------------- testbed task definitions


def _load_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    if not isinstance(cfg, dict):
        raise HarnessError(f"{path} must hold a YAML mapping of lm-eval task settings")
    return cfg


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic write, skipped when the file already holds exactly this text (keeps HF datasets' cache valid)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def testbed_task_configs(eval_items: pd.DataFrame, delimiter: str, data_dir: Path) -> list[dict]:
    """Write each task's items to `<data_dir>/<task>.jsonl` and return lm-eval task dicts `testbed_<task>`."""
    missing = [c for c in EVAL_COLUMNS if c not in eval_items.columns]
    if missing:
        raise ValueError(f"evaluation items lack columns {missing}")
    if eval_items.empty:
        raise ValueError("no evaluation items to write")
    data_dir = Path(data_dir).expanduser().resolve()  # lm-eval resolves relative data_files against the cwd
    template = _load_yaml(TESTBED_TASK_DIR / "_template.yaml")
    configs = []
    for task, frame in eval_items.groupby("task", sort=True):
        name = str(task)
        if not _SAFE_NAME.match(name):
            raise ValueError(f"testbed task name {name!r} must be letters, digits, '_', '-' or '.'")
        if frame["doc_id"].duplicated().any():
            raise ValueError(f"testbed task {name!r} has repeated doc_id values")
        lines = []
        for doc_id, prompt, choices, gold in zip(frame["doc_id"], frame["prompt"], frame["choices"], frame["gold"]):
            choices = [str(c) for c in choices]
            if not 0 <= int(gold) < len(choices):
                raise ValueError(f"testbed task {name!r}, doc {doc_id}: gold {gold} is not a choice index")
            doc = {"doc_id": int(doc_id), "prompt": str(prompt), "choices": choices, "gold": int(gold)}
            lines.append(json.dumps(doc, ensure_ascii=False))
        path = data_dir / f"{name}.jsonl"
        _write_if_changed(path, "\n".join(lines) + "\n")

        cfg = copy.deepcopy(template)
        override = TESTBED_TASK_DIR / f"{name}.yaml"
        if override.is_file():
            cfg.update(_load_yaml(override))
        cfg["task"] = TESTBED_PREFIX + name
        cfg["target_delimiter"] = delimiter
        dataset_kwargs = dict(cfg.get("dataset_kwargs") or {})
        dataset_kwargs["data_files"] = {"test": str(path)}
        dataset_kwargs["cache_dir"] = str(data_dir / "hf_datasets")
        cfg["dataset_kwargs"] = dataset_kwargs
        configs.append(cfg)
    return configs


testbed_task_configs.__test__ = False  # type: ignore[attr-defined]  # its name starts with "test": pytest would collect it


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def resolve_tasks(eval_cfg: Any, pool: Pool, cache: Path) -> list[str | dict]:
    """The tasks an `eval` config names, checked before any training: testbed task dicts or lm-eval names."""
    suite = str(_cfg_get(eval_cfg, "suite", "testbed"))
    names = [str(n) for n in _cfg_get(eval_cfg, "tasks", [])]
    if suite == "testbed":
        items = pool.eval_items
        if items is None or items.empty:
            raise HarnessError(
                f"data '{pool.name}' has no testbed evaluation items; use eval=lm_eval with eval.tasks=[...]"
            )
        available = sorted(str(t) for t in items["task"].unique())
        if names:
            wanted = [n[len(TESTBED_PREFIX) :] if n.startswith(TESTBED_PREFIX) else n for n in names]
            unknown = [n for n in wanted if n not in available]
            if unknown:
                raise HarnessError(
                    f"unknown testbed task '{unknown[0]}'; the pool has {', '.join(available)} (eval.tasks)"
                )
            items = items[items["task"].isin(wanted)]
        digest = hashlib.sha256(pool.delimiter.encode())
        for row in items[list(EVAL_COLUMNS)].itertuples(index=False):
            digest.update(
                json.dumps([str(row[0]), int(row[1]), str(row[2]), [str(c) for c in row[3]], int(row[4])]).encode()
            )
        data_dir = Path(cache).expanduser().resolve() / "eval_data" / digest.hexdigest()[:16]
        return testbed_task_configs(items, pool.delimiter, data_dir)
    if suite == "lm_eval":
        if not names:
            raise HarnessError("eval.tasks is empty; name lm-eval tasks, e.g. eval.tasks=[arc_easy,hellaswag]")
        check_tasks(names)
        if hub_offline():  # their datasets must come from the local HF cache: find out now, not after training
            check_task_data(names)
        return names
    raise HarnessError(f"unknown eval.suite '{suite}'; use testbed or lm_eval")


# --------------------------------------------------------------------------- task-name checks


@functools.lru_cache(maxsize=1)
def _task_manager() -> Any:
    """lm-eval's index of its built-in tasks, groups and tags (a few seconds to build; once per process)."""
    from lm_eval.tasks import TaskManager

    with _quiet_lm_eval():
        return TaskManager()


def check_tasks(names: list[str]) -> None:
    """Raise a one-line HarnessError unless every name is an lm-eval task, group or tag (or a task YAML file)."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise HarnessError(f"lm-eval task names must be non-empty strings, got {name!r}")
    known = set(_task_manager().all_tasks)
    unknown = [n for n in names if n not in known and not (n.endswith((".yaml", ".yml")) and Path(n).is_file())]
    if not unknown:
        return
    name = unknown[0]
    lowered = {k.lower(): k for k in known} if name.lower() != name else {}
    close = ([lowered[name.lower()]] if name.lower() in lowered else []) or difflib.get_close_matches(
        name, sorted(known), n=3, cutoff=0.6
    )
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    more = f" ({len(unknown) - 1} more unknown: {', '.join(repr(u) for u in unknown[1:])})" if len(unknown) > 1 else ""
    raise HarnessError(f"unknown lm-eval task {name!r}{hint}{more} (see `lm_eval --tasks list`)")


def check_task_data(names: list[str]) -> None:
    """Build the named lm-eval tasks (loading their datasets) and raise a one-line HarnessError if that fails."""
    try:
        with _quiet_lm_eval():
            _task_manager().load(list(names))
    except (OSError, ValueError, FileNotFoundError) as exc:  # ConnectionError is an OSError
        first = first_line(exc)
        raise HarnessError(
            f"cannot load the data of lm-eval tasks {', '.join(names)}: {first}; "
            "cache their datasets on a machine with network (unset HF_DATASETS_OFFLINE) or use eval=testbed"
        ) from None


# --------------------------------------------------------------------------- running lm-eval


class _DropExpected(logging.Filter):
    """Drops HFLM's warnings about being handed an in-memory model, which is what we do on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_EXPECTED_HFLM_WARNINGS)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs warnings and errors only (its progress bars stay); HF datasets' progress bars are off."""
    import datasets

    logger = logging.getLogger("lm_eval")
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    level, drop = logger.level, _DropExpected()
    bars = datasets.is_progress_bar_enabled()
    logger.setLevel(logging.WARNING)
    hf_logger.addFilter(drop)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        hf_logger.removeFilter(drop)
        if bars:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """simple_evaluate reseeds python, numpy and torch globally: put the caller's generators back after."""
    import torch

    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


@functools.lru_cache(maxsize=1)
def _lm_class() -> type:
    from lm_eval.models.huggingface import HFLM

    class HarnessLM(HFLM):
        """HFLM on an in-memory model: no hub look-ups, and a BOS token exactly when training adds one."""

        def get_model_info(self) -> dict:
            model = self._model
            return {
                "model_num_parameters": int(sum(p.numel() for p in model.parameters())),
                "model_dtype": str(getattr(model, "dtype", "")),
            }

        def tok_encode(
            self,
            string: str,
            add_special_tokens: bool | None = None,
            left_truncate_len: int | None = None,
            **kwargs: Any,
        ) -> list[int]:
            # HFLM maps add_bos_token to the tokenizer's add_special_tokens, which adds BOS only when the
            # tokenizer's post-processor does; training prepends it by hand, so do the same here.
            if add_special_tokens is not None or self.add_bos_token is None:
                return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
            ids = self.tokenizer.encode(string, add_special_tokens=False)
            bos = self.tokenizer.bos_token_id
            if self.add_bos_token and bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
            return ids[-left_truncate_len:] if left_truncate_len else ids

    return HarnessLM


def _with_pad_token(tokenizer: Any) -> Any:
    """The tokenizer, or a copy with pad = eos (or unk): lm-eval would otherwise add a token the model lacks."""
    if tokenizer.pad_token_id is not None:
        return tokenizer
    fallback = tokenizer.eos_token or tokenizer.unk_token
    if fallback is None:
        raise HarnessError("the tokenizer has no pad, eos or unk token; lm-eval needs one to pad batches")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = fallback
    return tokenizer


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: list[str | dict],
    batch_size: int = 64,
    limit: int | None = None,
    device: str | None = None,
    seed: int = 0,
    *,
    num_fewshot: int | None = None,
    add_bos_token: bool | None = None,
    apply_chat_template: bool = False,
) -> EvalOutcome:
    """Run lm-eval on an in-memory causal LM and return tidy metrics plus per-item results."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise HarnessError("no evaluation tasks given; name lm-eval tasks or use the testbed suite")
    for task in tasks:
        if not isinstance(task, (str, dict)):
            raise TypeError(f"tasks must be lm-eval task names or task dicts, got {type(task).__name__}")
    names = [t for t in tasks if isinstance(t, str)]
    if names:
        check_tasks(names)
        task_manager = _task_manager()
    else:  # task dicts only: skip indexing lm-eval's thousands of built-in tasks
        task_manager = TaskManager(include_defaults=False)
    dict_tasks = {str(t["task"]) for t in tasks if isinstance(t, dict) and "task" in t}

    if device is not None:
        model.to(device)
    was_training = model.training
    try:
        with _quiet_lm_eval(), _rng_untouched():
            lm = _lm_class()(
                pretrained=model,
                tokenizer=_with_pad_token(tokenizer),
                backend="causal",
                batch_size=batch_size,
                add_bos_token=add_bos_token,
                softmax_dtype="float32",
            )
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=[copy.deepcopy(t) for t in tasks],
                num_fewshot=num_fewshot,
                limit=limit,
                bootstrap_iters=0,
                log_samples=True,
                apply_chat_template=apply_chat_template,
                task_manager=task_manager,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        model.train(was_training)
    if results is None:
        raise RuntimeError("lm-eval returned no results (not on rank 0)")
    items = _items(results, dict_tasks)
    metrics = _metrics(results, items)
    raw = {k: v for k, v in results.items() if k != "samples"}
    return EvalOutcome(metrics=metrics, items=items, raw=raw)


# --------------------------------------------------------------------------- tidy results


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


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


def _item_row(task: str, sample: dict, output_type: str | None, doc_id_from_doc: bool) -> dict:
    doc = sample.get("doc")
    if doc_id_from_doc and isinstance(doc, dict) and _is_number(doc.get("doc_id")):
        doc_id = int(doc["doc_id"])
    else:
        doc_id = int(sample["doc_id"])
    row = {"task": task, "doc_id": doc_id, "correct": False, "gold_loglik": math.nan, "gold_prob": math.nan}
    row.update(pred=-1, gold=-1, n_choices=0)
    resps = sample.get("filtered_resps") or []
    if output_type == "multiple_choice" and resps:
        lls = np.array([float(r[0]) for r in resps])
        continuations = [str(a[1]) for a in sample.get("arguments", [])]
        if "acc_mutual_info" in sample:  # the second half are the unconditional log-likelihoods
            lls, continuations = lls[: len(lls) // 2], continuations[: len(lls) // 2]
        gold = _gold_index(sample.get("target"), continuations, lls)
        pred = int(np.argmax(lls))
        row.update(pred=pred, n_choices=len(lls))
        if gold is not None:
            probs = np.exp(lls - lls.max())
            probs /= probs.sum()
            row.update(gold=gold, gold_loglik=float(lls[gold]), gold_prob=float(probs[gold]))
        row["correct"] = bool(sample["acc"]) if _is_number(sample.get("acc")) else gold == pred
        return row
    if output_type == "loglikelihood" and resps:
        loglik, greedy = resps[0]
        row.update(gold_loglik=float(loglik), correct=bool(sample.get("acc", greedy)))
        return row
    for metric in sample.get("metrics", []):  # generation and other tasks: the first numeric metric
        if _is_number(sample.get(metric)):
            row["correct"] = float(sample[metric]) >= 1.0
            break
    return row


def _items(results: dict, dict_tasks: set[str]) -> pd.DataFrame:
    """One row per evaluated item (for tasks with several filters, the 'none' filter or else the first)."""
    rows = []
    configs = results.get("configs", {})
    for task, samples in results.get("samples", {}).items():
        if not samples:
            continue
        filters = [s.get("filter", "none") for s in samples]
        chosen = "none" if "none" in filters else filters[0]
        output_type = (configs.get(task) or {}).get("output_type")
        rows.extend(
            _item_row(task, s, output_type, task in dict_tasks) for s, f in zip(samples, filters) if f == chosen
        )
    frame = pd.DataFrame(rows, columns=list(ITEM_COLUMNS))
    dtypes = {"task": str, "doc_id": np.int64, "correct": bool, "gold_loglik": float, "gold_prob": float}
    return frame.astype({**dtypes, "pred": np.int64, "gold": np.int64, "n_choices": np.int64})


def _metrics(results: dict, items: pd.DataFrame) -> pd.DataFrame:
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
            rows.append((name, metric if filter_name == "none" else key, float(value), n_items(name)))
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
