"""Evaluation through lm-eval, in four parts:

- `testbed_tasks`: lm-eval task dicts for the testbed's skills (YAML under `tasks/testbed/` plus the pool's items);
- `tasks`: the tasks an `eval` config names, checked before training (names, unsafe code, offline data);
- `runner`: lm-eval on the in-memory model (shots, generation settings, chat template);
- `tidy`: per-task metrics, per-item results and JSON-safe metadata from lm-eval's result dict.
"""

from harness.evaluation.runner import EvalOutcome, evaluate
from harness.evaluation.settings import EvalSchema, evaluate_options
from harness.evaluation.tasks import check_tasks, resolve_tasks
from harness.evaluation.testbed_tasks import TESTBED_PREFIX, TESTBED_TASK_DIR, is_generative, testbed_task_configs
from harness.evaluation.tidy import CONTINUOUS_METRICS, ITEM_COLUMNS, MACRO, METRIC_COLUMNS

__all__ = [
    "CONTINUOUS_METRICS",
    "ITEM_COLUMNS",
    "MACRO",
    "METRIC_COLUMNS",
    "TESTBED_PREFIX",
    "TESTBED_TASK_DIR",
    "EvalOutcome",
    "EvalSchema",
    "check_tasks",
    "evaluate",
    "evaluate_options",
    "is_generative",
    "resolve_tasks",
    "testbed_task_configs",
]
