"""The `eval` config group: its typed schema and the keyword arguments it gives `evaluate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

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


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def evaluate_options(eval_cfg: Any, pool: Pool) -> dict[str, Any]:
    """Keyword arguments of `evaluate` from an eval config: batch size, limit, shots, generation, chat, code, paths."""

    def get(key: str, default: Any = None) -> Any:
        value = eval_cfg.get(key, default) if hasattr(eval_cfg, "get") else getattr(eval_cfg, key, default)
        return default if value is None else _plain(value)

    chat = eval_cfg.get("apply_chat_template") if hasattr(eval_cfg, "get") else None
    return {
        "batch_size": int(get("batch_size", 64)),
        "limit": get("limit"),
        "num_fewshot": get("num_fewshot"),
        "fewshot": dict(get("fewshot", {})),
        "gen_kwargs": dict(get("gen_kwargs", {})) or None,
        "fewshot_as_multiturn": bool(get("fewshot_as_multiturn", False)),
        "apply_chat_template": bool(pool.chat_template) if chat is None else bool(chat),
        "confirm_run_unsafe_code": bool(get("confirm_run_unsafe_code", False)),
        "include_path": get("include_path"),
        "system_instruction": get("system_instruction"),
    }
