"""The tasks an `eval` config names, checked before any training: names, unsafe code, data on this machine.

Testbed tasks become task dicts (see testbed_tasks); lm-eval tasks stay names, looked up in lm-eval's
task index plus the user's own task folder (`eval.include_path`). Offline, a task whose dataset is not
on this machine fails here in one line, without building lm-eval's whole index or touching the network.
"""

from __future__ import annotations

import difflib
import functools
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.evaluation.settings import cfg_get, chosen_shots, evaluate_options
from harness.evaluation.testbed_tasks import (
    TESTBED_PREFIX,
    fewshot_source,
    is_generative,
    task_definition,
    testbed_task_configs,
)
from harness.hub import data_file_list, missing_local_data, offline_reason
from harness.pool import EVAL_COLUMNS, Pool

log = logging.getLogger(__name__)

LookupFn = Callable[[str], "tuple[str, dict[str, Any], set[str]] | None"]
"""name -> (kind 'task' | 'group' | 'tag', config, tag members), or None when unknown."""


def include_paths(include_path: Any) -> tuple[str, ...]:
    """eval.include_path as a tuple of absolute folders (a string or a list of strings; empty for none)."""
    if include_path in (None, "", []):
        return ()
    raw = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    out = []
    for p in raw:
        path = Path(str(p)).expanduser().resolve()
        if not path.is_dir():
            raise HarnessError(f"eval.include_path '{p}' is not a folder; point it at a folder of lm-eval task YAMLs")
        out.append(str(path))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def task_manager(include: tuple[str, ...] = (), defaults: bool = True) -> Any:
    """lm-eval's index of tasks, groups and tags (built-in plus `include`; seconds to build, once per process)."""
    from lm_eval.tasks import TaskManager

    from harness.evaluation.runner import quiet_lm_eval

    with quiet_lm_eval():
        return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def needs_builtin_tasks(names: list[str], include: tuple[str, ...]) -> bool:
    """False when every name (and every member of its groups) is declared in the user's own task folders.

    Then lm-eval's index of its thousands of built-in tasks (seconds to build) is not needed."""
    if not include:
        return True
    own = scan_lookup(include, builtin=False)
    try:
        for name in names:
            list(leaf_configs(name, own))
    except KeyError:
        return True
    return False


def check_tasks(names: list[str], include: tuple[str, ...] = ()) -> None:
    """Raise a one-line HarnessError unless every name is an lm-eval task, group or tag (or a task YAML file)."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise HarnessError(f"lm-eval task names must be non-empty strings, got {name!r}")
    known = set(task_manager(include, needs_builtin_tasks(names, include)).all_tasks)
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
    where = " or eval.include_path" if include else ""
    raise HarnessError(f"unknown lm-eval task {name!r}{hint}{more} (see `lm_eval --tasks list`{where})")


# --------------------------------------------------------------------------- task configs without building tasks


def _kind(cfg: dict[str, Any]) -> str:
    return "group" if "group" in cfg and "class" not in cfg else "task"


def index_lookup(include: tuple[str, ...] = (), builtin: bool = True) -> LookupFn:
    """Look names up in lm-eval's task index (built once per process)."""

    def lookup(name: str) -> tuple[str, dict[str, Any], set[str]] | None:
        entry = task_manager(include, builtin).task_index.get(name)
        if entry is None:
            return _yaml_file(name)
        if entry.kind.name == "TAG":
            return "tag", {}, set(entry.tags)
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = entry.cfg if entry.cfg is not None else load_yaml(entry.yaml_path, resolve_func=False)
        return ("group" if entry.kind.name == "GROUP" else "task"), dict(cfg), set()

    return lookup


def _yaml_file(name: str) -> tuple[str, dict[str, Any], set[str]] | None:
    """A task or group given as the path of its YAML file (lm-eval accepts those as names)."""
    if not name.endswith((".yaml", ".yml")) or not Path(name).is_file():
        return None
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(name), resolve_func=False)
    return _kind(cfg), cfg, set()


def _task_roots(include: tuple[str, ...], builtin: bool = True) -> list[Path]:
    import lm_eval.tasks

    return [*(Path(p) for p in include), *([Path(lm_eval.tasks.__file__).parent] if builtin else [])]


@functools.lru_cache(maxsize=8)
def _declared_names(include: tuple[str, ...], builtin: bool = True) -> dict[str, list[Path]]:
    """name -> YAML files with a top-level `task: <name>` or `group: <name>` line, from one pass over the bytes."""
    pattern = re.compile(rb"^(?:task|group):[ \t]*['\"]?([^'\"\s#]+)['\"]?[ \t]*(?:#.*)?$", re.M)
    names: dict[str, list[Path]] = {}
    for root in _task_roots(include, builtin):
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for file in sorted(files):
                if not file.endswith(".yaml"):
                    continue
                path = Path(folder) / file
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                for name in dict.fromkeys(pattern.findall(data)):
                    names.setdefault(name.decode("utf-8", "replace"), []).append(path)
    return names


def scan_lookup(include: tuple[str, ...] = (), builtin: bool = True) -> LookupFn:
    """Look names up by reading the task YAML files as text once (about a second; no index, no task code).

    Finds tasks and groups declared as `task: <name>` / `group: <name>`; tags are left to the full index."""
    from lm_eval.tasks._yaml_loader import load_yaml

    declared = _declared_names(include, builtin)

    @functools.cache
    def lookup(name: str) -> tuple[str, dict[str, Any], set[str]] | None:
        for path in declared.get(name, []):
            try:
                cfg = load_yaml(path, resolve_func=False)
            except Exception:  # noqa: BLE001 - a YAML lm-eval's own index would skip
                continue
            if cfg.get("task") == name or cfg.get("group") == name:
                return _kind(cfg), cfg, set()
        return _yaml_file(name)

    return lookup


ANCESTRY = "_harness_names"
"""Key of a leaf config that lists the names it was reached through: the requested name, groups, itself."""


def leaf_configs(
    name: str, lookup: LookupFn, overrides: dict[str, Any] | None = None, via: tuple[str, ...] = ()
) -> Iterator[dict[str, Any]]:
    """The configs of the leaf tasks a task, group or tag name stands for (dataset_path, unsafe_code, ...).

    Raises KeyError for a name the lookup does not know."""
    found = lookup(name)
    if found is None:
        raise KeyError(name)
    kind, cfg, members = found
    via = (*via, name)
    if kind == "tag":
        for member in sorted(members):
            yield from leaf_configs(member, lookup, overrides, via)
        return
    if kind == "task":
        leaf = {**cfg, **(overrides or {}), "task": cfg.get("task", name)}
        tags = leaf.get("tag") or []
        leaf[ANCESTRY] = [*via, *([tags] if isinstance(tags, str) else list(tags))]
        yield leaf
        return
    group_overrides = {
        k: v for k, v in cfg.items() if k not in ("group", "task", "aggregate_metric_list", "metadata", "tag")
    }
    merged = {**group_overrides, **(overrides or {})}
    for item in cfg.get("task") or []:
        yield from _member_configs(item, lookup, merged, via)


def _member_configs(
    item: Any, lookup: LookupFn, overrides: dict[str, Any], via: tuple[str, ...]
) -> Iterator[dict[str, Any]]:
    if isinstance(item, str):
        yield from leaf_configs(item, lookup, overrides, via)
    elif isinstance(item, dict) and "group" in item:
        if lookup(str(item["group"])) is not None:
            rest = {k: v for k, v in item.items() if k != "group"}
            yield from leaf_configs(str(item["group"]), lookup, {**overrides, **rest}, via)
        else:  # an inline group
            for sub in item.get("task") or []:
                yield from _member_configs(sub, lookup, overrides, (*via, str(item["group"])))
    elif isinstance(item, dict) and "task" in item:
        base = str(item["task"])
        if lookup(base) is not None:
            rest = {k: v for k, v in item.items() if k != "task"}
            yield from leaf_configs(base, lookup, {**overrides, **rest}, via)
        else:  # an inline task
            yield {**overrides, **item, ANCESTRY: [*via, base]}


def check_fewshot_keys(fewshot: Mapping[str, Any], allowed: set[str]) -> None:
    """Raise a one-line HarnessError for an eval.fewshot key that names none of the evaluated tasks or groups."""
    for key in fewshot:
        if str(key) not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise HarnessError(
                f"eval.fewshot.{key} names no evaluated task or group{hint} (eval.tasks decides what runs)"
            )


def check_unsafe(names: list[str], lookup: LookupFn, confirmed: bool) -> None:
    """Raise a one-line HarnessError when a task executes model-written code and eval.confirm_run_unsafe_code is off."""
    if confirmed:
        return
    for name in names:
        for cfg in leaf_configs(name, lookup):
            if cfg.get("unsafe_code"):
                leaf = cfg.get("task", name)
                what = f"'{name}'" if leaf == name else f"'{name}' (its task '{leaf}')"
                raise HarnessError(
                    f"lm-eval task {what} executes code the model writes; to run it, set "
                    "eval.confirm_run_unsafe_code=true (preferably inside a sandbox or container)"
                )


def check_task_data(names: list[str], lookup: LookupFn, reason: str, fix: str) -> None:
    """Offline: raise a one-line HarnessError naming the first task whose dataset is not on this machine."""
    for name in names:
        for cfg in leaf_configs(name, lookup):
            path = cfg.get("dataset_path")
            if not isinstance(path, str) or not path:
                continue  # a Python task that loads its own data: lm-eval finds out, offline mode keeps it fast
            kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else None
            missing = missing_local_data(path, cfg.get("dataset_name"), kwargs)
            if missing:
                leaf = cfg.get("task", name)
                task = f"'{name}'" if leaf == name else f"'{name}' (its task '{leaf}')"
                raise HarnessError(
                    f"lm-eval task {task} needs {missing}, which is not on this machine, and {reason}; {fix}"
                )


# --------------------------------------------------------------------------- the tasks of an eval config


def _testbed_tasks(eval_cfg: Any, pool: Pool, cache: Path) -> list[dict]:
    names = [str(n) for n in cfg_get(eval_cfg, "tasks", [])]
    items = pool.eval_items
    if items is None or items.empty:
        raise HarnessError(
            f"data '{pool.name}' has no testbed evaluation items; evaluate on lm-eval tasks instead: "
            "eval=lm_eval eval.tasks=[...] (your own task YAMLs: eval.include_path=<folder>)"
        )
    available = sorted(str(t) for t in items["task"].unique())
    if names:
        wanted = [n.removeprefix(TESTBED_PREFIX) for n in names]
        unknown = [n for n in wanted if n not in available]
        if unknown:
            raise HarnessError(f"unknown testbed task '{unknown[0]}'; the pool has {', '.join(available)} (eval.tasks)")
    else:  # by default the multiple-choice tasks; generative ones only when asked for
        wanted = [t for t in available if not is_generative(t)]
    check_fewshot_keys(cfg_get(eval_cfg, "fewshot", {}), {*wanted, *(TESTBED_PREFIX + w for w in wanted)})
    _check_testbed_shots(wanted, eval_cfg, pool)
    items = items[items["task"].isin(wanted)]
    digest = hashlib.sha256(pool.delimiter.encode())
    for row in items[list(EVAL_COLUMNS)].itertuples(index=False):
        digest.update(
            json.dumps([str(row[0]), int(row[1]), str(row[2]), [str(c) for c in row[3]], int(row[4])]).encode()
        )
    for row in pool.validation[["task", "prompt", "response"]].itertuples(index=False):
        digest.update(json.dumps([str(v) for v in row]).encode())
    data_dir = Path(cache).expanduser().resolve() / "eval_data" / digest.hexdigest()[:16]
    return testbed_task_configs(items, pool.delimiter, data_dir, pool.validation)


def _check_testbed_shots(wanted: list[str], eval_cfg: Any, pool: Pool) -> None:
    """Few-shot examples of a testbed task come from the pool's validation examples of its skill: a one-line
    HarnessError when there are none (lm-eval would draw them from the evaluation items) or too few."""
    per_task = {str(k): v for k, v in cfg_get(eval_cfg, "fewshot", {}).items()}
    num_fewshot = cfg_get(eval_cfg, "num_fewshot")
    counts = pool.validation["task"].value_counts() if len(pool.validation) else {}
    for task in wanted:
        own = task_definition(task).get("num_fewshot")
        shots = chosen_shots([TESTBED_PREFIX + task, task], per_task, num_fewshot, own, default_only=True)
        shots = own if shots is None else shots
        source = fewshot_source(task)
        have = int(counts.get(source, 0))
        if shots and have < shots:
            what = "no validation examples" if not have else f"only {have} validation examples"
            raise HarnessError(
                f"testbed task '{task}' is to be evaluated {shots}-shot, but the pool has {what} of '{source}' "
                f"(its few-shot examples, never evaluation items); lower eval.fewshot.{task} / eval.num_fewshot, "
                f"or raise data.n_validation_per_task"
            )


def _offline_fix(pool: Pool) -> str:
    testbed = "eval=testbed, or " if pool.eval_items is not None and not pool.eval_items.empty else ""
    return (
        "run once with network (same HF_HOME) to cache it, or evaluate on local data: "
        f"{testbed}your own task YAMLs (absolute data_files) with eval.include_path=<folder>"
    )


def resolve_tasks(eval_cfg: Any, pool: Pool, cache: Path) -> list[str | dict]:
    """The tasks an `eval` config names, checked before any training: testbed task dicts or lm-eval names."""
    suite = str(cfg_get(eval_cfg, "suite", "testbed"))
    evaluate_options(eval_cfg, pool)  # values evaluation would only fail on after training
    if suite == "testbed":
        return _testbed_tasks(eval_cfg, pool, cache)
    if suite != "lm_eval":
        raise HarnessError(f"unknown eval.suite '{suite}'; use testbed or lm_eval")
    names = [str(n) for n in cfg_get(eval_cfg, "tasks", [])]
    if not names:
        raise HarnessError("eval.tasks is empty; name lm-eval tasks, e.g. eval.tasks=[arc_easy,hellaswag]")
    include = include_paths(cfg_get(eval_cfg, "include_path"))
    confirmed = bool(cfg_get(eval_cfg, "confirm_run_unsafe_code", False))
    reason = offline_reason()
    scanned = False
    if reason is not None:
        # Offline: find each name's YAML by a quick scan and check its data before building lm-eval's index.
        try:
            scan = scan_lookup(include)
            check_unsafe(names, scan, confirmed)
            check_task_data(names, scan, reason, _offline_fix(pool))
            scanned = True
        except KeyError:  # a tag or a name the scan cannot see: the full index decides
            pass
    check_tasks(names, include)
    full = index_lookup(include, needs_builtin_tasks(names, include))
    check_unsafe(names, full, confirmed)
    fewshot = cfg_get(eval_cfg, "fewshot", {})
    if fewshot:
        check_fewshot_keys(fewshot, {n for name in names for leaf in leaf_configs(name, full) for n in leaf[ANCESTRY]})
    if reason is not None and not scanned:
        check_task_data(names, full, reason, _offline_fix(pool))
    return names


# --------------------------------------------------------------------------- what evaluation reads, as one hash


def _file_digest(digest: Any, path: Path, name: str) -> None:
    """Add a file under `name` (a path relative to its folder, never where the folder is) and its bytes."""
    digest.update(name.encode() + b"\0")
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def _content_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _file_digest(digest, path, "")
    return digest.hexdigest()


def _located_nowhere(value: Any) -> Any:
    """A task dict with its local files as their content hashes and its cache folders left out: the fingerprint
    must not change with where the cache or the data lie (paths.cache is not part of a cell's identity)."""
    if isinstance(value, dict):
        return {k: _located_nowhere(v) for k, v in value.items() if k != "cache_dir"}
    if isinstance(value, (list, tuple)):
        return [_located_nowhere(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and os.path.isfile(value):
        return f"file sha256 {_content_sha256(Path(value))}"
    return value


def tasks_fingerprint(tasks: list[str | dict], include_path: Any = None) -> str:
    """sha256 of what evaluation reads besides the model: lm-eval's version (its built-in tasks), the task dicts as
    given (local files by content), and the user's own task folders (their YAML and Python files, by path within
    the folder) with the local data files their named tasks read (by content). Stored with a run record, it tells a
    record made from since-edited tasks or data apart from a current one (the cell's identity holds only the
    names); moving the cache or the task folder changes nothing."""
    digest = hashlib.sha256(importlib.metadata.version("lm_eval").encode())
    for task in tasks:
        digest.update(json.dumps(_located_nowhere(task), sort_keys=True, default=str).encode() + b"\0")
    include = include_paths(include_path)
    for root in include:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for file in sorted(files):
                if file.endswith((".yaml", ".yml", ".py", ".jinja")):
                    path = Path(folder) / file
                    _file_digest(digest, path, str(path.relative_to(root)))
    own = scan_lookup(include, builtin=False)
    for name in (t for t in tasks if isinstance(t, str)):
        try:
            leaves = list(leaf_configs(name, own))
        except KeyError:  # a built-in task: lm-eval's version covers it
            continue
        for cfg in leaves:
            kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else {}
            for pattern in data_file_list(kwargs.get("data_files")):
                for file in sorted(glob.glob(os.path.expanduser(pattern))):
                    _file_digest(digest, Path(file), "data file")
    return digest.hexdigest()
