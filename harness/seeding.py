"""Seeds: independent, reproducible streams for selection, initialisation and data order."""

from __future__ import annotations

import hashlib

import numpy as np

STAGES = ("selection", "init", "order")


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for `stream` derived from the master seed (stable across Python runs)."""
    digest = hashlib.sha256(f"{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stage_rng(seed: int, stream: str) -> np.random.Generator:
    """A numpy Generator for one named stream of one seed."""
    return np.random.default_rng(stream_seed(seed, stream))


def stage_seeds(seed: int, overrides: dict[str, int | None] | None = None) -> dict[str, int]:
    """Seeds of the three stages: an explicit override wins, else a stream of the master seed."""
    overrides = overrides or {}
    return {s: int(overrides[s]) if overrides.get(s) is not None else stream_seed(seed, s) for s in STAGES}
