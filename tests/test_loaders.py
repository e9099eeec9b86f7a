"""Pools from JSONL files and datasets datasets: mapping, templates, one-line errors, and no hangs offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from harness import hub
from harness.errors import HarnessError
from harness.loaders import load_hub_pool, load_jsonl_pool
from harness.pool import PUBLIC_COLUMNS

OFFLINE_VARS = hub.OFFLINE_ENV_VARS
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 + 2", "output": 4, "category": "math"},
    {"instruction": "Reverse the word.", "input": "abc", "output": "cba", "category": "strings"},
    {"instruction": "Is it even?", "input": "7", "output": False, "category": "math"},
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OFFLINE_VARS:
        monkeypatch.setenv(var, "1")


def write_jsonl(path: Path, rows: list[dict] | list[str]) -> Path:
    """Write rows (objects, or raw lines as strings) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def error_of(call, *args, **kwargs) -> str:
    """The HarnessError message of a call, checked to be a single line."""
    with pytest.raises(HarnessError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# ---------------------------------------------------------------------------------------------- JSONL


def test_jsonl_mapping_and_template(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    pool = load_jsonl_pool(
        path, {"response": "output", "task": "category"}, "{instruction}\n\n{input}", delimiter="\n", name="alp"
    )
    ex = pool.examples
    assert list(ex.columns) == list(PUBLIC_COLUMNS) and pool.n == 3 and pool.name == "alp"
    assert ex.loc[0, "prompt"] == "Add the numbers.\n\n2 + 2"
    assert list(ex["response"]) == ["4", "cba", "False"]  # non-strings coerced to text
    assert list(ex["task"]) == ["math", "strings", "math"] and pool.tasks == ["math", "strings"]
    assert pool.delimiter == "\n" and all(isinstance(v, str) for v in ex.to_numpy().ravel())
    assert list(pool.validation.columns) == list(PUBLIC_COLUMNS) and pool.validation.empty


def test_template_reads_mapped_and_raw_names(tmp_path: Path) -> None:
    rows = [{"uid": 7, "question": "2+3?", "src": "gsm", "answer": "5", "choices": ["4", "5"]}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    columns = {"id": "uid", "prompt": "question", "response": "answer", "task": None}
    pool = load_jsonl_pool(path, columns, "[{src}] Q: {prompt} A or B: {choices[0]}/{choices[1]} ({task})")
    row = pool.examples.iloc[0]
    assert row["id"] == "7" and row["task"] == "all"
    assert row["prompt"] == "[gsm] Q: 2+3? A or B: 4/5 (all)"


def test_default_template_and_columns(tmp_path: Path) -> None:
    rows = [{"id": "a", "task": "t1", "prompt": "p", "response": "r", "extra": 1}]
    pool = load_jsonl_pool(write_jsonl(tmp_path / "plain.jsonl", rows))
    assert pool.examples.to_dict("records") == [{"id": "a", "task": "t1", "prompt": "p", "response": "r"}]
    assert pool.name == "plain"


def test_ids_generated_when_absent(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    path = write_jsonl(tmp_path / "pool.jsonl", ["", *map(json.dumps, rows[:2]), "   ", json.dumps(rows[2])])
    first, second = load_jsonl_pool(path), load_jsonl_pool(path)
    assert list(first.examples["id"]) == ["pool-000000", "pool-000001", "pool-000002"]
    assert list(first.examples["task"]) == ["all"] * 3
    assert first.fingerprint() == second.fingerprint()
    assert list(load_jsonl_pool(path, default_task="chat").examples["task"]) == ["chat"] * 3


def test_fingerprint_follows_what_is_trained_on(tmp_path: Path) -> None:
    """Any change to the text, tasks, ids, order, validation, delimiter or chat template changes the fingerprint;
    fields the mapping does not read, the pool's name and the file's folder do not."""
    rows = [{"id": f"e{i}", "task": "t", "prompt": f"p{i}", "response": f"r{i}", "note": i} for i in range(3)]
    val = write_jsonl(tmp_path / "val.jsonl", [{"task": "t", "prompt": "v", "response": "w"}])

    def print_of(rows: list[dict], folder: str = "a", **kwargs) -> str:
        (tmp_path / folder).mkdir(exist_ok=True)
        return load_jsonl_pool(write_jsonl(tmp_path / folder / "pool.jsonl", rows), **kwargs).fingerprint()

    base = print_of(rows)
    assert print_of([{**r, "note": -1} for r in rows], "b", name="other") == base
    changed = [
        print_of([{**rows[0], "response": "x"}, *rows[1:]]),
        print_of([{**rows[0], "prompt": "x"}, *rows[1:]]),
        print_of([{**rows[0], "task": "u"}, *rows[1:]]),
        print_of([{**rows[0], "id": "x"}, *rows[1:]]),
        print_of(rows[::-1]),
        print_of(rows, template="Q: {prompt}"),
        print_of(rows, validation_path=val),
        print_of(rows, delimiter="\n"),
        print_of(rows, chat_template=True),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_missing_field_names_line_and_fix(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}, {"prompt": "e"}]
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    message = error_of(load_jsonl_pool, path)
    assert "pool.jsonl line 3 has no field 'response'" in message
    assert "add it or map another field with data.columns.response=<field>" in message


def test_missing_mapped_and_template_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "alpaca.jsonl", [*ALPACA, {"instruction": "x", "output": "y"}])
    message = error_of(load_jsonl_pool, path, {"response": "answer"}, "{instruction}")
    assert "line 1 has no field 'answer' named by data.columns.response" in message and "'output'" in message
    message = error_of(load_jsonl_pool, path, {"response": "output"}, "{instruction}: {input}")
    assert "line 4 has no field 'input' used by data.template" in message and "change data.template" in message
    message = error_of(load_jsonl_pool, path, {"response": "output"})
    assert "line 1 has no field 'prompt'" in message and "data.template" in message


def test_task_needed_without_default(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "a", "response": "b"}])
    message = error_of(load_jsonl_pool, path, default_task=None)
    assert "line 1 has no field 'task'" in message and "data.default_task" in message


def test_task_in_first_row_is_needed_in_every_row(tmp_path: Path) -> None:
    rows = [{"task": "t", "prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    assert "line 2 has no field 'task'" in error_of(load_jsonl_pool, write_jsonl(tmp_path / "p.jsonl", rows))


def test_null_and_structured_values(tmp_path: Path) -> None:
    null = write_jsonl(tmp_path / "null.jsonl", [{"prompt": "a", "response": None}])
    assert "line 1 has field 'response' set to null" in error_of(load_jsonl_pool, null)
    listed = write_jsonl(tmp_path / "list.jsonl", [{"prompt": "a", "response": ["b", "c"]}])
    assert "line 1 field 'response' is a list, not text" in error_of(load_jsonl_pool, listed)
    nested = write_jsonl(tmp_path / "obj.jsonl", [{"prompt": {"text": "a"}, "response": "b"}])
    assert "line 1 field 'prompt' is an object, not text" in error_of(load_jsonl_pool, nested)
    ok = load_jsonl_pool(nested, template="{prompt[text]}!")
    assert ok.examples.loc[0, "prompt"] == "a!"


def test_empty_response(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}, {"prompt": "e", "response": " \n"}]
    message = error_of(load_jsonl_pool, write_jsonl(tmp_path / "pool.jsonl", rows))
    assert "pool.jsonl line 2 has an empty response (field 'response' is '')" in message
    assert "drop that row, give it a response" in message
    renamed = [{"q": r["prompt"], "a": r["response"]} for r in (rows[0], rows[2])]
    message = error_of(load_jsonl_pool, write_jsonl(tmp_path / "ws.jsonl", renamed), {"prompt": "q", "response": "a"})
    assert "ws.jsonl line 2 has an empty response (field 'a' is ' \\n')" in message


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "pool file" in (message := error_of(load_jsonl_pool, empty)) and "has no examples" in message
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n")
    assert "has no examples" in error_of(load_jsonl_pool, blank)


def test_compressed_jsonl(tmp_path: Path) -> None:
    import bz2
    import gzip
    import lzma

    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    for suffix, compress in ((".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)):
        path = tmp_path / f"pool.jsonl{suffix}"
        path.write_bytes(compress(text))
        pool = load_jsonl_pool(path)
        assert pool.examples[["prompt", "response"]].to_dict("records") == rows and pool.name == "pool"
        path.write_bytes(compress(text)[:-8])  # cut short
        assert f"cannot read pool file '{path}'" in error_of(load_jsonl_pool, path)
    zst = tmp_path / "pool.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + text)
    message = error_of(load_jsonl_pool, zst)
    assert "is .zst compressed, which the JSONL loader cannot read; decompress it" in message
    assert "pip install zstandard" in message  # the hub route it offers reads .zst only with zstandard


def test_a_zst_file_through_the_hub_loader_names_zstandard(tmp_path: Path) -> None:
    """datasets reads .zst only with the zstandard package; without it the line says to install it (it said to
    check the dataset name)."""
    pytest.importorskip("datasets")
    try:
        import zstandard  # noqa: F401

        pytest.skip("zstandard is installed: datasets reads the file")
    except ImportError:
        pass
    zst = tmp_path / "pool.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b'{"prompt": "a", "response": "b"}\n')
    message = error_of(load_hub_pool, str(zst), {}, cache_dir=str(tmp_path / "cache"))
    assert "pip install zstandard" in message, message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    message = error_of(load_jsonl_pool, tmp_path / "nope.jsonl")
    assert "nope.jsonl' not found" in message and "data.path" in message
    assert "is a directory" in error_of(load_jsonl_pool, tmp_path)


def test_bad_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pool.jsonl", ['{"prompt": "a", "response": "b"}', '{"prompt": "c",', "{}"])
    message = error_of(load_jsonl_pool, path)
    assert "pool.jsonl line 2 is not valid JSON" in message and "one JSON object per line" in message
    arrays = write_jsonl(tmp_path / "arrays.jsonl", ["[1, 2]"])
    assert "arrays.jsonl line 1 is a list, not an object" in error_of(load_jsonl_pool, arrays)


def test_duplicate_ids(tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "p", "response": "r"}, {"id": "b", "prompt": "p", "response": "r"}] * 2
    message = error_of(load_jsonl_pool, write_jsonl(tmp_path / "pool.jsonl", rows))
    assert "pool.jsonl line 3 repeats id 'a' of" in message and "line 1" in message and "unique" in message


def test_bad_mapping_and_template(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "a", "response": "b"}])
    assert "unknown pool field 'answer'" in error_of(load_jsonl_pool, path, {"answer": "x"})
    assert "not a valid format string" in error_of(load_jsonl_pool, path, None, "{prompt")
    assert "positional field" in error_of(load_jsonl_pool, path, None, "{} {prompt}")


def test_validation_jsonl(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", ALPACA)
    rows = [{"instruction": "Sum.", "input": "1 + 1", "output": 2, "category": "math"}]
    val = write_jsonl(tmp_path / "val.jsonl", rows)
    columns = {"response": "output", "task": "category"}
    pool = load_jsonl_pool(train, columns, "{instruction} {input}", validation_path=val)
    assert pool.validation.to_dict("records") == [
        {"id": "val-000000", "task": "math", "prompt": "Sum. 1 + 1", "response": "2"}
    ]
    assert set(pool.view().validation_by_task()) == {"math"}
    missing = error_of(load_jsonl_pool, train, columns, "{instruction}", validation_path=tmp_path / "nope.jsonl")
    assert "validation file" in missing and "data.validation_path" in missing
    no_task = write_jsonl(tmp_path / "val2.jsonl", [{"instruction": "x", "output": "y"}])
    message = error_of(load_jsonl_pool, train, columns, "{instruction}", validation_path=no_task)
    assert "val2.jsonl line 1 has no field 'category' named by data.columns.task" in message


# ------------------------------------------------------------------------------------ datasets / hub


def test_hub_pool_from_saved_dataset(tmp_path: Path) -> None:
    import datasets

    rows = {key: [r[key] for r in ALPACA] for key in ("instruction", "input", "category")}
    rows["output"] = [str(r["output"]) for r in ALPACA]
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    pool = load_hub_pool(str(tmp_path / "single"), {"response": "output", "task": "category"}, "{instruction} {input}")
    assert pool.n == 3 and pool.examples.loc[1, "prompt"] == "Reverse the word. abc"
    assert list(pool.examples["id"]) == ["single-train-000000", "single-train-000001", "single-train-000002"]


def test_hub_pool_from_saved_dataset_dict(tmp_path: Path) -> None:
    import datasets

    train = datasets.Dataset.from_dict({"q": ["a", "b"], "a": ["1", "2"], "skill": ["x", "y"]})
    val = datasets.Dataset.from_dict({"q": ["c"], "a": ["3"], "skill": ["y"]})
    datasets.DatasetDict({"train": train, "dev": val}).save_to_disk(str(tmp_path / "dd"))
    columns = {"prompt": "q", "response": "a", "task": "skill"}
    pool = load_hub_pool(str(tmp_path / "dd"), columns, validation_split="dev")
    assert list(pool.examples["prompt"]) == ["a", "b"] and pool.tasks == ["x", "y"]
    assert pool.validation.to_dict("records") == [{"id": "dd-dev-000000", "task": "y", "prompt": "c", "response": "3"}]
    message = error_of(load_hub_pool, str(tmp_path / "dd"), columns, split="test")
    assert "has no split 'test'" in message and "'train', 'dev'" in message
    message = error_of(load_hub_pool, str(tmp_path / "dd"), {"prompt": "q", "response": "answer"})
    assert "split 'train' row 0 has no field 'answer' named by data.columns.response" in message
    assert "'q', 'a', 'skill'" in message


def test_hub_pool_through_json_builder(tmp_path: Path) -> None:
    rows = [{"id": f"e{i}", "text": f"t{i}", "label": f"l{i}", "task": "k"} for i in range(4)]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    cache = str(tmp_path / "cache")
    columns = {"prompt": "text", "response": "label"}
    pool = load_hub_pool("json", columns, "Text: {prompt}", data_files=str(path), cache_dir=cache)
    assert list(pool.examples["id"]) == ["e0", "e1", "e2", "e3"] and pool.examples.loc[2, "prompt"] == "Text: t2"
    split_files = {"train": str(path), "validation": str(path)}
    both = load_hub_pool("json", columns, data_files=split_files, validation_split="validation", cache_dir=cache)
    assert both.validation["id"].tolist() == ["e0", "e1", "e2", "e3"]
    by_path = load_hub_pool(str(path), columns, cache_dir=cache)  # a local data file names its builder itself
    assert by_path.fingerprint() == load_hub_pool("json", columns, data_files=str(path), cache_dir=cache).fingerprint()
    message = error_of(load_hub_pool, "json", columns, data_files=str(tmp_path / "gone.jsonl"), cache_dir=cache)
    assert "cannot load dataset 'json' split 'train'" in message and "gone.jsonl" in message


def test_hub_id_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    for datasets_offline in (True, False):  # datasets' own offline flag: cache lookup only / not even that
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets_offline)
        message = error_of(load_hub_pool, "someone/some-dataset")
        assert message.startswith(
            "dataset 'someone/some-dataset' is not a local path and the Hugging Face hub is offline "
            "(HF_HUB_OFFLINE=1 / no network); "
        )


def test_hub_id_offline_never_calls_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def forbidden(*args, **kwargs):
        raise AssertionError("load_dataset must not be reached offline")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", forbidden)
    assert "hub is offline" in error_of(load_hub_pool, "someone/some-dataset")


def cache_as_hub_dataset(tmp_path: Path, repo: str, rows: list[dict]) -> str:
    """A datasets cache holding `repo` as a download of it leaves it (prepared Arrow files): its folder."""
    import datasets

    cache = tmp_path / "hf_datasets"
    built = tmp_path / "built"
    datasets.load_dataset("json", data_files=str(write_jsonl(tmp_path / "src.jsonl", rows)), cache_dir=str(built))
    prepared = next(p for p in (built / "json").glob("*/*/*") if p.is_dir())
    owner, name = repo.split("/")
    target = cache / f"{owner}___{name}" / "default" / "0.0.0" / prepared.name
    target.mkdir(parents=True)
    for f in prepared.iterdir():
        (target / f.name.replace("json-", f"{name}-")).write_bytes(f.read_bytes())
    return str(cache)


def test_cached_hub_dataset_loads_where_the_hub_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_offline_env: None
) -> None:
    """A compute node without network and without HF_HUB_OFFLINE: the dataset downloaded earlier is read from the
    cache, with the libraries in offline mode while it loads; one that was never downloaded is a one-line error."""
    import datasets

    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    cache = cache_as_hub_dataset(tmp_path, "someone/tiny", rows)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(hub, "_probe_results", {})
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    load = datasets.load_dataset
    modes = []

    def recording(*args, **kwargs):
        modes.append(datasets.config.HF_HUB_OFFLINE)
        return load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording)
    pool = load_hub_pool("someone/tiny", cache_dir=cache)
    assert pool.examples[["prompt", "response"]].to_dict("records") == rows and modes == [True]
    assert datasets.config.HF_HUB_OFFLINE is False  # restored
    message = error_of(load_hub_pool, "someone/other", cache_dir=cache)
    assert "dataset 'someone/other' is not a local path and the Hugging Face hub is offline" in message
    assert modes == [True]  # never tried


def test_gated_hub_dataset_names_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def gated(path, *args, **kwargs):
        raise DatasetNotFoundError(f"Dataset '{path}' is a gated dataset on the Hub. You must be authenticated.")

    monkeypatch.setattr("harness.loaders.hub_offline", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", gated)
    message = error_of(load_hub_pool, "org/gated")
    assert (
        "cannot load dataset 'org/gated' split 'train' (DatasetNotFoundError: Dataset 'org/gated' is a gated" in message
    )
    assert message.endswith(
        "log in with an account that has access (hf auth login), or pass HF_TOKEN to the job's environment"
    )


def test_not_a_path_nor_hub_id(tmp_path: Path) -> None:
    message = error_of(load_hub_pool, str(tmp_path / "missing" / "folder"))
    assert "neither an existing local path nor a hub id" in message


def test_require_online_message(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_of(hub.require_online, "model", "org/model", "pass a local checkpoint folder")
    assert message == (
        "model 'org/model' is not a local path and the Hugging Face hub is offline "
        "(HF_HUB_OFFLINE=1 / no network); pass a local checkpoint folder"
    )


# ------------------------------------------------------------------------------------------------ hub


@pytest.mark.parametrize("var", OFFLINE_VARS)
@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_hub_offline_respects_env(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    for other in OFFLINE_VARS:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setattr(hub, "_reachable", lambda *a, **k: pytest.fail("no probe when an offline variable is set"))
    monkeypatch.setenv(var, value)
    assert hub.hub_offline() and hub.offline_by_env()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*OFFLINE_VARS, *PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(OFFLINE_VARS[0], "0")  # falsy values do not mean offline


def test_hub_offline_probe_reachable(monkeypatch: pytest.MonkeyPatch, no_offline_env: None) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert not hub.offline_by_env() and hub.hub_offline() is False


def test_hub_offline_probe_unreachable_is_cached(monkeypatch: pytest.MonkeyPatch, no_offline_env: None) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert hub.hub_offline() is True
    monkeypatch.setattr(hub, "_reachable", lambda *a, **k: pytest.fail("the probe result is cached per process"))
    assert hub.hub_offline() is True


def test_data_files_in_any_form(tmp_path: Path) -> None:
    """One reading of datasets' data_files (a path, a list, a mapping such as a Hydra config) for both checks."""
    from omegaconf import OmegaConf

    local = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    for files in (str(local), [str(local)], {"test": str(local)}, OmegaConf.create({"test": [str(local)]})):
        assert hub.data_file_list(files) == [str(local)]
        assert hub.missing_local_data("json", None, {"data_files": files}) is None
    remote = OmegaConf.create({"train": [str(local), "https://example.org/x.jsonl"]})
    assert "URL" in hub.missing_local_data("json", None, {"data_files": remote})
    assert "data file 'https://example.org/x.jsonl'" in error_of(load_hub_pool, "json", data_files=remote)
    assert hub.packaged_builder("json") and hub.packaged_builder("xml") and not hub.packaged_builder("org/json")


def test_looks_like_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("someone/some-dataset", "EleutherAI/pythia-1.4b", "gpt2", "tatsu-lab/alpaca"):
        assert hub.looks_like_hub_id(name), name
    for name in ("", "./data", "/abs/path", "a/b/c", "pool.jsonl", "org/-bad", "org/na..me", "~/x", "a b"):
        assert not hub.looks_like_hub_id(name), name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local").mkdir(parents=True)
    assert not hub.looks_like_hub_id("org/local")  # an existing folder is a path


# ------------------------------------------------------------------------ validation from lm-eval tasks


def task_folder(tmp_path: Path) -> Path:
    """Two local lm-eval tasks scored on their test split, with 5 and 2 validation docs, and a group of both."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    mc = [{"q": f"Pick {i}:", "options": [f"a{i}", f"b{i}"], "label": i % 2} for i in range(8)]
    gen = [{"q": f"Say {i}:", "answer": [f"s{i}", f"t{i}"]} for i in range(5)]
    files = {
        "mc": (write_jsonl(tmp_path / "mc_test.jsonl", mc[:3]), write_jsonl(tmp_path / "mc_val.jsonl", mc[3:])),
        "gen": (write_jsonl(tmp_path / "gen_test.jsonl", gen[:3]), write_jsonl(tmp_path / "gen_val.jsonl", gen[3:])),
    }
    for kind, body in (
        ("mc", "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: options\ndoc_to_target: label\n"),
        ("gen", "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: answer\n"),
    ):
        test, val = files[kind]
        (folder / f"vt_{kind}.yaml").write_text(
            f"task: vt_{kind}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {test}\n"
            f"    validation: {val}\ntest_split: test\nvalidation_split: validation\n{body}"
            "metric_list:\n  - metric: exact_match\nmetadata:\n  version: 1.0\n"
        )
    (folder / "vt_group.yaml").write_text("group: vt_group\ntask:\n  - vt_mc\n  - vt_gen\n")
    return folder


@pytest.fixture
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.mark.parametrize("count", [0, -2, 1.5, True, "5"])
def test_validation_count_must_be_a_positive_whole_number(tmp_path: Path, count: object) -> None:
    from harness.validation import from_lm_eval

    message = error_of(from_lm_eval, {"vt_mc": count}, task_folder(tmp_path))
    assert f"data.validation_tasks.vt_mc must be a whole number of examples >= 1, got {count!r}" in message
    assert "'+data.validation_tasks={vt_mc: 50}'" in message  # the form Hydra takes for a key the config lacks


def test_validation_from_a_group_fills_its_count_and_reads_the_cache_only_where_the_hub_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datasets_cache: None, no_offline_env: None
) -> None:
    """6 from a group whose members have 5 and 2 docs: 4 and 2 (the short member's share goes to the other)."""
    import datasets
    import lm_eval.tasks

    from harness.validation import from_lm_eval

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(hub, "_probe_results", {})
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    build, modes = lm_eval.tasks.get_task_dict, []

    def recording(*args, **kwargs):
        modes.append(datasets.config.HF_HUB_OFFLINE)
        return build(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "get_task_dict", recording)
    folder = task_folder(tmp_path)
    frame = from_lm_eval({"vt_group": 6, "vt_mc": 2}, folder, seed=3)
    assert modes == [True, True] and datasets.config.HF_HUB_OFFLINE is False
    group = frame[frame["task"] == "vt_group"]
    assert len(group) == 6 and len(frame) == 8 and frame["id"].is_unique
    assert group["prompt"].str.startswith("Pick").sum() == 4 and set(
        group.loc[group["prompt"].str.startswith("Say"), "response"]
    ) == {"s3", "s4"}
    answers = {f"Pick {i}:": f"{'ab'[i % 2]}{i}" for i in range(3, 8)}  # multiple choice: the gold choice's text
    assert all(answers[p] == r for p, r in zip(frame["prompt"], frame["response"]) if p in answers)
    assert frame.equals(from_lm_eval({"vt_group": 6, "vt_mc": 2}, folder, seed=3))


class _Config:
    test_split, validation_split, fewshot_split, training_split = "test", None, None, "train"


class _PythonTask:
    """A task written in Python whose docs come as a one-pass iterator and whose targets are lists."""

    config = _Config()
    OUTPUT_TYPE = "multiple_choice"

    def training_docs(self):
        return map(dict, [{"q": "x", "gold": [1, 0]}, {"q": "y", "gold": [0]}])

    def doc_to_text(self, doc):
        return doc["q"]

    def doc_to_target(self, doc):
        return doc["gold"]

    def doc_to_choice(self, doc):
        return ["no", "yes"]


def test_validation_docs_from_an_iterator_and_list_targets() -> None:
    from harness.validation import _docs, _example

    task = _PythonTask()
    docs = _docs(task)
    assert [d["q"] for d in docs] == ["x", "y"]
    assert [_example(task, d) for d in docs] == [("x", "yes"), ("y", "no")]


def test_unknown_validation_task_names_the_fix(tmp_path: Path) -> None:
    from harness.validation import from_lm_eval

    message = error_of(from_lm_eval, {"vt_mcc": 3}, task_folder(tmp_path))
    assert message.startswith("data.validation_tasks: unknown lm-eval task 'vt_mcc'; did you mean 'vt_mc'")
