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
    check_tasks,
    evaluate,
    resolve_tasks,
    testbed_task_configs,
)
from harness.evaluation.tidy import metrics_frame
from harness.pool import Pool

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
    _memorise(model, tokenizer, texts, steps)


def _memorise(model, tokenizer, texts: list[str], steps: int) -> None:
    """Full-batch training on `<s> text</s>` for `steps` steps, then eval mode."""
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
    assert list(got.columns) == [*ITEM_COLUMNS, "acc", "acc_norm"]  # then lm-eval's per-sample metrics
    assert got["acc"].dtype == float and got["acc_norm"].dtype == float
    assert (got["acc"] == got["correct"].astype(float)).all()
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
    table = metrics_frame(results, items).set_index(["task", "metric"])
    assert table.loc[("g", "acc"), "n_items"] == 10
    assert table.loc[(MACRO, "acc"), "value"] == pytest.approx((0.8 + 0.2) / 2)
    assert table.loc[(MACRO, "acc"), "n_items"] == 15
    assert table.loc[("c", "exact_match,strict-match"), "value"] == pytest.approx(0.1)
    assert ("a", "acc_stderr") not in table.index


def test_evaluation_is_a_package_with_one_module_per_job():
    from harness import evaluation

    assert hasattr(evaluation, "__path__")
    import importlib

    for name in ("testbed_tasks", "tasks", "runner", "tidy", "settings"):
        importlib.import_module(f"harness.evaluation.{name}")
    assert evaluation.EvalOutcome.__module__ == "harness.evaluation.runner"
    assert callable(evaluation.resolve_tasks) and callable(evaluation.evaluate)


def test_shots_default_to_each_task_and_are_reported(run):
    assert run["outcome"].shots == {"testbed_add": 0, "testbed_rev": 0}


def test_metadata_is_json_safe_and_complete(run):
    meta = run["outcome"].metadata
    text = json.dumps(meta, allow_nan=False)
    assert "samples" not in meta
    for key in ("configs", "versions", "n-shot", "higher_is_better", "n-samples", "lm_eval_version", "config"):
        assert key in meta, key
    assert meta["n-shot"] == {"testbed_add": 0, "testbed_rev": 0}
    assert meta["configs"]["testbed_add"]["output_type"] == "multiple_choice"
    assert meta["higher_is_better"]["testbed_add"]["acc"] is True
    assert json.loads(text) == meta


def test_metric_columns_of_items_from_lm_eval_samples():
    """Every per-sample metric lm-eval logged becomes a float column; NaN where a task lacks it."""
    from harness.evaluation.tidy import items_frame

    results = {
        "configs": {"mc": {"output_type": "multiple_choice"}, "gen": {"output_type": "generate_until"}},
        "samples": {
            "mc": [
                {
                    "doc_id": 0,
                    "target": 1,
                    "arguments": [("p", " a"), ("p", " b")],
                    "filtered_resps": [(-2.0, False), (-1.0, True)],
                    "metrics": ["acc", "acc_norm"],
                    "acc": 1.0,
                    "acc_norm": 0.0,
                }
            ],
            "gen": [{"doc_id": 3, "filtered_resps": ["12"], "metrics": ["exact_match"], "exact_match": 1.0}],
        },
    }
    frame = items_frame(results, set()).set_index("task")
    assert list(frame.columns[-3:]) == ["acc", "acc_norm", "exact_match"]
    assert frame.loc["mc", "acc"] == 1.0 and frame.loc["mc", "acc_norm"] == 0.0
    assert math.isnan(frame.loc["mc", "exact_match"]) and math.isnan(frame.loc["gen", "acc"])
    assert frame.loc["gen", "exact_match"] == 1.0 and bool(frame.loc["gen", "correct"])
    assert frame.loc["mc", "gold"] == 1 and frame.loc["mc", "pred"] == 1


def _validation(items: pd.DataFrame) -> pd.DataFrame:
    """Validation examples (prompt, response) for the two item tasks, unlike every evaluation item."""
    rows = [("add", f"add {a} {a} =", str(2 * a)) for a in range(20, 26)]
    rows += [("rev", f"reverse {w} =", w[::-1]) for w in ("abcd", "bcde", "cdef", "defa")]
    return pd.DataFrame(rows, columns=["task", "prompt", "response"])


def test_global_and_per_task_shots_come_from_validation(tmp_path, items, model, tokenizer):
    validation = _validation(items)
    configs = testbed_task_configs(items, DELIMITER, tmp_path / "data", validation)
    assert all(c["fewshot_split"] == "validation" for c in configs)
    outcome = evaluate(
        model, tokenizer, configs, batch_size=16, limit=4, num_fewshot=2, fewshot={"rev": 1}, add_bos_token=True
    )
    assert outcome.shots == {"testbed_add": 2, "testbed_rev": 1}
    configs_run = outcome.metadata["configs"]
    assert configs_run["testbed_add"]["num_fewshot"] == 2 and configs_run["testbed_rev"]["num_fewshot"] == 1


def test_fewshot_examples_are_validation_examples(tmp_path, items, model, tokenizer):
    import lm_eval

    from harness.evaluation import runner

    validation = _validation(items)
    configs = testbed_task_configs(items, DELIMITER, tmp_path / "data", validation)
    seen: list[str] = []
    real = lm_eval.simple_evaluate

    def spy(*args, **kwargs):
        results = real(*args, **kwargs)
        seen.extend(str(a[0]) for t in results["samples"].values() for s in t for a in s["arguments"][:1])
        return results

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm_eval, "simple_evaluate", spy)
        runner.evaluate(model, tokenizer, configs, limit=3, fewshot={"add": 3}, add_bos_token=True)
    add_contexts = [c for c in seen if "add" in c]
    assert add_contexts
    eval_prompts = set(items["prompt"])
    for context in add_contexts:
        lines = [p for p in validation["prompt"] if p in context]
        assert len(lines) == 3, context
        assert sum(p in context for p in eval_prompts) == 1  # only the item itself


def _gen_items(n: int = 16) -> pd.DataFrame:
    rng = random.Random(1)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        rows.append(("addition_gen", i, f"add {a} {b} =", [str(a + b)], 0))
    return pd.DataFrame(rows, columns=["task", "doc_id", "prompt", "choices", "gold"])


def test_generative_testbed_task_runs_and_scores_exact_match(tmp_path, tokenizer):
    items = _gen_items()
    model = tiny_llama(tokenizer, layers=2, heads=4)
    texts = [p + DELIMITER + c[0] for p, c in zip(items["prompt"], items["choices"])]
    _memorise(model, tokenizer, texts, steps=150)
    configs = testbed_task_configs(items, DELIMITER, tmp_path / "data")
    assert configs[0]["output_type"] == "generate_until"
    outcome = evaluate(model, tokenizer, configs, batch_size=8, add_bos_token=True)
    em = outcome.metrics.set_index(["task", "metric"])["value"][("testbed_addition_gen", "exact_match")]
    assert em >= 0.8  # the model memorised the sums, and greedy decoding stops at its end of sequence
    assert list(outcome.items.columns) == [*ITEM_COLUMNS, "exact_match"]
    assert (outcome.items["exact_match"] == outcome.items["correct"].astype(float)).all()
    assert outcome.shots == {"testbed_addition_gen": 0}
    short = evaluate(model, tokenizer, configs, batch_size=8, add_bos_token=True, gen_kwargs={"max_gen_toks": 1})
    assert short.metadata["configs"]["testbed_addition_gen"]["generation_kwargs"]["max_gen_toks"] == 1
    assert short.metrics.set_index(["task", "metric"])["value"][("testbed_addition_gen", "exact_match")] < em


def test_generative_task_scores_answers_after_a_newline_delimiter(tmp_path):
    """With data.delimiter="\n" the model's answer starts with the delimiter: the "\n" stop sequence must not end
    it before it starts, and exact match must not count the leading delimiter against it."""
    items, delimiter = _gen_items(), "\n"
    texts = [p + delimiter + c[0] for p, c in zip(items["prompt"], items["choices"])]
    tok = _make_tokenizer(texts * 5)
    torch.manual_seed(0)
    model = tiny_llama(tok, layers=2, heads=4)
    _memorise(model, tok, texts, steps=150)
    configs = testbed_task_configs(items, delimiter, tmp_path / "data")
    outcome = evaluate(model, tok, configs, batch_size=8, add_bos_token=True)
    em = outcome.metrics.set_index(["task", "metric"])["value"][("testbed_addition_gen", "exact_match")]
    assert em >= 0.8  # was 0.0: every answer cut at its leading newline


def test_generative_task_is_not_in_the_default_average(tmp_path, items):
    examples = pd.DataFrame({"id": ["a"], "task": ["add"], "prompt": ["p"], "response": ["r"]})
    both = pd.concat([items, _gen_items(4)], ignore_index=True)
    pool = Pool(name="tiny", examples=examples, validation=examples.iloc[:0], eval_items=both)
    default = resolve_tasks({"suite": "testbed", "tasks": []}, pool, tmp_path)
    assert [c["task"] for c in default] == ["testbed_add", "testbed_rev"]
    asked = resolve_tasks({"suite": "testbed", "tasks": ["add", "addition_gen"]}, pool, tmp_path)
    assert [c["task"] for c in asked] == ["testbed_add", "testbed_addition_gen"]


def test_fewshot_keys_must_name_evaluated_tasks(tmp_path, items):
    examples = pd.DataFrame({"id": ["a"], "task": ["add"], "prompt": ["p"], "response": ["r"]})
    pool = Pool(name="tiny", examples=examples, validation=_validation(items), eval_items=items)
    assert len(resolve_tasks({"suite": "testbed", "fewshot": {"add": 2, "testbed_rev": 1}}, pool, tmp_path)) == 2
    with pytest.raises(HarnessError, match="eval.fewshot.rve names no evaluated task or group; did you mean 'rev'"):
        resolve_tasks({"suite": "testbed", "fewshot": {"rve": 1}}, pool, tmp_path)
    with pytest.raises(HarnessError, match="eval.fewshot.rev names no evaluated task"):
        resolve_tasks({"suite": "testbed", "tasks": ["add"], "fewshot": {"rev": 1}}, pool, tmp_path)


def test_fewshot_as_multiturn_needs_the_chat_template(run, model, tokenizer):
    with pytest.raises(HarnessError, match="eval.apply_chat_template=true"):
        evaluate(model, tokenizer, run["configs"], fewshot_as_multiturn=True)
    with pytest.raises(HarnessError, match="eval.num_fewshot must be a non-negative integer"):
        evaluate(model, tokenizer, run["configs"], num_fewshot=-1)


def test_evaluate_options_from_config():
    from omegaconf import OmegaConf

    from harness.evaluation import evaluate_options

    examples = pd.DataFrame({"id": ["a"], "task": ["t"], "prompt": ["p"], "response": ["r"]})
    pool = Pool(name="x", examples=examples, validation=examples.iloc[:0], chat_template=True)
    cfg = OmegaConf.create(
        {"batch_size": 8, "num_fewshot": None, "fewshot": {"mmlu": 5, "bbh": 3}, "gen_kwargs": {"max_gen_toks": 4}}
    )
    got = evaluate_options(cfg, pool)
    assert got["fewshot"] == {"mmlu": 5, "bbh": 3} and got["num_fewshot"] is None
    assert got["gen_kwargs"] == {"max_gen_toks": 4} and got["apply_chat_template"] is True  # follows the pool
    assert evaluate_options(OmegaConf.create({"apply_chat_template": False}), pool)["apply_chat_template"] is False
    assert got["confirm_run_unsafe_code"] is False


@pytest.mark.parametrize(
    ("preset", "tasks", "fewshot"),
    [
        ("testbed", [], {}),
        ("testbed_gen", ["addition_gen"], {}),
        ("lm_eval_less", ["mmlu", "bbh", "tydiqa_goldp"], {"mmlu": 5, "bbh": 3, "tydiqa_goldp": 1}),
    ],
)
def test_eval_presets_compose(preset, tasks, fewshot):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness import REPO_ROOT
    from harness.config import register_resolvers, validate

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = validate(compose(config_name="config", overrides=[f"eval={preset}"]))
    assert list(cfg.eval.tasks) == tasks and dict(cfg.eval.fewshot) == fewshot
    assert cfg.eval.num_fewshot is None and cfg.eval.confirm_run_unsafe_code is False


def _pool_of(items: pd.DataFrame, validation: pd.DataFrame | None = None, chat_template: bool = False) -> Pool:
    examples = pd.DataFrame({"id": ["a"], "task": ["add"], "prompt": ["p"], "response": ["r"]})
    validation = examples.iloc[:0] if validation is None else validation
    return Pool(name="tiny", examples=examples, validation=validation, eval_items=items, chat_template=chat_template)


@pytest.mark.parametrize(
    ("values", "fix"),
    [
        ({"num_fewshot": -1}, "eval.num_fewshot must be a non-negative integer"),
        ({"fewshot": {"add": -2}}, "eval.fewshot.add must be a non-negative integer"),
        ({"limit": 0}, "eval.limit must be a positive number"),
        ({"limit": -3}, "eval.limit must be a positive number"),
        ({"fewshot_as_multiturn": True}, "eval.apply_chat_template=true"),
        ({"gen_kwargs": {"max_new_token": 3}}, "eval.gen_kwargs.max_new_token is not a generation setting"),
        ({"gen_kwargs": {"max_gen_toks": -1}}, "eval.gen_kwargs.max_gen_toks must be a positive integer"),
        ({"gen_kwargs": {"until": 5}}, "eval.gen_kwargs.until must be a stop string"),
    ],
)
def test_bad_eval_values_fail_before_training(tmp_path, items, values, fix):
    """resolve_tasks runs before training: evaluation must not be the first to find these (it ran after training)."""
    validation = _validation(items)
    for suite in ({"suite": "testbed"}, {"suite": "lm_eval", "tasks": ["hellaswag"]}):
        with pytest.raises(HarnessError) as err:
            resolve_tasks({**suite, **values}, _pool_of(items, validation), tmp_path)
        assert fix in str(err.value) and "\n" not in str(err.value)


def test_bad_values_are_one_line_in_evaluate_too(run, model, tokenizer):
    """Were lm-eval / transformers ValueError tracebacks."""
    with pytest.raises(HarnessError, match="eval.limit must be a positive number"):
        evaluate(model, tokenizer, run["configs"], limit=0)
    with pytest.raises(HarnessError, match="did you mean 'max_new_tokens'"):
        evaluate(model, tokenizer, run["configs"], gen_kwargs={"max_new_token": 3})
    evaluate(model, tokenizer, run["configs"], limit=1, gen_kwargs={"max_new_tokens": 3, "until": ["\n"]})


def test_testbed_shots_need_enough_validation_examples(tmp_path, items):
    """Few-shot examples of a testbed task come from validation; with none, lm-eval took other evaluation items."""
    with pytest.raises(HarnessError) as err:
        resolve_tasks({"suite": "testbed", "num_fewshot": 2}, _pool_of(items), tmp_path)
    message = str(err.value)
    assert "testbed task 'add' is to be evaluated 2-shot, but the pool has no validation examples of 'add'" in message
    assert "data.n_validation_per_task" in message and "\n" not in message
    validation = _validation(items)  # 6 add, 4 rev examples
    with pytest.raises(HarnessError, match="'rev' is to be evaluated 5-shot, but the pool has only 4 validation"):
        resolve_tasks({"suite": "testbed", "fewshot": {"rev": 5}}, _pool_of(items, validation), tmp_path)
    assert len(resolve_tasks({"suite": "testbed", "num_fewshot": 4}, _pool_of(items, validation), tmp_path)) == 2
    assert len(resolve_tasks({"suite": "testbed", "fewshot": {"rev": 0}}, _pool_of(items), tmp_path)) == 2


def test_evaluate_never_takes_shots_from_evaluation_items(run, model, tokenizer):
    """Task dicts without few-shot examples (a pool without validation): shots > 0 is an error, not test items."""
    assert all("fewshot_split" not in c for c in run["configs"])
    with pytest.raises(HarnessError, match="task 'testbed_add' has no few-shot examples"):
        evaluate(model, tokenizer, run["configs"], limit=2, num_fewshot=1, add_bos_token=True)


def _contexts(configs, model, tokenizer, **kwargs) -> tuple[list[str], dict]:
    """The contexts lm-eval scored (first request of each item) and its config block."""
    import lm_eval

    from harness.evaluation import runner

    seen: list[str] = []
    config: dict = {}
    real = lm_eval.simple_evaluate

    def spy(*args, **kw):
        results = real(*args, **kw)
        seen.extend(str(s["arguments"][0][0]) for t in results["samples"].values() for s in t)
        config.update(results["config"])
        return results

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm_eval, "simple_evaluate", spy)
        runner.evaluate(model, tokenizer, configs, add_bos_token=True, **kwargs)
    return seen, config


def test_fewshot_examples_are_lm_evals_for_every_run_seed(tmp_path, items, model, tokenizer):
    """The few-shot examples are part of the evaluation set: lm-eval's sampler seed, not the run's seed."""
    import inspect

    import lm_eval

    configs = testbed_task_configs(items, DELIMITER, tmp_path / "data", _validation(items))
    first, config = _contexts(configs, model, tokenizer, limit=3, fewshot={"add": 3}, seed=0)
    second, _ = _contexts(configs, model, tokenizer, limit=3, fewshot={"add": 3}, seed=1)
    assert first == second and any(c.count("add ") == 4 for c in first)
    default = inspect.signature(lm_eval.simple_evaluate).parameters["fewshot_random_seed"].default
    assert config["fewshot_seed"] == default and config["random_seed"] == 0


def test_chat_template_without_one_is_one_line(run, model, tokenizer):
    """Was a ValueError traceback from transformers once lm-eval built its requests."""
    assert tokenizer.chat_template is None
    with pytest.raises(HarnessError) as err:
        evaluate(model, tokenizer, run["configs"], limit=2, apply_chat_template=True)
    message = str(err.value)
    assert "eval.apply_chat_template=true needs a tokenizer with a chat template" in message and "\n" not in message
    from harness.evaluation import check_chat_template  # the same check, for the run to call before training

    check_chat_template(tokenizer, False)


def test_evaluate_options_read_attribute_configs_alike():
    """An attribute-style config (the schema object) gives the same options as a mapping (chat was ignored)."""
    from dataclasses import asdict

    from harness.evaluation import EvalSchema, evaluate_options

    pool = _pool_of(_eval_items(), chat_template=True)
    schema = EvalSchema(apply_chat_template=False, num_fewshot=2, fewshot={"add": 1})
    assert evaluate_options(schema, pool) == evaluate_options(asdict(schema), pool)
    assert evaluate_options(schema, pool)["apply_chat_template"] is False


def test_items_keep_every_filter_under_the_results_metric_names():
    """A task with several filters (gsm8k's strict-match, flexible-extract): one row per item, one column per metric
    and filter, named as in the results table (the first filter's values were filed under a bare 'exact_match')."""
    from harness.evaluation.tidy import items_frame

    def sample(doc_id: int, filter_name: str, em: float) -> dict:
        return {"doc_id": doc_id, "filter": filter_name, "metrics": ["exact_match"], "exact_match": em}

    results = {
        "configs": {"gen": {"output_type": "generate_until"}},
        "samples": {"gen": [sample(0, "strict", 0.0), sample(1, "strict", 1.0), sample(0, "loose", 1.0)]},
        "results": {"gen": {"exact_match,strict": 0.5, "exact_match,loose": 1.0}},
        "n-samples": {"gen": {"effective": 2}},
    }
    results["samples"]["gen"].append(sample(1, "loose", 1.0))
    frame = items_frame(results, set())
    assert list(frame.columns) == [*ITEM_COLUMNS, "exact_match,loose", "exact_match,strict"]
    assert frame["doc_id"].tolist() == [0, 1]
    assert frame["exact_match,strict"].tolist() == [0.0, 1.0] and frame["exact_match,loose"].tolist() == [1.0, 1.0]
    assert frame["correct"].tolist() == [False, True]  # the first filter's first metric
    table = metrics_frame(results, frame)
    named = set(table.loc[table["task"] == "gen", "metric"])
    assert named == {"exact_match,strict", "exact_match,loose"} <= set(frame.columns)
