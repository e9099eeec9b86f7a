"""Pools from real data: a local JSONL file, or a datasets dataset (hub id, generic builder, save_to_disk folder).

Both loaders turn rows into pool examples the same way (one `RowMapping`): `columns` renames the
file's keys to the pool fields id, task, prompt and response; `template` (a Python format string over
the row's fields) builds the prompt; missing ids are generated, a missing task falls back to
`default_task`. Every problem is a one-line HarnessError naming the file, the line (or row) and the fix.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.hub import (
    data_file_list,
    hub_offline,
    looks_like_hub_id,
    missing_local_data,
    offline_error,
    offline_mode,
    packaged_builder,
    require_online,
)
from harness.pool import PUBLIC_COLUMNS, Pool

DEFAULT_TEMPLATE = "{prompt}"
"""The prompt is the row's (mapped) prompt field, unchanged."""

_REMOTE_PREFIXES = ("hf://", "http://", "https://", "s3://", "gs://", "gcs://", "az://", "abfs://")
_BUILDER_FOR_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_SHOW_KEYS = 12


def _one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so a message stays on one line."""
    return " ".join(str(text).split())


def _describe(error: BaseException, limit: int = 400) -> str:
    """One line naming an exception and what it was raised while handling (datasets wraps the telling one)."""
    parts, seen = [], set()
    cur: BaseException | None = error
    while cur is not None and len(parts) < 3 and id(cur) not in seen:
        seen.add(id(cur))
        text = _one_line(cur)
        parts.append(f"{type(cur).__name__}: {text}" if text else type(cur).__name__)
        cur = cur.__cause__ or cur.__context__
    line = ", raised while handling ".join(parts)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _is_null(value: Any) -> bool:
    """JSON null, or the NaN that stands for a missing value in Arrow and pandas columns."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _keys_hint(keys: Iterable[str]) -> str:
    keys = [str(k) for k in keys]
    shown = ", ".join(repr(k) for k in keys[:_SHOW_KEYS])
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW_KEYS else ""
    return f" (it has {shown}{more})" if keys else " (it has no fields)"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", tuple: "a list", bytes: "bytes"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class RowMapping:
    """How a source row becomes a pool example: field names, prompt template, default task."""

    columns: dict[str, str]
    template: str
    template_fields: dict[str, bool]
    default_task: str | None

    @classmethod
    def build(
        cls, columns: Mapping[str, str | None] | None, template: str | None, default_task: str | None
    ) -> RowMapping:
        """Check the user's mapping and template once, before any row is read."""
        resolved = {f: f for f in PUBLIC_COLUMNS}
        for field, key in dict(columns or {}).items():
            if field not in PUBLIC_COLUMNS:
                raise HarnessError(
                    f"data.columns has unknown pool field '{field}'; map only {', '.join(PUBLIC_COLUMNS)} "
                    f"(e.g. data.columns.response=<field>)"
                )
            if key is None:
                continue
            if not isinstance(key, str) or not key:
                raise HarnessError(
                    f"data.columns.{field} must be a field name, got {key!r}; set it to a key of your rows"
                )
            resolved[field] = key
        template = DEFAULT_TEMPLATE if template is None else template
        if not isinstance(template, str):
            raise HarnessError(f"data.template must be a string, got {template!r}; e.g. data.template='{{prompt}}'")
        fields: dict[str, bool] = {}
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise HarnessError(
                f"data.template {template!r} is not a valid format string ({e}); write fields as {{name}} "
                f"and literal braces as {{{{ }}}}"
            ) from None
        for _, expr, _, _ in parsed:
            if expr is None:
                continue
            root = expr.split(".", 1)[0].split("[", 1)[0]
            if not root or root.isdigit():
                raise HarnessError(
                    f"data.template {template!r} has a positional field '{{{expr}}}'; "
                    f"name the row field instead, e.g. {{prompt}}"
                )
            fields[root] = fields.get(root, False) or root != expr
        return cls(resolved, template, fields, default_task)

    def source_keys(self) -> set[str]:
        """Every source key a row may be read for (to narrow a dataset's columns before iterating)."""
        keys = {self.columns[f] for f in ("id", "task", "response")}
        for field in self.template_fields:
            keys.add(self.columns.get(field, field) if field in ("prompt", "response") else field)
        return keys

    def _needs(self, field: str, first_row: Mapping[str, Any]) -> bool:
        """Whether optional field id/task must come from every row (renamed, present in the first row, no default)."""
        key = self.columns[field]
        return key != field or key in first_row or (field == "task" and self.default_task is None)

    def _missing(self, where: str, row: Mapping[str, Any], field: str | None, key: str) -> HarnessError:
        """The error for a row without the value a pool field (or, field None, the template) needs."""
        null = key in row
        if field is None:
            named = f" used by data.template {self.template!r}"
        else:
            named = f" named by data.columns.{field}" if key != field else ""
        if null:
            problem, act = f"{where} has field '{key}'{named} set to null", "give it a value"
        else:
            problem, act = f"{where} has no field '{key}'{named}{_keys_hint(row)}", "add it"
        if field is None:
            return HarnessError(f"{problem}; {act} or change data.template")
        extra = {
            "task": ", or set data.default_task",
            "prompt": ", or build the prompt with data.template",
            "id": ", or drop data.columns.id to have ids generated" if named else "",
        }.get(field, "")
        return HarnessError(f"{problem}; {act} or map another field with data.columns.{field}=<field>{extra}")

    def _text(self, where: str, row: Mapping[str, Any], field: str) -> str:
        """The row's value for pool field id, task or response, as text (numbers and booleans become strings)."""
        key = self.columns[field]
        value = row.get(key)
        if _is_null(value):
            raise self._missing(where, row, field, key)
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            return str(value)
        raise HarnessError(
            f"{where} field '{key}' is {_kind(value)}, not text; map a text field with data.columns.{field}=<field>"
            + (" or build the prompt from it with data.template" if field == "prompt" else "")
        )

    def _prompt(self, where: str, row: Mapping[str, Any], done: Mapping[str, str]) -> str:
        """Fill the template from the row; pool-field names read their mapped keys, other names raw keys."""
        values: dict[str, Any] = {}
        for name, structured in self.template_fields.items():
            if name in done:
                values[name] = done[name]
                continue
            key = self.columns[name] if name in ("prompt", "response") else name
            value = row.get(key)
            if _is_null(value):
                raise self._missing(where, row, name if name == "prompt" else None, key)
            if isinstance(value, (dict, list, tuple)) and not structured:
                raise HarnessError(
                    f"{where} field '{key}' is {_kind(value)}, not text; index into it in data.template "
                    f"(e.g. {{{name}[0]}}) or map a text field"
                )
            values[name] = value
        try:
            return self.template.format_map(values)
        except (IndexError, KeyError, AttributeError, TypeError, ValueError) as e:
            raise HarnessError(
                f"{where} cannot fill data.template {self.template!r} ({_describe(e)}); fix the template or the row"
            ) from None

    def frame(
        self, rows: Iterable[tuple[int, Mapping[str, Any]]], where: Callable[[int], str], id_stem: str
    ) -> pd.DataFrame:
        """Map (locator, row) pairs to a frame with the pool columns; where(locator) names a row in messages."""
        out: dict[str, list[str]] = {c: [] for c in PUBLIC_COLUMNS}
        seen: dict[str, int] = {}
        need_id = need_task = False
        for i, (loc, row) in enumerate(rows):
            here = where(loc)
            if not isinstance(row, Mapping):
                raise HarnessError(f"{here} is {_kind(row)}, not an object; write one JSON object per line")
            if i == 0:
                need_id, need_task = self._needs("id", row), self._needs("task", row)
            rid = self._text(here, row, "id") if need_id else f"{id_stem}-{i:06d}"
            if rid in seen:
                raise HarnessError(
                    f"{here} repeats id '{rid}' of {where(seen[rid])}; make ids unique"
                    + (" or drop the id field to have ids generated" if need_id else "")
                )
            seen[rid] = loc
            task = self._text(here, row, "task") if need_task else str(self.default_task)
            response = self._text(here, row, "response")
            if not response.strip():  # nothing to learn but the end token: a data error, not an example
                key = self.columns["response"]
                raise HarnessError(
                    f"{here} has an empty response (field '{key}' is {response!r}); drop that row, give it a "
                    f"response, or map another field with data.columns.response=<field>"
                )
            prompt = self._prompt(here, row, {"id": rid, "task": task, "response": response})
            for col, value in zip(PUBLIC_COLUMNS, (rid, task, prompt, response)):
                out[col].append(value)
        return pd.DataFrame(out, columns=list(PUBLIC_COLUMNS), dtype=object)


def empty_frame() -> pd.DataFrame:
    """A frame with the pool columns and no rows (a pool without validation examples)."""
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in PUBLIC_COLUMNS})


# ---------------------------------------------------------------------------------------------- JSONL


def _jsonl_stem(path: Path) -> str:
    name = path.name
    for suffix in (*_COMPRESSION_SUFFIXES, ".jsonl", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


_OPENERS: dict[str, Callable[..., Any]] = {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
"""How the JSONL loader opens a file, by its compression suffix (Python reads these without extra packages)."""


def _read_jsonl(path: Path, label: str, role: str, key: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for every non-blank line of a JSONL file (.gz, .bz2, .xz: decompressed)."""
    if not path.exists():
        raise HarnessError(
            f"{role} file '{label}' not found (looked at {path.resolve()}); set {key} to an existing JSONL file"
        )
    if path.is_dir():
        raise HarnessError(
            f"{role} file '{label}' is a directory; set {key} to a JSONL file "
            f"(a datasets folder or data files folder loads through the hub loader instead)"
        )
    suffix = next((x for x in _COMPRESSION_SUFFIXES if path.name.endswith(x)), "")
    if suffix not in _OPENERS:
        raise HarnessError(
            f"{role} file '{label}' is {suffix} compressed, which the JSONL loader cannot read; decompress it, or "
            f"load it through the hub loader (pip install zstandard; data=hub data.dataset={label})"
        )
    opener = _OPENERS[suffix]
    try:
        with opener(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise HarnessError(f"{label} line {lineno} is not UTF-8 text; save the file as UTF-8") from None
                if not text.strip():
                    continue
                try:
                    yield lineno, json.loads(text)
                except json.JSONDecodeError as e:
                    raise HarnessError(
                        f"{label} line {lineno} is not valid JSON ({e.msg} at column {e.colno}); "
                        f"write one JSON object per line"
                    ) from None
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise HarnessError(
            f"cannot read {role} file '{label}' ({_one_line(e)}); check the file and its permissions"
        ) from None


def _jsonl_frame(path: str | os.PathLike[str], mapping: RowMapping, role: str, key: str) -> pd.DataFrame:
    label = str(path)
    resolved = Path(path).expanduser()
    frame = mapping.frame(_read_jsonl(resolved, label, role, key), lambda n: f"{label} line {n}", _jsonl_stem(resolved))
    if frame.empty:
        raise HarnessError(
            f"{role} file '{label}' has no examples (it is empty); write one JSON object per line into it"
        )
    return frame


def load_jsonl_pool(
    path: str | os.PathLike[str],
    columns: Mapping[str, str | None] | None = None,
    template: str = DEFAULT_TEMPLATE,
    validation_path: str | os.PathLike[str] | None = None,
    default_task: str | None = "all",
    delimiter: str = " ",
    chat_template: bool = False,
    name: str | None = None,
) -> Pool:
    """Load a pool (and optional validation examples) from JSONL files, one JSON object per line."""
    mapping = RowMapping.build(columns, template, default_task)
    examples = _jsonl_frame(path, mapping, "pool", "data.path")
    validation = empty_frame()
    if validation_path is not None:
        validation = _jsonl_frame(validation_path, mapping, "validation", "data.validation_path")
    pool_name = name or _jsonl_stem(Path(path))
    return Pool(pool_name, examples, validation, delimiter=delimiter, chat_template=chat_template)


# ------------------------------------------------------------------------------------ datasets / hub


def _is_saved_dataset(path: Path) -> bool:
    """True for a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _remote_files(data_files: Any) -> list[str]:
    """The data_files entries that are URLs (and so need the network)."""
    return [f for f in data_file_list(data_files) if f.startswith(_REMOTE_PREFIXES)]


def _builder_for_file(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return _BUILDER_FOR_SUFFIX.get(Path(name).suffix)


_OFFLINE_FIX = (
    "download it once while online (later runs read the HF cache), or save it with save_to_disk and pass that folder"
)


class _Source:
    """Where a dataset's splits come from: a save_to_disk folder, or datasets.load_dataset."""

    def __init__(
        self, name: str, subset: str | None, revision: str | None, data_files: Any, cache_dir: str | None
    ) -> None:
        self.label, self.name, self.subset, self.revision = name, name, subset, revision
        self.data_files, self.cache_dir = data_files, cache_dir
        self.stem = Path(name).name
        self.cache_only = False
        self._saved: Any = None
        path = Path(name).expanduser()
        self.saved_path = path if path.is_dir() and _is_saved_dataset(path) else None
        if self.saved_path is not None:
            return
        if path.is_file():
            builder = _builder_for_file(path)
            if builder is None:
                raise HarnessError(
                    f"dataset '{name}' is a file of unknown type; pass a .jsonl, .json, .csv, .parquet, .arrow "
                    f"or .txt file (optionally compressed)"
                )
            self.name, self.data_files = builder, str(path)
        elif packaged_builder(name):
            if isinstance(data_files, (str, os.PathLike)):
                self.stem = _jsonl_stem(Path(data_files))
        elif path.is_dir():
            pass  # a folder of data files: datasets picks the builder from their type
        elif looks_like_hub_id(name):
            self._check_online()
        else:
            raise HarnessError(
                f"dataset '{name}' is neither an existing local path nor a hub id like 'owner/name'; "
                f"fix the path or the dataset name"
            )
        remote = _remote_files(self.data_files)
        if remote:
            require_online("data file", remote[0], "copy the data files to a local path and pass those as data_files")

    def _check_online(self) -> None:
        """Offline (by a variable, or a hub that does not answer, as on a cluster's compute nodes), read the HF
        datasets cache alone: go on where datasets is in offline mode or the cache holds the dataset, else fail now."""
        from datasets import config

        if not hub_offline():
            return
        kwargs = {"cache_dir": self.cache_dir} if self.cache_dir else None
        if not config.HF_HUB_OFFLINE and missing_local_data(self.name, self.subset, kwargs) is not None:
            raise offline_error("dataset", self.name, _OFFLINE_FIX)
        self.cache_only = True

    def split(self, split: str) -> Any:
        """One split as a datasets.Dataset; a saved Dataset without splits stands for every split."""
        import datasets

        if self.saved_path is not None:
            return self._saved_split(split)
        try:
            with offline_mode(self.cache_only):  # cache only: no request that could wait on an unreachable hub
                return datasets.load_dataset(
                    self.name,
                    self.subset,
                    split=split,
                    revision=self.revision,
                    data_files=self.data_files,
                    cache_dir=self.cache_dir,
                )
        except Exception as e:
            if self.cache_only and isinstance(e, ConnectionError):  # not in the HF cache either
                raise offline_error("dataset", self.name, _OFFLINE_FIX) from e
            described = _describe(e)
            fix = "check the dataset name, subset, split and data_files"
            if "gated dataset" in described:  # the job needs a token, which a batch job does not get from a login
                fix = (
                    "log in with an account that has access (hf auth login), or pass HF_TOKEN to the job's environment"
                )
            elif "Compression type zstd not supported" in described:  # datasets reads .zst only through zstandard
                fix = "pip install zstandard (datasets reads .zst files with it), or decompress the file"
            raise HarnessError(f"cannot load dataset '{self.label}' split '{split}' ({described}); {fix}") from e

    def _saved_split(self, split: str) -> Any:
        import datasets

        if self._saved is None:
            try:
                self._saved = datasets.load_from_disk(str(self.saved_path))
            except Exception as e:
                raise HarnessError(
                    f"cannot read the saved dataset in '{self.label}' ({_describe(e)}); "
                    f"write it again with save_to_disk"
                ) from e
        if isinstance(self._saved, datasets.Dataset):
            return self._saved
        if split not in self._saved:
            raise HarnessError(
                f"saved dataset '{self.label}' has no split '{split}' (it has {', '.join(map(repr, self._saved))}); "
                f"pick one of those splits"
            )
        return self._saved[split]


def _dataset_frame(source: _Source, split: str, mapping: RowMapping) -> pd.DataFrame:
    ds = source.split(split)
    where = f"dataset '{source.label}' split '{split}'"
    if len(ds) == 0:
        raise HarnessError(f"{where} has no rows; pick a split with examples")
    stem = f"{source.stem}-{split}"
    # Every row has the same columns: check the first one whole (errors then list all columns), then read
    # only the columns the mapping can use.
    mapping.frame([(0, ds[0])], lambda i: f"{where} row {i}", stem)
    keep = [c for c in ds.column_names if c in mapping.source_keys()]
    return mapping.frame(enumerate(ds.select_columns(keep)), lambda i: f"{where} row {i}", stem)


def load_hub_pool(
    name: str,
    columns: Mapping[str, str | None] | None = None,
    template: str = DEFAULT_TEMPLATE,
    split: str = "train",
    subset: str | None = None,
    revision: str | None = None,
    validation_split: str | None = None,
    data_files: Any = None,
    default_task: str | None = "all",
    delimiter: str = " ",
    chat_template: bool = False,
    cache_dir: str | None = None,
) -> Pool:
    """Load a pool from a hub dataset, a generic builder over data_files, or a save_to_disk folder."""
    mapping = RowMapping.build(columns, template, default_task)
    source = _Source(name, subset, revision, data_files, cache_dir)
    examples = _dataset_frame(source, split, mapping)
    validation = empty_frame()
    if validation_split is not None:
        validation = _dataset_frame(source, validation_split, mapping)
    pool_name = f"{name}:{subset}" if subset else name
    return Pool(pool_name, examples, validation, delimiter=delimiter, chat_template=chat_template)
