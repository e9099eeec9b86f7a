"""lm-eval tasks by name: offline checks before training, unsafe-code opt-in, the user's own tasks, no telemetry."""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import MICRO, MICRO_RECIPE, message_lines, user_lm_eval_task

from harness import hub
from harness.errors import HarnessError
from harness.evaluation import resolve_tasks
from harness.evaluation import tasks as eval_tasks
from harness.pool import Pool

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _pool(with_items: bool = False) -> Pool:
    examples = pd.DataFrame({"id": ["a"], "task": ["t"], "prompt": ["p"], "response": ["r"]})
    items = pd.DataFrame({"task": ["t"], "doc_id": [0], "prompt": ["p"], "choices": [["a", "b"]], "gold": [0]})
    return Pool(name="tiny", examples=examples, validation=examples.iloc[:0], eval_items=items if with_items else None)


def _forbidden(*args, **kwargs):
    raise AssertionError("must not be reached: the offline check decides first")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """HF caches that hold nothing, so no task's dataset is on this machine."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    return tmp_path


def _error(call, *args) -> str:
    with pytest.raises(HarnessError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_uncached_task_offline_fails_at_once_naming_the_variable_set(empty_caches, monkeypatch, caplog):
    import datasets

    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", _forbidden)  # no download attempt, no retries
    monkeypatch.setattr(eval_tasks, "task_manager", _forbidden)  # no full task index either
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = _error(resolve_tasks, {"suite": "lm_eval", "tasks": ["arc_easy"]}, _pool(), empty_caches)
    assert message.startswith("lm-eval task 'arc_easy' needs dataset 'allenai/ai2_arc' (ARC-Easy)")
    assert "HF_DATASETS_OFFLINE=1 is set" in message and "HF_HUB_OFFLINE" not in message
    assert "eval.include_path=<folder>" in message and "run once with network" in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and not caught
    # a group: the message names the member whose data is missing
    message = _error(resolve_tasks, {"suite": "lm_eval", "tasks": ["bbh"]}, _pool(with_items=True), empty_caches)
    assert message.startswith("lm-eval task 'bbh' (its task 'bbh_") and "eval=testbed" in message


def test_unreachable_hub_is_named_as_the_reason(empty_caches, monkeypatch):
    import datasets

    for var in (*OFFLINE_VARS, "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub, "_probe_results", {})
    monkeypatch.setattr(datasets, "load_dataset", _forbidden)
    monkeypatch.setattr(eval_tasks, "task_manager", _forbidden)
    message = _error(resolve_tasks, {"suite": "lm_eval", "tasks": ["hellaswag"]}, _pool(), empty_caches)
    assert f"the Hugging Face hub (127.0.0.1:{port}) did not answer" in message
    assert "is set" not in message


def test_local_data_check(empty_caches, tmp_path):
    assert hub.missing_local_data("allenai/ai2_arc", "ARC-Easy") is not None
    (tmp_path / "hf_datasets" / "allenai___ai2_arc" / "ARC-Easy" / "0.0.0" / "abc123").mkdir(parents=True)
    assert hub.missing_local_data("allenai/ai2_arc", "ARC-Easy") is None
    assert hub.missing_local_data("allenai/ai2_arc", "ARC-Challenge") is not None
    data = tmp_path / "d.jsonl"
    assert "d.jsonl" in hub.missing_local_data("json", None, {"data_files": {"test": str(data)}})
    data.write_text("{}\n")
    assert hub.missing_local_data("json", None, {"data_files": {"test": str(data)}}) is None
    assert "URL" in hub.missing_local_data("json", None, {"data_files": "https://example.org/x.jsonl"})


def test_code_executing_tasks_need_the_opt_in(empty_caches):
    message = _error(resolve_tasks, {"suite": "lm_eval", "tasks": ["humaneval"]}, _pool(), empty_caches)
    assert "'humaneval' executes code the model writes" in message
    assert "eval.confirm_run_unsafe_code=true" in message
    confirmed = {"suite": "lm_eval", "tasks": ["humaneval"], "confirm_run_unsafe_code": True}
    assert "openai/openai_humaneval" in _error(resolve_tasks, confirmed, _pool(), empty_caches)  # then: its data


def test_code_executing_task_is_refused_before_training(harness_cli, tmp_path):
    code, out, err = harness_cli([*MICRO, "eval=lm_eval", "eval.tasks=[mbpp]"])
    assert code == 2
    assert message_lines(err) == [
        "error: lm-eval task 'mbpp' executes code the model writes; to run it, set "
        "eval.confirm_run_unsafe_code=true (preferably inside a sandbox or container)"
    ]
    assert "stage 3/5" not in out + err
    runs = tmp_path / "results" / "runs"
    assert not runs.exists() or not any(runs.rglob("*"))


# ------------------------------------------------------------------------------------ the user's own tasks


def test_jsonl_pool_on_the_users_own_lm_eval_task(harness_cli, tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": f"add {a} {b} =", "response": str(a + b)} for a in range(2, 9) for b in range(3, 9)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "my_task.jsonl"
    items = [{"question": f"add {a} {a} =", "options": [str(2 * a), str(2 * a + 1)], "label": a % 2} for a in range(10)]
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    folder = tmp_path / "my_tasks"
    user_lm_eval_task(folder, data)

    code, out, err = harness_cli(
        [
            *MICRO_RECIPE,
            "data=jsonl",
            f"data.path={pool}",
            "eval=lm_eval",
            f"eval.include_path={folder}",
            "eval.tasks=[my_task]",
            "budget=0.5",
        ]
    )
    assert code == 0, err
    results = pd.concat(pd.read_csv(p) for p in (tmp_path / "results").rglob("results.csv"))
    acc = results[results["metric"] == "acc"].set_index("task")
    assert set(acc.index) == {"my_task", "macro_avg"} and acc.loc["my_task", "n_items"] == 10
    items_csv = next((tmp_path / "results").rglob("eval_items.csv"))
    assert len(pd.read_csv(items_csv)) == 10


def test_jsonl_pool_with_the_testbed_suite_points_at_include_path(harness_cli, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    code, _, err = harness_cli([*MICRO_RECIPE, "data=jsonl", f"data.path={pool}"])
    assert code == 2
    assert "has no testbed evaluation items" in err and "eval.include_path=<folder>" in err


def test_unknown_include_path_is_one_line(tmp_path):
    message = _error(
        resolve_tasks, {"suite": "lm_eval", "tasks": ["x"], "include_path": str(tmp_path / "nope")}, _pool(), tmp_path
    )
    assert "eval.include_path" in message and "is not a folder" in message


# ------------------------------------------------------------------------------------------- telemetry


def _loopback(host: object) -> bool:
    return str(host) in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "") or str(host).startswith("127.")


def test_evaluation_makes_no_network_requests_once_telemetry_is_off(tmp_path, monkeypatch):
    """Online as far as the libraries know; every connection (and name lookup) off this machine is recorded."""
    import datasets
    import datasets.config
    import huggingface_hub.constants as hub_constants
    from conftest import tiny_llama
    from test_evaluation import DELIMITER, _eval_items, _make_tokenizer

    from harness.evaluation import evaluate, testbed_task_configs

    for var in (*OFFLINE_VARS, *hub.TELEMETRY_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", False)
    attempts: list[object] = []
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(host):
            attempts.append(address)
            raise OSError("network disabled in this test")
        return real_connect(sock, address)

    def lookup(host, *args, **kwargs):
        if not _loopback(host):
            attempts.append(host)
            raise socket.gaierror("network disabled in this test")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    datasets.load.increase_load_count("json")  # the instrument works: download counting is caught
    assert attempts, "download counting should have tried the network"
    attempts.clear()

    hub.disable_telemetry()
    items = _eval_items()
    tokenizer = _make_tokenizer([p + DELIMITER + c for p, cs in zip(items["prompt"], items["choices"]) for c in cs])
    configs = testbed_task_configs(items, DELIMITER, tmp_path / "fresh")  # a fresh HF datasets cache
    outcome = evaluate(tiny_llama(tokenizer), tokenizer, configs, batch_size=8, limit=4, add_bos_token=True)
    assert len(outcome.items) == 8
    assert attempts == []


def _write_task(folder: Path, name: str, data: Path, extra: str = "") -> None:
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\nfewshot_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: question\ndoc_to_choice: options\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        f"metadata:\n  version: 1.0\n{extra}"
    )


def test_shots_per_group_task_and_global_on_users_tasks(tmp_path):
    """Per-task values win (a group's value reaches its members); the global value skips tasks pinned to 0."""
    from conftest import tiny_llama
    from test_evaluation import _make_tokenizer

    from harness.evaluation import evaluate

    data = tmp_path / "items.jsonl"
    rows = [{"question": f"add {a} {a} =", "options": [str(2 * a), str(2 * a + 1)], "label": a % 2} for a in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name in ("my_a", "my_b", "my_d"):
        _write_task(folder, name, data)
    _write_task(folder, "my_c", data, "num_fewshot: 0\n")
    (folder / "my_group.yaml").write_text(
        "group: my_group\ntask: [my_a, my_b]\naggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
    )
    tokenizer = _make_tokenizer([f"{r['question']} {o}" for r in rows for o in r["options"]] * 3)
    outcome = evaluate(
        tiny_llama(tokenizer),
        tokenizer,
        ["my_group", "my_c", "my_d"],
        batch_size=8,
        limit=3,
        num_fewshot=3,
        fewshot={"my_group": 2, "my_b": 1},
        include_path=str(folder),
        add_bos_token=True,
    )
    assert outcome.shots == {"my_a": 2, "my_b": 1, "my_c": 0, "my_d": 3}
    assert set(outcome.metrics["task"]) >= {"my_group", "my_a", "my_b", "my_c", "my_d", "macro_avg"}


def test_offline_mode_switches_the_libraries_and_restores_them(monkeypatch):
    import datasets.config
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with hub.offline_mode():
        assert datasets.config.HF_HUB_OFFLINE and hub_constants.HF_HUB_OFFLINE
    assert not datasets.config.HF_HUB_OFFLINE and not hub_constants.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ
    with hub.offline_mode(False):
        assert not datasets.config.HF_HUB_OFFLINE


def test_items_of_a_task_with_one_context_per_choice_have_its_gold(tmp_path):
    """winogrande-style tasks (doc_to_text gives the gold index, the choices are contexts, one shared continuation):
    the per-item gold is lm-eval's, not the index of the continuation among identical continuations (always 0)."""
    from conftest import tiny_llama
    from test_evaluation import _make_tokenizer

    from harness.evaluation import evaluate

    rows = [
        {"options": [f"{a} plus {a} is {2 * a}", f"{a} plus {a} is {2 * a + 1}"], "label": a % 2, "rest": " yes"}
        for a in range(8)
    ]
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "my_wino.yaml").write_text(
        f"task: my_wino\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: label\ndoc_to_choice: options\ndoc_to_target: rest\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    tokenizer = _make_tokenizer([o + r["rest"] for r in rows for o in r["options"]] * 3)
    outcome = evaluate(tiny_llama(tokenizer), tokenizer, ["my_wino"], batch_size=8, include_path=str(folder))
    items = outcome.items.set_index("doc_id").sort_index()
    assert items["gold"].tolist() == [r["label"] for r in rows]
    assert (items["n_choices"] == 2).all()
    assert (items["correct"] == (items["pred"] == items["gold"])).all()
    assert (items["acc"] == items["correct"].astype(float)).all()


def test_tasks_fingerprint_follows_the_users_task_files_and_data(tmp_path):
    """The cell identity names tasks only: editing one's own task YAML or its data must show in the fingerprint a
    record stores, or an old record would be reused for the edited task."""
    from harness.evaluation import tasks_fingerprint

    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"question": "q", "options": ["a", "b"], "label": 0}) + "\n")
    folder = tmp_path / "tasks"
    folder.mkdir()
    _write_task(folder, "my_a", data)
    first = tasks_fingerprint(["my_a"], str(folder))
    assert first == tasks_fingerprint(["my_a"], str(folder))
    data.write_text(json.dumps({"question": "q", "options": ["a", "b"], "label": 1}) + "\n")
    second = tasks_fingerprint(["my_a"], str(folder))
    _write_task(folder, "my_a", data, "num_fewshot: 0\n")
    third = tasks_fingerprint(["my_a"], str(folder))
    assert len({first, second, third}) == 3
    testbed = {"task": "testbed_add", "dataset_kwargs": {"data_files": {"test": "/cache/eval_data/abc/add.jsonl"}}}
    other = {**testbed, "target_delimiter": "\n"}
    assert tasks_fingerprint([testbed]) != tasks_fingerprint([other]) != third


def test_tasks_fingerprint_does_not_depend_on_where_the_cache_or_tasks_lie(tmp_path):
    """paths.cache is not part of a cell's identity: the same testbed items written into another cache (another
    machine, a moved cache) must give the same fingerprint, or a complete record would be refused as changed."""
    import shutil

    from harness.evaluation import resolve_tasks, tasks_fingerprint
    from harness.evaluation.settings import EvalSchema
    from harness.testbed import TestbedConfig, generate_testbed

    pool = generate_testbed(TestbedConfig(n_pool=120, n_eval_per_task=10, n_validation_per_task=4, n_facts=16))
    eval_cfg = EvalSchema()
    here = tasks_fingerprint(resolve_tasks(eval_cfg, pool, tmp_path / "cache-a"))
    there = tasks_fingerprint(resolve_tasks(eval_cfg, pool, tmp_path / "cache-b"))
    assert here == there
    other_pool = generate_testbed(TestbedConfig(n_pool=120, n_eval_per_task=11, n_validation_per_task=4, n_facts=16))
    assert tasks_fingerprint(resolve_tasks(eval_cfg, other_pool, tmp_path / "cache-a")) != here
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"question": "q", "options": ["a", "b"], "label": 0}) + "\n")
    (tmp_path / "tasks").mkdir()
    _write_task(tmp_path / "tasks", "my_a", data)
    shutil.copytree(tmp_path / "tasks", tmp_path / "moved")
    assert tasks_fingerprint(["my_a"], str(tmp_path / "tasks")) == tasks_fingerprint(["my_a"], str(tmp_path / "moved"))
