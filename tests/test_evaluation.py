"""Tests of evaluation through lm-eval: testbed task dicts, task-name checks, tidy metrics and per-item results."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_llama

from harness.errors import HarnessError
from harness.evaluation import (
    ITEM_COLUMNS,
    MACRO,
    METRIC_COLUMNS,
    _metrics,
    check_tasks,
    evaluate,
    resolve_tasks,
    testbed_task_configs,
)
from harness.pool import Pool  # noqa: E402

DELIMITER = " "
N_PER_TASK = 12


def _eval_items() -> pd.DataFrame:
    """Two small multiple-choice tasks; gold positions rotate and doc_ids are not 0..n-1."""
    rng = random.Random(0)
    rows = []
    for i in range(N_PER_TASK):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        options = [str(a + b), str(a + b + 1), str(abs(a - b))]
        gold = i % 3
        options[0], options[gold] = options[gold], options[0]
        rows.append(("add", 100 + 2 * i, f"add {a} {b} =", options, gold))
    for i in range(N_PER_TASK):
        word = "".join(rng.choice("abcdef") for _ in range(4))
        options = [word[::-1], word, "".join(sorted(word)) + "x"]
        gold = (i + 1) % 3
        options[0], options[gold] = options[gold], options[0]
        rows.append(("rev", i, f"reverse {word} =", options, gold))
    return pd.DataFrame(rows, columns=["task", "doc_id", "prompt", "choices", "gold"])


def _make_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _train_to_prefer_gold(model, tokenizer, items: pd.DataFrame, steps: int = 120) -> None:
    """A few hundred milliseconds of full-batch training on `<s> prompt gold</s>` so gold answers win."""
    texts = [p + DELIMITER + c[g] for p, c, g in zip(items["prompt"], items["choices"], items["gold"])]
    seqs = [
        [tokenizer.bos_token_id, *tokenizer.encode(t, add_special_tokens=False), tokenizer.eos_token_id] for t in texts
    ]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for k, s in enumerate(seqs):
        ids[k, : len(s)] = torch.tensor(s)
        labels[k, : len(s)] = torch.tensor(s)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def items() -> pd.DataFrame:
    return _eval_items()


@pytest.fixture(scope="module")
def tokenizer(items):
    texts = [p + DELIMITER + c for p, cs in zip(items["prompt"], items["choices"]) for c in cs]
    return _make_tokenizer(texts * 3)


@pytest.fixture(scope="module")
def model(tokenizer, items):
    model = tiny_llama(tokenizer, layers=2, heads=4)
    _train_to_prefer_gold(model, tokenizer, items)
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory, items, model, tokenizer):
    """Task dicts written from one cwd with a relative data dir, evaluated from another cwd."""
    base = tmp_path_factory.mktemp("eval")
    (base / "elsewhere").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        configs = testbed_task_configs(items, DELIMITER, Path("data"))
        mp.chdir(base / "elsewhere")
        outcome = evaluate(model, tokenizer, configs, batch_size=16, seed=0, add_bos_token=True)
    return {"base": base, "configs": configs, "outcome": outcome}


def _direct_logliks(model, tokenizer, prompt: str, choices: list[str]) -> list[float]:
    """log p(delimiter + choice | <s> prompt) by plain forward passes, split the way lm-eval splits tokens."""
    out = []
    ctx = [tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]
    for choice in choices:
        whole = [tokenizer.bos_token_id, *tokenizer.encode(prompt + DELIMITER + choice, add_special_tokens=False)]
        cont = whole[len(ctx) :]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), dim=-1)
        positions = torch.arange(len(ctx) - 1, len(whole) - 1)
        out.append(float(logp[positions, torch.tensor(cont)].sum()))
    return out


def test_task_configs_use_absolute_paths_and_the_template(run, items):
    configs, base = run["configs"], run["base"]
    assert [c["task"] for c in configs] == ["testbed_add", "testbed_rev"]
    for cfg in configs:
        path = Path(cfg["dataset_kwargs"]["data_files"]["test"])
        assert path.is_absolute() and path.is_file()
        assert path.parent == (base / "data").resolve()
        assert cfg["output_type"] == "multiple_choice"
        assert cfg["target_delimiter"] == DELIMITER
        assert cfg["test_split"] == "test" and cfg["num_fewshot"] == 0
        assert {m["metric"] for m in cfg["metric_list"]} >= {"acc", "acc_norm"}
        assert "validation_split" not in cfg and "training_split" not in cfg
        docs = [json.loads(line) for line in path.read_text().splitlines()]
        task = cfg["task"].removeprefix("testbed_")
        expected = items[items["task"] == task]
        assert [d["doc_id"] for d in docs] == expected["doc_id"].tolist()
        assert [d["choices"] for d in docs] == [list(c) for c in expected["choices"]]
        assert [d["gold"] for d in docs] == expected["gold"].tolist()


def test_metrics_frame_rows_and_values(run):
    metrics, items = run["outcome"].metrics, run["outcome"].items
    assert list(metrics.columns) == list(METRIC_COLUMNS)
    tasks = ["testbed_add", "testbed_rev"]
    assert list(dict.fromkeys(metrics["task"])) == [*tasks, MACRO]
    for task in [*tasks, MACRO]:
        assert {"acc", "acc_norm", "gold_loglik", "gold_prob"} <= set(metrics.loc[metrics["task"] == task, "metric"])
    assert not metrics.duplicated(["task", "metric"]).any()
    value = metrics.set_index(["task", "metric"])["value"]
    n = metrics.set_index(["task", "metric"])["n_items"]
    for task in tasks:
        mine = items[items["task"] == task]
        assert n[(task, "acc")] == N_PER_TASK == len(mine)
        assert value[(task, "acc")] == pytest.approx(mine["correct"].mean())
        assert value[(task, "gold_loglik")] == pytest.approx(mine["gold_loglik"].mean())
        assert math.isfinite(value[(task, "gold_loglik")]) and value[(task, "gold_loglik")] <= 0
        assert 0 < value[(task, "gold_prob")] <= 1
    for metric in ("acc", "acc_norm", "gold_loglik", "gold_prob"):
        assert value[(MACRO, metric)] == pytest.approx(np.mean([value[(t, metric)] for t in tasks]))
    assert n[(MACRO, "acc")] == 2 * N_PER_TASK


def test_items_frame(run, items):
    got = run["outcome"].items
    assert list(got.columns) == list(ITEM_COLUMNS)
    assert len(got) == len(items)
    assert got["correct"].dtype == bool and got["pred"].dtype == np.int64 and got["doc_id"].dtype == np.int64
    expected = items.assign(task="testbed_" + items["task"])
    assert sorted(zip(got["task"], got["doc_id"])) == sorted(zip(expected["task"], expected["doc_id"]))
    merged = got.merge(expected, on=["task", "doc_id"], suffixes=("", "_in"))
    assert (merged["gold"] == merged["gold_in"]).all()
    assert (merged["n_choices"] == 3).all()
    assert (merged["correct"] == (merged["pred"] == merged["gold"])).all()
    assert np.isfinite(got["gold_loglik"]).all() and (got["gold_loglik"] <= 0).all()
    assert ((got["gold_prob"] > 0) & (got["gold_prob"] <= 1)).all()


def test_model_made_to_prefer_gold_scores_high(run):
    acc = run["outcome"].metrics.set_index(["task", "metric"])["value"]
    assert acc[(MACRO, "acc")] >= 0.9


def test_per_item_numbers_match_direct_forward_passes(run, items, model, tokenizer):
    got = run["outcome"].items.set_index(["task", "doc_id"])
    for k in (0, 5, N_PER_TASK, N_PER_TASK + 7):
        row = items.iloc[k]
        lls = _direct_logliks(model, tokenizer, row["prompt"], list(row["choices"]))
        mine = got.loc[("testbed_" + row["task"], row["doc_id"])]
        assert mine["gold_loglik"] == pytest.approx(lls[row["gold"]], abs=1e-4)
        assert mine["pred"] == int(np.argmax(lls))
        assert bool(mine["correct"]) == (int(np.argmax(lls)) == row["gold"])


def test_limit_and_caller_rng_untouched(run, model, tokenizer):
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    outcome = evaluate(model, tokenizer, run["configs"], batch_size=4, limit=3, add_bos_token=True)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    n = outcome.metrics.set_index(["task", "metric"])["n_items"]
    assert n[("testbed_add", "acc")] == 3 and n[(MACRO, "acc")] == 6
    assert len(outcome.items) == 6
    full = run["outcome"].items.set_index(["task", "doc_id"])["gold_loglik"]
    part = outcome.items.set_index(["task", "doc_id"])["gold_loglik"]
    assert np.allclose(part.to_numpy(), full.loc[part.index].to_numpy(), atol=1e-4)


def test_check_tasks():
    check_tasks(["hellaswag", "arc_easy"])
    with pytest.raises(HarnessError) as err:
        check_tasks(["definitely_not_a_task"])
    message = str(err.value)
    assert "\n" not in message
    assert "unknown lm-eval task 'definitely_not_a_task'" in message and "lm_eval --tasks list" in message
    with pytest.raises(HarnessError, match="did you mean 'hellaswag'"):
        check_tasks(["hellaswg"])


def test_evaluate_rejects_unknown_task_names_before_running(model, tokenizer):
    with pytest.raises(HarnessError, match="unknown lm-eval task 'no_such_task'"):
        evaluate(model, tokenizer, ["no_such_task"])


def test_resolve_tasks(tmp_path, items):
    examples = pd.DataFrame({"id": ["a"], "task": ["add"], "prompt": ["p"], "response": ["r"]})
    pool = Pool(name="tiny", examples=examples, validation=examples.iloc[:0], eval_items=items)
    configs = resolve_tasks({"suite": "testbed", "tasks": ["rev"]}, pool, tmp_path)
    assert [c["task"] for c in configs] == ["testbed_rev"]
    assert Path(configs[0]["dataset_kwargs"]["data_files"]["test"]).is_relative_to(tmp_path)
    assert len(resolve_tasks({"suite": "testbed", "tasks": []}, pool, tmp_path)) == 2
    with pytest.raises(HarnessError, match="unknown testbed task 'nope'"):
        resolve_tasks({"suite": "testbed", "tasks": ["nope"]}, pool, tmp_path)
    with pytest.raises(HarnessError, match="eval.tasks is empty"):
        resolve_tasks({"suite": "lm_eval", "tasks": []}, pool, tmp_path)


def test_metrics_with_groups_average_the_top_level():
    """A group lm-eval aggregates counts once in the macro average; its members still get rows."""
    results = {
        "results": {
            "a": {"alias": "a", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "b": {"alias": "b", "acc,none": 1.0},
            "g": {"alias": "g", "acc,none": 0.8, "sample_count": {"acc,none": 10}},
            "c": {"alias": "c", "acc,none": 0.2, "exact_match,strict-match": 0.1},
        },
        "group_subtasks": {"g": ["a", "b"]},
        "n-samples": {t: {"original": 5, "effective": 5} for t in "abc"},
    }
    items = pd.DataFrame(columns=list(ITEM_COLUMNS))
    table = _metrics(results, items).set_index(["task", "metric"])
    assert table.loc[("g", "acc"), "n_items"] == 10
    assert table.loc[(MACRO, "acc"), "value"] == pytest.approx((0.8 + 0.2) / 2)
    assert table.loc[(MACRO, "acc"), "n_items"] == 15
    assert table.loc[("c", "exact_match,strict-match"), "value"] == pytest.approx(0.1)
    assert ("a", "acc_stderr") not in table.index


def test_resolve_lm_eval_tasks_offline_fails_before_training(tmp_path, items, monkeypatch):
    """Offline, a standard task whose dataset is not in the local cache is a one-line error up front."""
    from harness import evaluation

    class FakeTaskManager:
        all_tasks = ["arc_easy", "hellaswag"]

        def load(self, names):
            raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(evaluation, "_task_manager", FakeTaskManager)
    monkeypatch.setattr(evaluation, "hub_offline", lambda: True)
    examples = pd.DataFrame({"id": ["a"], "task": ["add"], "prompt": ["p"], "response": ["r"]})
    pool = Pool(name="tiny", examples=examples, validation=examples.iloc[:0], eval_items=items)
    with pytest.raises(HarnessError, match="cannot load the data of lm-eval tasks arc_easy") as err:
        resolve_tasks({"suite": "lm_eval", "tasks": ["arc_easy"]}, pool, tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(HarnessError, match="unknown lm-eval task 'arc_eazy'; did you mean 'arc_easy'"):
        resolve_tasks({"suite": "lm_eval", "tasks": ["arc_eazy"]}, pool, tmp_path)
