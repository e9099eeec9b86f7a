"""Running lm-eval on the in-memory model: shots per task, generation settings, chat template, unsafe-code opt-in."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.evaluation import tidy
from harness.evaluation.settings import FEWSHOT_SEED, check_values, chosen_shots
from harness.evaluation.tasks import check_tasks, include_paths, needs_builtin_tasks, task_manager
from harness.evaluation.testbed_tasks import TESTBED_PREFIX
from harness.hub import hub_offline, offline_mode

log = logging.getLogger(__name__)

_EXPECTED_HFLM_WARNINGS = (
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)


@dataclass
class EvalOutcome:
    """What one evaluation produced: tidy metrics, per-item results, shots per task, and lm-eval's metadata."""

    metrics: pd.DataFrame
    """Columns task, metric, value, n_items: one row per task and metric, then the `macro_avg` rows."""
    items: pd.DataFrame
    """Columns ITEM_COLUMNS, then one float column per per-sample metric (NaN where a task lacks it)."""
    shots: dict[str, int] = field(default_factory=dict)
    """Few-shot examples each evaluated task was run with."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """lm-eval's results metadata, JSON-safe: configs, versions, n-shot, higher_is_better, lm-eval version, ..."""
    raw: dict[str, Any] = field(default_factory=dict)
    """lm-eval's result dict without the per-sample logs (not all JSON-safe)."""


class _DropExpected(logging.Filter):
    """Drops HFLM's warnings about being handed an in-memory model, which is what we do on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_EXPECTED_HFLM_WARNINGS)


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
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
    import torch
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

        def tok_batch_encode(
            self,
            strings: list[str],
            padding_side: str = "left",
            left_truncate_len: int | None = None,
            truncation: bool = False,
        ) -> tuple[Any, Any]:
            # Generation contexts: the same BOS rule as tok_encode, padded by hand.
            if self.add_bos_token is None:
                return super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
            seqs = [self.tok_encode(s, left_truncate_len=left_truncate_len) for s in strings]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for k, s in enumerate(seqs):
                span = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
                ids[k, span] = torch.tensor(s, dtype=torch.long)
                mask[k, span] = 1
            return ids, mask

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


class _ShotsTaskManager:
    """Wraps lm-eval's TaskManager: after loading, sets each leaf task's shots (per task, then global, else its own)."""

    def __init__(
        self, inner: Any, num_fewshot: int | None, fewshot: Mapping[str, int], harness_tasks: set[str]
    ) -> None:
        self._inner, self._global, self._per_task, self._harness = inner, num_fewshot, dict(fewshot), harness_tasks
        self.loaded_tasks: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _names(self, leaf: str, parents: dict[str, list[str]]) -> list[str]:
        """The names a leaf answers to, most specific first: itself, its groups outward, its tags."""
        out, frontier = [leaf], [leaf]
        while frontier:
            frontier = [g for child in frontier for g in parents.get(child, [])]
            out += frontier
        entry = self._inner.task_index.get(leaf) if hasattr(self._inner, "task_index") else None
        out += sorted(getattr(entry, "tags", ()) or ())
        out += [n.removeprefix(TESTBED_PREFIX) for n in out if n.startswith(TESTBED_PREFIX)]
        return out

    def load(self, task_list: Any) -> Any:
        loaded = self._inner.load(task_list)
        parents: dict[str, list[str]] = {}
        for group, children in (loaded.get("group_map") or {}).items():
            for child in children:
                parents.setdefault(child, []).append(group)
        for name, task in loaded["tasks"].items():
            own = task.get_config("num_fewshot")
            shots = chosen_shots(self._names(name, parents), self._per_task, self._global, own, name in self._harness)
            if shots is not None:
                task.set_config(key="num_fewshot", value=shots)
            splits = ("fewshot_split", "training_split", "validation_split")
            if name in self._harness and (own if shots is None else shots) and not any(map(task.get_config, splits)):
                # lm-eval would fall back to the task's test split: other evaluation items as examples
                raise HarnessError(
                    f"task '{name}' has no few-shot examples (a testbed task's are the pool's validation examples of "
                    f"its skill); set eval.fewshot.{name.removeprefix(TESTBED_PREFIX)}=0 or give the pool validation "
                    "examples (data.n_validation_per_task)"
                )
        self.loaded_tasks = dict(loaded["tasks"])
        return loaded


@contextlib.contextmanager
def _quiet_git_hash() -> Iterator[None]:
    """lm-eval asks `git describe` in the current directory and lets git print "fatal: not a git repository"
    outside a checkout; it gets the harness's own commit (or None) instead, quietly."""
    import lm_eval.evaluator as evaluator

    from harness.record import git_state

    original = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = lambda: git_state()["commit"]
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def check_chat_template(
    tokenizer: Any, apply_chat_template: bool, setting: str = "eval.apply_chat_template=true", pretrained: bool = False
) -> None:
    """A one-line HarnessError when `setting` asks for the chat template and the tokenizer has none (lm-eval, or
    tokenizing the pool, would fail with a traceback); the run calls it as soon as the tokenizer is loaded. For a
    pretrained model (base models ship none) the line also names model.chat_template, which gives it one."""
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        give = "give it one with model.chat_template=tulu (or a Jinja template string), " if pretrained else ""
        raise HarnessError(
            f"{setting} needs a tokenizer with a chat template, and the tokenizer '{name}' has none; drop it (or set "
            f"it false), {give}or use a model whose tokenizer has one (model.name_or_path=<an instruct or chat model>)"
        )


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
    fewshot: Mapping[str, int] | None = None,
    add_bos_token: bool | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    gen_kwargs: Mapping[str, Any] | None = None,
    confirm_run_unsafe_code: bool = False,
    include_path: str | list[str] | None = None,
    system_instruction: str | None = None,
    fewshot_seed: int = FEWSHOT_SEED,
) -> EvalOutcome:
    """Run lm-eval on an in-memory causal LM and return tidy metrics, per-item results, shots and metadata.

    num_fewshot: shots for every task (None: each task's own default); fewshot: per task or group name,
    winning over num_fewshot; gen_kwargs update generate_until tasks' generation settings. `seed` seeds python,
    numpy and torch (sampled generation); the few-shot examples come from `fewshot_seed` (lm-eval's default), so
    they are the same for every run seed."""
    import lm_eval

    if not tasks:
        raise HarnessError("no evaluation tasks given; name lm-eval tasks or use the testbed suite")
    for task in tasks:
        if not isinstance(task, (str, dict)):
            raise TypeError(f"tasks must be lm-eval task names or task dicts, got {type(task).__name__}")
    per_task = check_values(num_fewshot, fewshot or {}, limit, fewshot_as_multiturn, apply_chat_template, gen_kwargs)
    check_chat_template(tokenizer, apply_chat_template)
    include = include_paths(include_path)
    names = [t for t in tasks if isinstance(t, str)]
    if names:
        check_tasks(names, include)
        inner = task_manager(include, needs_builtin_tasks(names, include))
    else:  # task dicts only: skip indexing lm-eval's thousands of built-in tasks
        inner = task_manager((), defaults=False)
    dict_tasks = {str(t["task"]) for t in tasks if isinstance(t, dict) and "task" in t}
    manager = _ShotsTaskManager(inner, num_fewshot, per_task, dict_tasks)
    if confirm_run_unsafe_code:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")  # the code_eval metric's own opt-in

    if device is not None:
        model.to(device)
    was_training = model.training
    try:
        with quiet_lm_eval(), _rng_untouched(), offline_mode(bool(names) and hub_offline()), _quiet_git_hash():
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
                num_fewshot=None,  # applied per task by the manager above
                limit=limit,
                bootstrap_iters=0,
                log_samples=True,
                apply_chat_template=apply_chat_template,
                fewshot_as_multiturn=fewshot_as_multiturn,
                gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
                task_manager=manager,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=fewshot_seed,
                confirm_run_unsafe_code=confirm_run_unsafe_code,
                system_instruction=system_instruction,
            )
    finally:
        model.train(was_training)
    if results is None:
        raise RuntimeError("lm-eval returned no results (not on rank 0)")
    gold_of = {n: t.doc_to_text for n, t in manager.loaded_tasks.items() if getattr(t, "multiple_input", 0)}
    items = tidy.items_frame(results, dict_tasks, gold_of)
    metrics = tidy.metrics_frame(results, items)
    raw = {k: v for k, v in results.items() if k != "samples"}
    return EvalOutcome(
        metrics=metrics, items=items, shots=tidy.shots_used(results), metadata=tidy.metadata(results), raw=raw
    )
