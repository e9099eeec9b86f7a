"""The `eval` config group: its typed schema, the keyword arguments it gives `evaluate`, and the checks and rules
both the pre-training check (`resolve_tasks`) and `evaluate` apply, written once here."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.pool import Pool


@dataclass
class EvalSchema:
    """Keys of conf/eval/*.yaml (see the README's evaluation section)."""

    name: str = "testbed"
    suite: str = "testbed"
    tasks: list[str] = field(default_factory=list)
    batch_size: int = 64
    limit: int | None = None
    num_fewshot: int | None = None  # null: each task's own default (the testbed's is 0)
    fewshot: dict[str, int] = field(default_factory=dict)  # per task or group, e.g. {mmlu: 5, bbh: 3}
    gen_kwargs: dict[str, Any] = field(default_factory=dict)  # update generate_until tasks' generation_kwargs
    fewshot_as_multiturn: bool = False
    apply_chat_template: bool | None = None  # null: follow the pool's chat_template
    confirm_run_unsafe_code: bool = False  # tasks that execute model-written code (humaneval, mbpp)
    include_path: Any = None  # a folder (or list of folders) of your own lm-eval task YAMLs
    system_instruction: str | None = None


FEWSHOT_SEED = 1234
"""Seed of lm-eval's few-shot sampler (its default): the few-shot examples are part of the evaluation set, the same
for every run seed, as lm-eval draws them for the same task."""


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg[key] for a dict or DictConfig (as plain data), attribute access otherwise; None counts as absent."""
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    if value is None:
        return default
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_shots(value: Any, key: str) -> int:
    """A number of few-shot examples, or a one-line HarnessError naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HarnessError(f"{key} must be a non-negative integer, got {value!r}; e.g. {key}=5")
    return value


def check_values(
    num_fewshot: Any,
    fewshot: Mapping[Any, Any],
    limit: Any,
    fewshot_as_multiturn: bool,
    apply_chat_template: bool,
    gen_kwargs: Mapping[Any, Any] | None = None,
) -> dict[str, int]:
    """One-line HarnessErrors for eval values lm-eval would only trip over after training; the checked per-task
    shots, keyed by name."""
    if num_fewshot is not None:
        check_shots(num_fewshot, "eval.num_fewshot")
    per_task = {str(k): check_shots(v, f"eval.fewshot.{k}") for k, v in dict(fewshot or {}).items()}
    if limit is not None:
        number = isinstance(limit, (int, float)) and not isinstance(limit, bool)
        if not number or limit <= 0 or (isinstance(limit, float) and limit >= 1):
            raise HarnessError(
                f"eval.limit must be a positive number of items per task (or null for all), got {limit!r}; "
                "e.g. eval.limit=100"
            )
    if fewshot_as_multiturn and not apply_chat_template:
        raise HarnessError(
            "eval.fewshot_as_multiturn=true needs the chat template; set eval.apply_chat_template=true or drop it"
        )
    check_gen_kwargs(gen_kwargs or {})
    return per_task


def check_gen_kwargs(gen_kwargs: Mapping[Any, Any]) -> None:
    """One-line HarnessErrors for generation settings that model.generate would reject after training: a key that
    is neither lm-eval's (until, max_gen_toks) nor a transformers GenerationConfig field, or a bad stop/length."""
    from transformers import GenerationConfig

    known = {"until", "max_gen_toks", *(k for k in GenerationConfig().to_dict() if not k.startswith("_"))}
    for key in gen_kwargs:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise HarnessError(
                f"eval.gen_kwargs.{key} is not a generation setting{hint} (lm-eval's until, max_gen_toks, or a "
                "transformers GenerationConfig field)"
            )
    tokens = gen_kwargs.get("max_gen_toks")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise HarnessError(f"eval.gen_kwargs.max_gen_toks must be a positive integer, got {tokens!r}")
    until = gen_kwargs.get("until")
    if until is not None and not (
        isinstance(until, str) or (isinstance(until, list) and all(isinstance(u, str) and u for u in until))
    ):
        raise HarnessError(f"eval.gen_kwargs.until must be a stop string or a list of them, got {until!r}")


def chosen_shots(
    names: Sequence[str],
    per_task: Mapping[str, int],
    num_fewshot: int | None,
    own: int | None,
    default_only: bool = False,
) -> int | None:
    """Shots a task runs with: the first of its names (itself, its groups outward, its tags) in eval.fewshot, else
    eval.num_fewshot unless the task's own config pins 0 (lm-eval's rule; `default_only`: its 0 is only a default,
    as the testbed's), else None (its own setting)."""
    for name in names:
        if name in per_task:
            return per_task[name]
    if num_fewshot is not None and (own != 0 or default_only):
        return num_fewshot
    return None


def applies_chat_template(apply_chat_template: bool | None, pool_chat_template: bool) -> bool:
    """Whether evaluation uses the chat template: eval.apply_chat_template, or when null the pool's chat_template
    (a model trained inside the template is evaluated inside it)."""
    return bool(pool_chat_template) if apply_chat_template is None else bool(apply_chat_template)


def evaluate_options(eval_cfg: Any, pool: Pool) -> dict[str, Any]:
    """Keyword arguments of `evaluate` from an eval config: batch size, limit, shots, generation, chat, code, paths.

    Raises a one-line HarnessError for a value evaluation would fail on (shots, limit, multi-turn few-shot,
    generation settings)."""
    chat = cfg_get(eval_cfg, "apply_chat_template")
    options = {
        "batch_size": int(cfg_get(eval_cfg, "batch_size", 64)),
        "limit": cfg_get(eval_cfg, "limit"),
        "num_fewshot": cfg_get(eval_cfg, "num_fewshot"),
        "fewshot": dict(cfg_get(eval_cfg, "fewshot", {})),
        "gen_kwargs": dict(cfg_get(eval_cfg, "gen_kwargs", {})) or None,
        "fewshot_as_multiturn": bool(cfg_get(eval_cfg, "fewshot_as_multiturn", False)),
        "apply_chat_template": applies_chat_template(chat, pool.chat_template),
        "confirm_run_unsafe_code": bool(cfg_get(eval_cfg, "confirm_run_unsafe_code", False)),
        "include_path": cfg_get(eval_cfg, "include_path"),
        "system_instruction": cfg_get(eval_cfg, "system_instruction"),
    }
    check_values(
        options["num_fewshot"],
        options["fewshot"],
        options["limit"],
        options["fewshot_as_multiturn"],
        options["apply_chat_template"],
        options["gen_kwargs"],
    )
    return options
