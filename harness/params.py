"""Type checks for selector parameters, so a value of the wrong kind from the command line (`2.5` where a count
is meant, the string `no` where a flag is meant) stops the run with one line instead of a traceback later."""

from __future__ import annotations

import math
from typing import Any

from harness.errors import HarnessError


def whole(params: dict[str, Any], key: str, minimum: int, why: str = "") -> int:
    """`params[key]` as an integer of at least `minimum` (bools are not integers here)."""
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HarnessError(f"{key} must be a whole number >= {minimum}{f' ({why})' if why else ''}, got {value!r}")
    return value


def number(
    params: dict[str, Any],
    key: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    why: str = "",
) -> float:
    """`params[key]` as a finite number in the interval [low, high] (ends excluded where `*_open`)."""
    value = params[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if math.isinf(high):
            span = f"{'>' if low_open else '>='} {low:g}"
        else:
            span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise HarnessError(f"{key} must be a number {span}{f' ({why})' if why else ''}, got {value!r}")
    return float(value)


def flag(params: dict[str, Any], key: str) -> bool:
    """`params[key]` as a real boolean (true/false on the command line; `no` or `0` are refused, not guessed)."""
    value = params[key]
    if not isinstance(value, bool):
        raise HarnessError(f"{key} must be true or false, got {value!r}")
    return value


def names(params: dict[str, Any], key: str, *, allow_none: bool = False) -> list[str] | None:
    """`params[key]` as a list of names (a bare string would otherwise be read letter by letter)."""
    value = params[key]
    if value is None and allow_none:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in _iterable(value)):
        raise HarnessError(f"{key} must be a list of module names such as [q_proj,v_proj], got {value!r}")
    return list(value)


def _iterable(value: Any) -> list[Any]:
    try:
        return list(value)
    except TypeError:
        return [None]
