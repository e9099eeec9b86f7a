"""What a cell is: everything that changes its result, and nothing else.

A run record is reused ("already complete") only for exactly the same identity; two configs that differ in
any result-changing value get different run ids and, by default, different run folders.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import HarnessError

IDENTITY_GROUPS = ("data", "model", "train", "selector", "eval", "budget", "seed", "seeds")
"""Top-level keys whose values make up the identity."""

NOT_IDENTITY = (
    "train.checkpoint_every",
    "train.keep_checkpoint",
    "train.micro_batch_size",
    "eval.batch_size",
    "eval.confirm_run_unsafe_code",
)
"""Keys inside those groups that never change the result (where and how fast it runs, what is kept)."""

ADDED_LATER = {"model.chat_template": None, "selector.warmup_base": "model"}
"""Keys added after records existed, left out of the identity while they hold this value (which is what the
records made before them did), so that adding an option never changes the run ids of existing cells."""

INERT_WHEN = {
    "selector.cluster_score": {"selector.name": "diversity", "selector.rounds": 1},
    "selector.base_examples": {"selector.warmup_base": "model"},
    "selector.base_epochs": {"selector.warmup_base": "model"},
}
"""Keys added after records existed that cannot act while other keys hold these values (kMQ's cluster score: with
one round no cluster is ever scored), left out of the identity then, whatever their value: adding such an option
changes no existing run id, and where it acts (rounds > 1) it always counts, so a record made before it (which
scored clusters another way) is never taken for a run of its new default. Likewise the pretrained stand-in's
settings while warm-ups start from the model as configured."""

NOT_IN_NAME = ("paths", "logger", "rerun", "plugins", "num_threads", "dist_timeout_minutes", *NOT_IDENTITY)
"""Overrides that never show in a run folder's name (they are not part of the identity)."""

ALREADY_IN_NAME = ("data", "model", "selector", "budget", "seed")
"""Overrides of a group choice or a value that the folder path already shows."""

MAX_NAME = 96
"""Longest readable folder name before the overrides are replaced by a hash."""


def _drop(tree: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in tree:
        return
    if rest:
        if isinstance(tree[head], dict):
            _drop(tree[head], rest)
    else:
        del tree[head]


def identity(cfg: DictConfig | dict[str, Any], uses_budget: bool = True) -> dict[str, Any]:
    """The result-changing part of a config as plain data (a selector that ignores the budget gets 1.0)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    out = json.loads(json.dumps({k: tree.get(k) for k in IDENTITY_GROUPS}, default=str))
    for key in NOT_IDENTITY:
        _drop(out, key)
    flat = flatten(out)
    for key, neutral in ADDED_LATER.items():
        if key in flat and flat[key] == neutral:
            _drop(out, key)
    for key, when in INERT_WHEN.items():
        if key in flat and all(flat.get(k, "<absent>") == v for k, v in when.items()):
            _drop(out, key)
    if not uses_budget:
        out["budget"] = 1.0
    return out


def comparable_params(selector: str, params: dict[str, Any]) -> dict[str, Any]:
    """A selector's parameters without those the identity leaves out (ADDED_LATER at their neutral value, INERT_WHEN
    where they cannot act), so a report does not tell apart records made before and after such a key was added."""
    ident = identity({"selector": {"name": selector, **params}})["selector"]
    return {k: v for k, v in ident.items() if k != "name"}


def identity_hash(ident: dict[str, Any], length: int = 12) -> str:
    """A short stable hash of an identity (the run id)."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:length]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two identities (present in one only counts)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))


def describe_differences(stored: dict[str, Any], current: dict[str, Any], limit: int = 4) -> str:
    """'train.epochs: 1 -> 3, train.lr: ...' for an error message."""
    fa, fb = flatten(stored), flatten(current)
    keys = differing_keys(stored, current)
    parts = [f"{k}: {fa.get(k, '<absent>')} -> {fb.get(k, '<absent>')}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


def _override_key(override: str) -> tuple[str, str] | None:
    """('train.lr', '5e-4') from 'train.lr=5e-4' (also '+x=..', '++x=..'); None for deletions."""
    if override.startswith("~") or "=" not in override:
        return None
    key, _, value = override.lstrip("+").partition("=")
    return key.strip(), value.strip()


def task_overrides() -> list[str] | None:
    """The command line's overrides of the running Hydra job (one cell's, in a multirun); None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):
        return None


def selector_as_configured(overrides: list[str]) -> dict[str, Any] | None:
    """The running job's selector settings without the command line's `selector.KEY` overrides: its config file,
    the data pool's adaptation (conf/selector_on/) and any preset, resolved as this job composes them. None outside
    a Hydra job, or where that composition fails."""
    try:
        from hydra import compose
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().job.config_name
        kept = [o for o in overrides if not o.lstrip("~+").startswith("selector.")]
        configured = compose(config_name=name, overrides=kept).selector
        tree = OmegaConf.to_container(configured, resolve=True)
    except Exception:  # not in a Hydra job, or a config that composes only with the selector's overrides
        return None
    return {k: v for k, v in tree.items() if k != "name"} if isinstance(tree, dict) else None


def override_values(overrides: list[str]) -> dict[str, str]:
    """The dotted keys that overrides set, with their values ('+train.lr=1' -> {'train.lr': '1'}); deletions set
    nothing."""
    return dict(parsed for parsed in map(_override_key, overrides) if parsed is not None)


def override_keys(overrides: list[str]) -> set[str]:
    """The dotted keys that overrides set ('+train.lr=1' -> 'train.lr'); deletions set nothing."""
    return set(override_values(overrides))


def _in(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "/") for p in prefixes)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+,\[\]-]+", "_", text).strip("_")


def result_overrides(overrides: list[str]) -> list[str]:
    """The command-line overrides that may change the result and that the folder path does not show yet."""
    kept = []
    for override in overrides:
        parsed = _override_key(override)
        if parsed is None:
            continue
        key, value = parsed
        if _in(key, NOT_IN_NAME) or key in ALREADY_IN_NAME:
            continue
        kept.append(f"{key}={value}")
    return sorted(kept)


def budget_free(selector: str, plugins: Any = ()) -> bool:
    """A selector registered with uses_budget=False (`full`, or a plugin's): it keeps what it keeps whatever the
    budget, so its cells at every budget are one cell, in one folder. (A selector that cannot be loaded here is
    judged by name; the run itself then says what is wrong with it.)"""
    from harness.selection import get_selector, load_plugins

    try:
        load_plugins([str(p) for p in (plugins or ())])
        return not get_selector(selector).uses_budget
    except HarnessError:
        return selector == "full"


CELL_BASE = re.compile(r"^(b[^,]+|all)_s[^,]+$")
"""The part of a run folder's name that run_name always gives it: the budget (or `all`) and the seed."""


def cell_base(name: str) -> str | None:
    """'b0.15_s0' of the run folder name 'b0.15_s0,train.lr=0.001' (what run_name writes before the overrides);
    None for a folder that run_name did not name (hydra.run.dir=...)."""
    base = name.split(",", 1)[0]
    return base if CELL_BASE.match(base) else None


def run_name(selector: str, budget: Any, seed: Any, overrides: list[str], root: Any = None) -> str:
    """Folder name of a cell: b<budget>_s<seed> plus the result-changing overrides (Hydra's override_dirname
    in spirit); when that gets long, a short hash of the full identity replaces the overrides."""
    free = budget_free(selector, OmegaConf.select(root, "plugins", default=()) if root is not None else ())
    base = f"{'all' if free else f'b{budget}'}_s{seed}"
    extra = result_overrides(overrides)
    if not extra:
        return base
    name = _slug(",".join([base, *extra]))
    if len(name) <= MAX_NAME:
        return name
    digest = None
    if root is not None:
        try:
            sub = OmegaConf.masked_copy(root, [k for k in IDENTITY_GROUPS if k in root])
            digest = identity_hash(identity(sub, uses_budget=not free), 10)  # the budget-free share one folder
        except Exception:  # an interpolation that points outside the identity: hash the overrides instead
            digest = None
    digest = digest or hashlib.sha256("\n".join(extra).encode()).hexdigest()[:10]
    return f"{base},h{digest}"
