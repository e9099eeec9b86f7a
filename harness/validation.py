"""Validation examples for targeted selectors (LESS, BIDS) taken from the target benchmarks themselves: n examples
per target task from an lm-eval task's few-shot or validation split, formatted as the task formats them.

LESS uses each benchmark's few-shot examples (MMLU dev, BBH's 3 shots, TyDiQA's 1 shot); BIDS takes 50 per
task. `+data.validation_tasks={mmlu: 50, bbh: 50}` builds them; the rows never come from the test split that
evaluation scores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError, first_line
from harness.hub import hub_offline, offline_mode
from harness.pool import PUBLIC_COLUMNS

log = logging.getLogger(__name__)

SPLITS = ("fewshot", "validation", "train")
"""Where a task's validation examples come from, in this order: never its test split."""


def _leaves(tree: Any) -> list[Any]:
    """The task objects of lm-eval's get_task_dict result (groups flattened)."""
    out: list[Any] = []
    for value in tree.values():
        if isinstance(value, dict):
            out.extend(_leaves(value))
        else:
            out.append(value)
    return out


def _docs(task: Any) -> list[Any]:
    """The first of the task's few-shot, validation or training docs that is not the split it is scored on."""
    config = getattr(task, "config", None)
    scored = getattr(config, "test_split", None) or getattr(config, "validation_split", None)
    splits = {
        "fewshot": (getattr(config, "fewshot_split", None), lambda: task.fewshot_docs()),
        "validation": (getattr(config, "validation_split", None), lambda: task.validation_docs()),
        "train": (getattr(config, "training_split", None), lambda: task.training_docs()),
    }
    for name in SPLITS:
        split, read = splits[name]
        if split is None or split == scored:  # never draw validation from what evaluation scores
            continue
        docs = read()
        docs = [] if docs is None else list(docs)  # once: a Python task may return a one-pass iterator (map)
        if docs:
            return docs
    return []


def _example(task: Any, doc: Any) -> tuple[str, str]:
    """(prompt, response) of a doc as the task presents it: for multiple choice, the gold choice's text."""
    prompt = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    if isinstance(target, list):  # several gold answers (or gold indices): the first
        target = target[0]
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if isinstance(target, int) and 0 <= target < len(choices):
            target = choices[target]
    return str(prompt), str(target)


def _quotas(n: int, available: list[int]) -> list[int]:
    """n spread as evenly as the members' docs allow: a member with too few gives its share to the others."""
    quota = [0] * len(available)
    left = min(n, sum(available))
    while left:
        open_ = [i for i, a in enumerate(available) if quota[i] < a]
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            take = min(share + (rank < extra), available[i] - quota[i])
            quota[i] += take
            left -= take
    return quota


def check_wanted(wanted: dict[str, Any]) -> None:
    """One-line errors for data.validation_tasks entries that are not a task name with a count of at least one."""
    for name, n in wanted.items():
        if not isinstance(name, str) or not name.strip():
            raise HarnessError(f"data.validation_tasks names lm-eval tasks, got {name!r}; e.g. {{mmlu: 50}}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise HarnessError(
                f"data.validation_tasks.{name} must be a whole number of examples >= 1, got {n!r}; "
                f"e.g. '+data.validation_tasks={{{name}: 50}}', or drop the task"
            )


def from_lm_eval(wanted: dict[str, int], include_path: Any = None, seed: int = 0) -> pd.DataFrame:
    """n examples per named task or group (spread evenly over a group's members), task column = the name given."""
    from lm_eval.tasks import get_task_dict

    from harness.evaluation.runner import quiet_lm_eval
    from harness.evaluation.tasks import check_tasks, include_paths, needs_builtin_tasks, task_manager

    check_wanted(wanted)
    rows = []
    include = include_paths(include_path)
    try:
        check_tasks(list(wanted), include)
    except HarnessError as exc:
        raise HarnessError(f"data.validation_tasks: {exc}") from None
    manager = task_manager(include, needs_builtin_tasks(list(wanted), include))
    for name, n in wanted.items():
        try:  # offline (a variable, or no answer from the hub): datasets reads its cache and never waits on it
            with quiet_lm_eval(), offline_mode(hub_offline()):
                tasks = _leaves(get_task_dict([name], manager))
                per_task = [_docs(t) for t in tasks]
        except Exception as exc:  # lm-eval raises many kinds for a missing dataset or task
            raise HarnessError(
                f"cannot build validation examples from lm-eval task '{name}': {first_line(exc)}; "
                "cache its dataset where there is network, or use data.validation_split / data.validation_path"
            ) from None
        if not any(per_task):
            raise HarnessError(f"lm-eval task '{name}' has no few-shot, validation or training split to draw from")
        available = [len(d) for d in per_task]
        if sum(available) < n:
            log.warning(
                "lm-eval task '%s' has %d examples outside its scored split, fewer than %d", name, sum(available), n
            )
        rng = np.random.default_rng([seed, len(name)])
        for task, docs, q in zip(tasks, per_task, _quotas(n, available)):
            for i in rng.permutation(len(docs))[:q]:
                prompt, response = _example(task, docs[int(i)])
                rows.append({"id": f"val-{name}-{len(rows)}", "task": name, "prompt": prompt, "response": response})
    return pd.DataFrame(rows, columns=list(PUBLIC_COLUMNS))
