"""Evaluation through lm-eval, in four parts:

- `testbed_tasks`: lm-eval task dicts for the testbed's skills (YAML under `tasks/testbed/` plus the pool's items);
- `tasks`: the tasks an `eval` config names, checked before training (names, unsafe code, offline data);
- `runner`: lm-eval on the in-memory model (shots, generation settings, chat template);
- `tidy`: per-task metrics, per-item results and JSON-safe metadata from lm-eval's result dict;
- `settings`: the `eval` config schema and the `evaluate` arguments it gives.

Names are loaded on first use, so importing the config schema stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalOutcome": "runner",
    "evaluate": "runner",
    "check_chat_template": "runner",
    "FEWSHOT_SEED": "settings",
    "EvalSchema": "settings",
    "evaluate_options": "settings",
    "check_tasks": "tasks",
    "resolve_tasks": "tasks",
    "tasks_fingerprint": "tasks",
    "TESTBED_PREFIX": "testbed_tasks",
    "TESTBED_TASK_DIR": "testbed_tasks",
    "is_generative": "testbed_tasks",
    "testbed_task_configs": "testbed_tasks",
    "CONTINUOUS_METRICS": "tidy",
    "ITEM_COLUMNS": "tidy",
    "MACRO": "tidy",
    "METRIC_COLUMNS": "tidy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"harness.evaluation.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
