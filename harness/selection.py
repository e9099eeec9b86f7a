"""Selections, the selector registry, and loading selector files as plugins."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.pool import PoolView
from harness.seeding import stage_rng


@dataclass
class Selection:
    """What a selector returns: a fixed set of ids, or one set of ids per epoch, plus optional scores."""

    ids: list[str] | None = None
    epochs: list[list[str]] | None = None
    scores: pd.Series | None = None
    info: dict[str, Any] = field(default_factory=dict)
    cost_seconds: float = 0.0
    signals: list[dict[str, Any]] = field(default_factory=list)
    """The cached signals it used: name, key, compute seconds, and whether this run found it cached."""

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.epochs is None):
            raise ValueError("a Selection has either ids (fixed subset) or epochs (per-epoch schedule)")
        if self.ids is not None:
            self.ids = [str(i) for i in self.ids]
        else:
            self.epochs = [[str(i) for i in e] for e in self.epochs]

    @property
    def kind(self) -> str:
        return "fixed" if self.ids is not None else "schedule"

    @property
    def distinct_ids(self) -> list[str]:
        """Every id used at least once, in first-use order."""
        if self.ids is not None:
            return list(dict.fromkeys(self.ids))
        return list(dict.fromkeys(i for epoch in self.epochs for i in epoch))

    def sha256(self) -> str:
        """Hash of the selected ids in order (per epoch for schedules)."""
        h = hashlib.sha256()
        for part in [self.ids] if self.ids is not None else self.epochs:
            h.update("\n".join(part).encode())
            h.update(b"\x00")
        return h.hexdigest()


@dataclass
class SelectionContext:
    """Everything a selector may rely on; the hidden truth of the testbed is not here."""

    pool: PoolView
    budget: float
    k: int
    seed: int
    signals: Any = None
    epochs: int = 1
    """Epochs of the recipe: a per-epoch schedule (RS2) must have exactly this many."""
    global_batch_size: int = 1
    """Examples per optimizer step of the recipe."""
    target_tasks: list[str] = field(default_factory=list)
    """The tasks the run is evaluated on, as named in the pool's validation examples (targeted selectors)."""

    def rng(self, stream: str = "selection") -> np.random.Generator:
        """A generator seeded by the selection seed (and a stream name, for several streams)."""
        return stage_rng(self.seed, stream)


SelectFn = Callable[..., Selection]


@dataclass(frozen=True)
class SelectorSpec:
    name: str
    fn: SelectFn
    uses_budget: bool
    budget_unit: str
    source: str
    exact_k: bool = True
    check: Callable[[dict[str, Any]], None] | None = None
    shared: tuple[tuple[str, Any], ...] = ()

    def params(self) -> dict[str, inspect.Parameter]:
        """The selector's parameters: its keyword-only arguments, plus settings it shares with other selectors
        (declared once, e.g. LESS's for `influence` and `bids`) and receives as **kwargs."""
        sig = inspect.signature(self.fn)
        own = {n: p for n, p in list(sig.parameters.items())[1:] if p.kind is p.KEYWORD_ONLY}
        kw = inspect.Parameter.KEYWORD_ONLY
        return {**{n: inspect.Parameter(n, kw, default=d) for n, d in self.shared}, **own}


_REGISTRY: dict[str, SelectorSpec] = {}
_LOADED: dict[str, str] = {}
"""Plugin file (resolved path) -> sha256 of the code loaded from it."""


def register(
    name: str,
    *,
    uses_budget: bool = True,
    budget_unit: str = "run",
    exact_k: bool = True,
    check: Callable[[dict[str, Any]], None] | None = None,
    shared: dict[str, Any] | None = None,
) -> Callable[[SelectFn], SelectFn]:
    """Decorator that registers `fn(ctx, *, **params) -> Selection` under `name`.

    `budget_unit` is "run" for a fixed subset or "epoch" when the budget is per epoch (RS2). A selection must
    hold exactly k examples (per epoch for schedules) unless the selector declares `exact_k=False`. `check(params)`
    raises HarnessError for parameter values that cannot work; it runs before any data is loaded. `shared`
    names settings (with their defaults) that the function takes through **kwargs.
    """
    if budget_unit not in ("run", "epoch"):
        raise ValueError("budget_unit is 'run' or 'epoch'")

    def wrap(fn: SelectFn) -> SelectFn:
        source = inspect.getsourcefile(fn) or "?"
        old = _REGISTRY.get(name)
        if old is not None and Path(old.source).resolve() != Path(source).resolve():
            raise HarnessError(f"selector '{name}' is defined twice: {old.source} and {source}; rename one")
        extra = tuple((shared or {}).items())
        _REGISTRY[name] = SelectorSpec(name, fn, uses_budget, budget_unit, source, exact_k, check, extra)
        return fn

    return wrap


def plugin_dirs(extra: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """The repository's selectors/ folder followed by the user's extra folders."""
    dirs = [REPO_ROOT / "selectors"]
    for d in extra:
        p = Path(d).expanduser().resolve()
        if not p.is_dir():
            raise HarnessError(f"plugin folder {d!r} does not exist; fix plugins=[...]")
        dirs.append(p)
    return dirs


def load_plugins(extra: list[str] | tuple[str, ...] = ()) -> dict[str, SelectorSpec]:
    """Import every selectors/*.py (and extra folders) under private module names, so that the
    folder never shadows the standard library's `selectors` module."""
    for folder in plugin_dirs(extra):
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
            module_name = f"harness_plugins.{path.stem}_{digest}"
            code = path.read_bytes()
            sha = hashlib.sha256(code).hexdigest()
            if module_name in sys.modules and _LOADED.get(str(path.resolve())) == sha:
                continue  # loaded, and unchanged since (an edited file is loaded again, e.g. between sweep cells)
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                exec(compile(code, str(path), "exec"), module.__dict__)  # the very bytes that were hashed
            except Exception as exc:
                del sys.modules[module_name]
                _LOADED.pop(str(path.resolve()), None)
                if isinstance(exc, HarnessError):
                    raise
                raise HarnessError(f"selector file {path} failed to load: {type(exc).__name__}: {exc}") from exc
            _LOADED[str(path.resolve())] = sha
    return dict(_REGISTRY)


def source_sha256(spec: SelectorSpec) -> str | None:
    """The sha256 of the selector file's code that this process runs (as loaded, not as the file reads now);
    a selector defined outside the plugin folders: its file as it is."""
    loaded = _LOADED.get(str(Path(spec.source).resolve()))
    if loaded is not None:
        return loaded
    try:
        return hashlib.sha256(Path(spec.source).read_bytes()).hexdigest()
    except OSError:
        return None


def get_selector(name: str) -> SelectorSpec:
    """The registered selector, or a one-line error listing the available ones."""
    if name not in _REGISTRY:
        raise HarnessError(
            f"unknown selector '{name}'; available: {', '.join(sorted(_REGISTRY))} "
            f"(add selectors/{name}.py and conf/selector/{name}.yaml to define it)"
        )
    return _REGISTRY[name]


def check_params(spec: SelectorSpec, params: dict[str, Any]) -> None:
    """Unknown selector parameters are an error, not silently ignored."""
    allowed = spec.params()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise HarnessError(
            f"selector '{spec.name}' has no parameter(s) {unknown}; it takes {sorted(allowed) or 'none'}"
        )
    if spec.check is not None:
        defaults = {n: p.default for n, p in allowed.items() if p.default is not inspect.Parameter.empty}
        spec.check({**defaults, **params})


KEEP_RULES = ("drop_top", "hardest", "easiest")
"""How score-based selectors (EL2N, GraNd) turn scores into a subset."""


def keep_by_score(scores: np.ndarray, k: int, keep: str, offset: float = 0.0) -> np.ndarray:
    """Rows kept by a score rule: `hardest` the k highest, `easiest` the k lowest, `drop_top` skips the highest
    `offset` share of the pool (mostly noisy or mislabelled, per the NLP recipe) and keeps the next k highest.
    Ties go to the lower row index; when the offset leaves fewer than k rows, the offset shrinks to fit."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    descending = np.lexsort((np.arange(n), -scores))  # highest first, ties by row
    if keep == "hardest":
        return descending[:k]
    if keep == "easiest":
        return np.lexsort((np.arange(n), scores))[:k]
    if keep == "drop_top":
        skip = min(int(round(offset * n)), n - k)
        return descending[skip : skip + k]
    raise HarnessError(f"unknown keep rule {keep!r}; use one of {list(KEEP_RULES)}")


def equal_quotas(sizes: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Per-group counts summing to min(k, sum(sizes)), as equal as the group sizes allow: a group smaller than
    its share is taken whole and what it leaves is shared among the others (water-filling). When k does not
    divide evenly (or is below the number of groups), the one-more quotas go to groups drawn uniformly by `rng`,
    else to the lowest group indices (k-means labels are in seeding order, so kMQ passes an rng)."""
    sizes = np.asarray(sizes, dtype=int)
    quota = np.zeros(len(sizes), dtype=int)
    remaining = min(k, int(sizes.sum()))
    while remaining > 0:
        open_groups = np.flatnonzero(quota < sizes)
        share, extra = divmod(remaining, len(open_groups))
        if extra and rng is not None:
            open_groups = rng.permutation(open_groups)
        for rank, g in enumerate(open_groups):
            take = min(share + (1 if rank < extra else 0), sizes[g] - quota[g])
            quota[g] += take
            remaining -= take
    return quota


def budget_to_k(budget: float, n: int) -> int:
    """k = round(budget * N), the number of examples kept; at least one, or an error."""
    k = int(round(budget * n))
    if k < 1:  # 1/n keeps one (0.5/n does not: round() takes a half to the even 0)
        raise HarnessError(
            f"budget={budget} keeps 0 of {n} pool examples; use budget >= {1 / n:.2g} (at least one example)"
        )
    return k


def run_selector(spec: SelectorSpec, ctx: SelectionContext, params: dict[str, Any]) -> Selection:
    """Call the selector, time it, and check that what it returned is a valid selection of the pool."""
    check_params(spec, params)
    start = time.perf_counter()
    selection = spec.fn(ctx, **params)
    elapsed = time.perf_counter() - start
    if not isinstance(selection, Selection):
        raise TypeError(f"selector '{spec.name}' returned {type(selection).__name__}, not a Selection")
    used = list(getattr(ctx.signals, "used", None) or [])
    if used:  # every signal's compute time counts, cached or not; what this run computed is inside `elapsed`
        computed_here = sum(u["seconds"] for u in used if not u["cached"])
        selection.signals = used
        elapsed = max(0.0, elapsed - computed_here) + sum(u["seconds"] for u in used)
    selection.cost_seconds += elapsed
    known = set(ctx.pool.ids)
    parts = [selection.ids] if selection.ids is not None else selection.epochs
    if selection.epochs is not None and len(selection.epochs) != ctx.epochs:
        raise HarnessError(
            f"selector '{spec.name}' returned a schedule of {len(selection.epochs)} epochs but the recipe trains "
            f"{ctx.epochs}; build the schedule from ctx.epochs"
        )
    for part in parts:
        if spec.exact_k and len(part) != ctx.k:
            raise HarnessError(
                f"selector '{spec.name}' selected {len(part)} examples{' in an epoch' if selection.epochs else ''}"
                f" but the budget asks for exactly k={ctx.k}; return k ids, or register it with exact_k=False"
            )
        if not part:
            raise ValueError(f"selector '{spec.name}' selected no examples")
        bad = next((i for i in part if i not in known), None)
        if bad is not None:
            raise ValueError(f"selector '{spec.name}' selected unknown id {bad!r}")
        if len(set(part)) != len(part):
            raise ValueError(f"selector '{spec.name}' selected an id twice within one set")
    return selection
