"""lm-eval task dicts for the testbed's skills, built from the YAML under `tasks/testbed/` and the pool's items.

Each skill's items go to `<data_dir>/<task>.jsonl` (absolute path: lm-eval resolves a relative
`data_files` against the current directory); when the pool has validation examples of the skill they
go to `<task>.fewshot.jsonl`, the split few-shot examples are drawn from (never other evaluation items).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.pool import EVAL_COLUMNS
from harness.storage import atomic_write_text

TESTBED_TASK_DIR = REPO_ROOT / "tasks" / "testbed"
"""Where the testbed's lm-eval task definitions live: `_template.yaml` plus optional `<skill>.yaml` overrides."""

TESTBED_PREFIX = "testbed_"
"""lm-eval name of a testbed skill: `testbed_<skill>`."""

GENERATIVE_SUFFIX = "_gen"
"""A testbed task `<skill>_gen` asks `<skill>` problems open-ended; its few-shot examples come from `<skill>`."""

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def task_definition(name: str) -> dict[str, Any]:
    """The shared template overlaid with `tasks/testbed/<name>.yaml` when there is one (paths not filled in)."""
    cfg = _load_yaml(TESTBED_TASK_DIR / "_template.yaml")
    override = TESTBED_TASK_DIR / f"{name}.yaml"
    if override.is_file():
        cfg.update(_load_yaml(override))
    return cfg


def is_generative(name: str) -> bool:
    """Whether a testbed task generates its answer (output_type generate_until) rather than picking a choice."""
    return task_definition(name).get("output_type") == "generate_until"


def fewshot_source(name: str) -> str:
    """The skill whose validation examples serve as the task's few-shot examples."""
    return name.removesuffix(GENERATIVE_SUFFIX) if name.endswith(GENERATIVE_SUFFIX) else name


def _fit_generation_to_delimiter(cfg: dict[str, Any], delimiter: str) -> None:
    """A generated answer starts with the delimiter (training puts it before every response): stop sequences
    inside the delimiter would end each answer before it starts, and exact match ignores the leading delimiter."""
    gen = dict(cfg.get("generation_kwargs") or {})
    until = gen.get("until")
    if isinstance(until, str):
        until = [until]
    if until:
        gen["until"] = [s for s in until if s not in delimiter]
        cfg["generation_kwargs"] = gen
    if delimiter:
        for metric in cfg.get("metric_list") or []:
            if isinstance(metric, dict) and metric.get("metric") == "exact_match":
                metric["regexes_to_ignore"] = ["^" + re.escape(delimiter), *(metric.get("regexes_to_ignore") or [])]


def _jsonl(docs: list[dict]) -> str:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)


def testbed_task_configs(
    eval_items: pd.DataFrame, delimiter: str, data_dir: Path, validation: pd.DataFrame | None = None
) -> list[dict]:
    """Write each task's items (and few-shot examples) under data_dir; return lm-eval task dicts `testbed_<task>`."""
    missing = [c for c in EVAL_COLUMNS if c not in eval_items.columns]
    if missing:
        raise ValueError(f"evaluation items lack columns {missing}")
    if eval_items.empty:
        raise ValueError("no evaluation items to write")
    data_dir = Path(data_dir).expanduser().resolve()  # lm-eval resolves relative data_files against the cwd
    configs = []
    for task, frame in eval_items.groupby("task", sort=True):
        name = str(task)
        if not _SAFE_NAME.match(name):
            raise ValueError(f"testbed task name {name!r} must be letters, digits, '_', '-' or '.'")
        if frame["doc_id"].duplicated().any():
            raise ValueError(f"testbed task {name!r} has repeated doc_id values")
        docs = []
        for doc_id, prompt, choices, gold in zip(frame["doc_id"], frame["prompt"], frame["choices"], frame["gold"]):
            choices = [str(c) for c in choices]
            if not 0 <= int(gold) < len(choices):
                raise ValueError(f"testbed task {name!r}, doc {doc_id}: gold {gold} is not a choice index")
            docs.append(
                {"doc_id": int(doc_id), "prompt": str(prompt), "choices": choices, "gold": int(gold)}
                | {"answer": choices[int(gold)]}
            )
        path = data_dir / f"{name}.jsonl"
        _write_if_changed(path, _jsonl(docs))
        data_files = {"test": str(path)}

        cfg = copy.deepcopy(task_definition(name))
        cfg["task"] = TESTBED_PREFIX + name
        cfg["target_delimiter"] = delimiter
        if cfg.get("output_type") == "generate_until":
            _fit_generation_to_delimiter(cfg, delimiter)
        if validation is not None and not validation.empty:
            shots = validation[validation["task"] == fewshot_source(name)]
            if len(shots):
                fewshot_docs = [
                    {"doc_id": i, "prompt": str(p), "choices": [str(r)], "gold": 0, "answer": str(r)}
                    for i, (p, r) in enumerate(zip(shots["prompt"], shots["response"]))
                ]
                fewshot_path = data_dir / f"{name}.fewshot.jsonl"
                _write_if_changed(fewshot_path, _jsonl(fewshot_docs))
                data_files["validation"] = str(fewshot_path)
                cfg["fewshot_split"] = "validation"
        dataset_kwargs = dict(cfg.get("dataset_kwargs") or {})
        dataset_kwargs["data_files"] = data_files
        dataset_kwargs["cache_dir"] = str(data_dir / "hf_datasets")
        cfg["dataset_kwargs"] = dataset_kwargs
        configs.append(cfg)
    return configs


testbed_task_configs.__test__ = False  # type: ignore[attr-defined]  # its name starts with "test": pytest would collect it
