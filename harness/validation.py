"""Validation examples for targeted selectors (LESS, BIDS) taken from the target benchmarks themselves: n examples
per target task from an lm-eval task's few-shot or validation split, formatted as the task formats them.

LESS uses each benchmark's few-shot examples (MMLU dev, BBH's 3 shots, TyDiQA's 1 shot); BIDS takes 50 per
task. `data.validation_tasks={mmlu: 50, bbh: 50}` builds them; the rows never come from the test split that
evaluation scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError, first_line

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
        if docs is not None and len(list(docs)):
            return list(docs)
    return []


def _example(task: Any, doc: Any) -> tuple[str, str]:
    """(prompt, response) of a doc as the task presents it: for multiple choice, the gold choice's text."""
    prompt = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if isinstance(target, int) and 0 <= target < len(choices):
            target = choices[target]
    if isinstance(target, list):
        target = target[0]
    return str(prompt), str(target)


def from_lm_eval(wanted: dict[str, int], include_path: Any = None, seed: int = 0) -> pd.DataFrame:
    """n examples per named task or group (spread evenly over a group's members), task column = the name given."""
    from lm_eval.tasks import get_task_dict

    from harness.evaluation.runner import quiet_lm_eval
    from harness.evaluation.tasks import include_paths, needs_builtin_tasks, task_manager

    rows = []
    include = include_paths(include_path)
    manager = task_manager(include, needs_builtin_tasks(list(wanted), include))
    for name, n in wanted.items():
        try:
            with quiet_lm_eval():
                tasks = _leaves(get_task_dict([name], manager))
        except Exception as exc:  # lm-eval raises many kinds for a missing dataset or task
            raise HarnessError(
                f"cannot build validation examples from lm-eval task '{name}': {first_line(exc)}; "
                "cache its dataset where there is network, or use data.validation_split / data.validation_path"
            ) from None
        per_task = [_docs(t) for t in tasks]
        if not any(per_task):
            raise HarnessError(f"lm-eval task '{name}' has no few-shot, validation or training split to draw from")
        rng = np.random.default_rng([seed, len(name)])
        quota = np.full(len(tasks), n // len(tasks)) + (np.arange(len(tasks)) < n % len(tasks))
        for task, docs, q in zip(tasks, per_task, quota):
            for i in rng.permutation(len(docs))[: int(q)]:
                prompt, response = _example(task, docs[int(i)])
                rows.append({"id": f"val-{name}-{len(rows)}", "task": name, "prompt": prompt, "response": response})
    return pd.DataFrame(rows, columns=["id", "task", "prompt", "response"])
