"""The training pool, its validation examples and evaluation items, and the truth-free view selectors get.

A Pool never carries the testbed's planted truth: `harness.data.load_truth` returns it separately, and
only the record stage asks for it (see harness/diagnostics.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PUBLIC_COLUMNS = ("id", "task", "prompt", "response")
"""Columns every pool example has and every selector may read."""

TRUTH_COLUMNS = ("truth_noisy", "truth_dup_group", "truth_filler")
"""Planted ground truth of the testbed, per example id: never in a Pool (harness.data.load_truth has it)."""

EVAL_COLUMNS = ("task", "doc_id", "prompt", "choices", "gold")
"""Evaluation items of the testbed (one lm-eval task per task name; a generative task has one choice, the answer)."""


@dataclass
class Pool:
    """Everything a run draws on: training examples, per-task validation examples, evaluation items."""

    name: str
    examples: pd.DataFrame
    validation: pd.DataFrame
    eval_items: pd.DataFrame | None = None
    capabilities: dict[str, str] = field(default_factory=dict)
    delimiter: str = " "
    chat_template: bool = False
    _fingerprint: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [c for c in PUBLIC_COLUMNS if c not in self.examples.columns]
        if missing:
            raise ValueError(f"pool examples lack columns {missing}")
        leaked = [c for c in TRUTH_COLUMNS if c in self.examples.columns or c in self.validation.columns]
        if leaked:
            raise ValueError(f"a Pool must not carry truth columns {leaked}; keep them in a separate frame")
        self.examples = self.examples.reset_index(drop=True)
        self.validation = self.validation.reset_index(drop=True)
        if self.examples["id"].duplicated().any():
            dup = self.examples.loc[self.examples["id"].duplicated(), "id"].iloc[0]
            raise ValueError(f"pool ids must be unique; {dup!r} appears more than once")

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def tasks(self) -> list[str]:
        """Task names in a stable order (sorted)."""
        return sorted(self.examples["task"].unique())

    def fingerprint(self) -> str:
        """sha256 of the public content of pool and validation, in order: equal pools, equal prints.

        Memoised per (frames, delimiter, chat template): a run asks for it at several stages."""
        key = (id(self.examples), id(self.validation), len(self.examples), self.delimiter, self.chat_template)
        if self._fingerprint is None or self._fingerprint[0] != key:
            self._fingerprint = (key, self._compute_fingerprint())
        return self._fingerprint[1]

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        for frame in (self.examples, self.validation):
            for row in frame[list(PUBLIC_COLUMNS)].itertuples(index=False):
                h.update(json.dumps(list(row), ensure_ascii=False).encode())
            h.update(b"\x00")
        h.update(json.dumps([self.delimiter, self.chat_template]).encode())
        return h.hexdigest()

    def view(self, n_tokens: np.ndarray | None = None) -> PoolView:
        """The truth-free view handed to selectors."""
        return PoolView(self.examples[list(PUBLIC_COLUMNS)].copy(), self.validation.copy(), n_tokens)

    def index_of(self, ids: list[str] | np.ndarray) -> np.ndarray:
        """Row positions of the given ids (raises KeyError on an unknown id)."""
        pos = pd.Index(self.examples["id"]).get_indexer(list(ids))
        if (pos < 0).any():
            raise KeyError(f"unknown pool id {list(ids)[int(np.argmax(pos < 0))]!r}")
        return pos


@dataclass(frozen=True)
class PoolView:
    """What a selector may rely on: ids, task labels, text and token counts; never the truth columns."""

    frame: pd.DataFrame
    validation: pd.DataFrame
    n_tokens: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> np.ndarray:
        return self.frame["id"].to_numpy()

    @property
    def tasks(self) -> np.ndarray:
        return self.frame["task"].to_numpy()

    def validation_by_task(self) -> dict[str, pd.DataFrame]:
        return {t: g.reset_index(drop=True) for t, g in self.validation.groupby("task", sort=True)}
