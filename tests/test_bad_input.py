"""Bad input: one clear line on stderr naming the problem and the fix, exit code 2, no results file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import MICRO, MICRO_POOL, MICRO_RECIPE, message_lines, user_lm_eval_task


def assert_one_line_error(code: int, err: str, tmp_path, *fragments: str) -> None:
    lines = message_lines(err)
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not list(tmp_path.rglob("results.csv"))
    assert not (tmp_path / "results" / "runs").exists(), "a rejected run left its folder behind"


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("budget=0", ["budget", "(0, 1]"]),
        ("budget=1.5", ["budget", "(0, 1]"]),
        ("budget=abc", ["budget", "'abc'"]),
        ("budget=0.0001", ["keeps 0 of", "budget >="]),
        ("selector=nope", ["unknown selector 'nope'", "random", "balanced_random", "full"]),
        ("model=nope", ["unknown model 'nope'", "tiny_llama"]),
        ("eval=nope", ["unknown evaluation suite 'nope'", "testbed"]),
        ("train.lr=fast", ["train", "lr"]),
        ("trian.lr=0.1", ["trian"]),
        ("train.lrr=0.1", ["train.lrr", "spelling"]),  # a typo in a typed group is not told to add the key with +
        ("data.noise_kind=loud", ["noise_kind", "'loud'", "mismatched", "near_miss"]),
        ("data.facts_validation=some", ["facts_validation", "untaught", "taught"]),
        ("data.noise_rate=2", ["noise_rate", "[0, 1]"]),
        ("model.dtype=float16", ["model.dtype=float16", "loss scaling", "model.dtype=bfloat16"]),
        # evaluation settings lm-eval refuses only after training: refused before anything is written
        ("eval.limit=0", ["eval.limit must be a positive number"]),
        ("eval.limit=-3", ["eval.limit must be a positive number"]),
        ("eval.num_fewshot=-1", ["eval.num_fewshot must be a non-negative integer"]),
        ("+eval.fewshot={addition: -2}", ["eval.fewshot.addition must be a non-negative integer"]),
        ("eval.fewshot_as_multiturn=true", ["needs the chat template", "eval.apply_chat_template=true"]),
        # a bare string would be read letter by letter ("plugin folder 'n' does not exist")
        ("plugins=my_selectors", ["plugins must be a list of folders", "plugins=[my_selectors]"]),
        ("plugins=null", ["plugins must be a list of folders"]),
        # stage seeds: a plain number was a traceback after the folder was made; an unknown stage went unused
        ("seeds=5", ["seeds must be a mapping", "seeds.order=0"]),
        ("+seeds.warmup=3", ["seeds", "warmup", "conf/config.yaml"]),
        ("seed=4294967296", ["seed must be below 2**32"]),  # trained, then numpy refused it at evaluation
    ],
)
def test_bad_overrides(harness_cli, tmp_path, override, fragments):
    code, _, err = harness_cli([*MICRO, override])
    assert_one_line_error(code, err, tmp_path, *fragments)


def test_a_bad_budget_for_full_is_told_to_leave_it_out(harness_cli, tmp_path):
    """selector=full budget=2 was told to use selector=full."""
    code, _, err = harness_cli([*MICRO, "selector=full", "budget=2"])
    assert_one_line_error(code, err, tmp_path, "got 2; leave budget out (selector=full keeps the whole pool")


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([*MICRO_POOL, "model=hf"], "model.name_or_path is required"),
        ([*MICRO_RECIPE, "data=jsonl"], "data.path=..."),
        ([*MICRO_RECIPE, "data=hub"], "data.dataset=..."),
    ],
)
def test_missing_mandatory_values(harness_cli, tmp_path, args, fragment):
    code, _, err = harness_cli(args)
    assert_one_line_error(code, err, tmp_path, fragment)


def test_unknown_lm_eval_task(harness_cli, tmp_path):
    code, _, err = harness_cli([*MICRO, "eval=lm_eval", "eval.tasks=[no_such_task_xyz]"])
    assert_one_line_error(code, err, tmp_path, "no_such_task_xyz")


def test_unknown_testbed_task(harness_cli, tmp_path):
    code, _, err = harness_cli([*MICRO, "eval.tasks=[calculus]"])
    assert_one_line_error(code, err, tmp_path, "calculus")


def test_jsonl_missing_field(harness_cli, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    code, _, err = harness_cli([*MICRO_RECIPE, "data=jsonl", f"data.path={pool}", "eval=lm_eval"])
    assert_one_line_error(code, err, tmp_path, "line 2", "response")


def test_jsonl_empty_file(harness_cli, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("")
    code, _, err = harness_cli([*MICRO_RECIPE, "data=jsonl", f"data.path={pool}", "eval=lm_eval"])
    assert_one_line_error(code, err, tmp_path, "empty")


def test_hub_dataset_while_offline_fails_fast(harness_cli, tmp_path):
    start = time.perf_counter()
    code, _, err = harness_cli([*MICRO_RECIPE, "data=hub", "data.dataset=someone/some-pool", "eval=lm_eval"])
    assert_one_line_error(code, err, tmp_path, "offline", "someone/some-pool")
    assert time.perf_counter() - start < 60


def test_hub_model_while_offline_fails_fast(harness_cli, tmp_path):
    code, _, err = harness_cli([*MICRO_POOL, "model=hf", "model.name_or_path=someone/some-model"])
    assert_one_line_error(code, err, tmp_path, "offline", "someone/some-model")


def test_rejected_run_never_removes_an_existing_record(harness_cli, tmp_path):
    cell = tmp_path / "cell"
    code, _, err = harness_cli([*MICRO, "train.epochs=1", f"hydra.run.dir={cell}"])
    assert code == 0, err
    before = sorted(p.name for p in cell.iterdir())
    code, _, err = harness_cli([*MICRO, "train.epochs=1", f"hydra.run.dir={cell}", "rerun=true", "budget=0.0001"])
    assert code == 2 and "keeps 0 of" in err
    assert sorted(p.name for p in cell.iterdir()) == before  # untouched: nothing archived, nothing removed


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (["selector=el2n", "selector.keep=weird"], ["unknown keep rule 'weird'", "drop_top"]),
        (["selector=grand", "selector.warmup_seeds=0"], ["warmup_seeds", ">= 1", "got 0"]),
        (["selector=el2n", "selector.warmup_epochs=0"], ["warmup_epochs", ">= 1"]),
        (["selector=diversity", "selector.n_clusters=100000"], ["n_clusters=100000", "more than the 300"]),
        (["selector=diversity", "selector.temperature=0"], ["temperature must be a number > 0"]),
        (["selector=el2n", "selector.warmup_schedule=later"], ["unknown warmup_schedule 'later'", "run"]),
        (["selector=el2n", "selector.warmup_base=scratch"], ["unknown warmup_base 'scratch'", "'model', 'pretrained'"]),
        (["selector=grand", "selector.base_epochs=0"], ["base_epochs must be a whole number >= 1", "got 0"]),
        (
            ["selector=bids", "selector.warmup_base=pretrained", "selector.base_examples=2.5"],
            ["base_examples must be a whole number", "2.5"],
        ),
        (["selector=diversity", "selector.cluster_score=gold"], ["unknown cluster_score 'gold'", "'selected', 'pool'"]),
        (["selector=grand", "selector.warmup_seeds=1.5"], ["warmup_seeds must be a whole number", "1.5"]),
        (["selector=diversity", "selector.n_clusters=2.5"], ["n_clusters must be a whole number", "2.5"]),
        (["selector=diversity", "selector.temperature=nan"], ["temperature must be a number > 0", "nan"]),
        (["selector=rs2", "selector.replacement=no"], ["replacement must be true or false", "'no'"]),
        (
            ["selector=influence", "selector.feature_modules=q_proj"],
            ["feature_modules must be a list", "[q_proj,v_proj]"],
        ),
        (["selector=bids", "selector.warmup_epochs=2.5"], ["warmup_epochs must be a whole number", "2.5"]),
        (
            ["selector=influence", "selector.warmup_mode=lora", "selector.lora_dropout=1.5"],
            ["lora_dropout must be a number in [0, 1)", "1.5"],
        ),
        (["selector=influence", "selector.aggregation=median"], ["unknown aggregation 'median'", "task_max"]),
        (["selector=bids", "selector.proj_dim=0"], ["proj_dim must be a positive integer"]),
        (["selector=bids", "data.n_validation_per_task=0"], ["validation examples"]),
        (
            [
                "selector=influence",
                "selector.warmup_mode=lora",
                "selector.lora_modules=[nope_proj]",
                "selector.proj_dim=8",
            ],
            ["LoRA target modules ['nope_proj']", "q_proj"],
        ),
    ],
)
def test_bad_selector_settings(harness_cli, tmp_path, overrides, fragments):
    code, _, err = harness_cli([*MICRO, *overrides])
    assert_one_line_error(code, err, tmp_path, *fragments)


def test_feature_modules_matching_nothing_fail_before_the_warm_up(harness_cli, tmp_path, monkeypatch):
    from harness.signals.service import SignalService

    def no_warmup(*args, **kwargs):
        raise AssertionError("the warm-up ran before feature_modules were checked")

    monkeypatch.setattr(SignalService, "warmup", no_warmup)
    code, _, err = harness_cli([*MICRO, "selector=influence", "selector.feature_modules=[nope_proj]"])
    assert_one_line_error(code, err, tmp_path, "feature_modules ['nope_proj'] match no parameter", "q_proj")
    # LoRA warm-up: the trained parameters are the adapters, whose names still hold their module's
    code, _, err = harness_cli(
        [
            *MICRO,
            "selector=influence",
            "selector.warmup_mode=lora",
            "selector.lora_modules=[v_proj]",
            "selector.feature_modules=[q_proj]",
        ]
    )
    assert_one_line_error(code, err, tmp_path, "feature_modules ['q_proj'] match no parameter", "v_proj")


def test_a_rejected_run_keeps_the_users_own_empty_folders(tmp_path):
    """The cleanup removes the folders the run made (inside the results root), never an empty folder above it."""
    from conftest import run_harness

    mine = tmp_path / "mine"  # the user's own (empty) folder that holds the results root
    mine.mkdir()
    code, _, err = run_harness([*MICRO, "selector=rs2", "selector.replacement=no"], mine)
    assert code == 2 and "replacement must be true or false" in err
    assert mine.is_dir() and not (mine / "results").exists()


@pytest.mark.parametrize(
    "override,fixed",
    [
        ("eval.fewshot={addition: 2}", "+eval.fewshot={addition: 2}"),
        ("eval.gen_kwargs={max_gen_toks: 8}", "+eval.gen_kwargs={max_gen_toks: 8}"),
        # one new key by its dotted name, the form the README's eval table gives (it got only the generic hint)
        ("eval.fewshot.addition=2", "+eval.fewshot.addition=2"),
        ("eval.gen_kwargs.max_gen_toks=8", "+eval.gen_kwargs.max_gen_toks=8"),
    ],
)
def test_new_keys_of_a_mapping_are_told_the_plus_form(harness_cli, tmp_path, override, fixed):
    """Per-task shots or generation settings add keys to an empty mapping: the line gives the form that works
    (it said 'check the key's spelling', and dropped Hydra's own hint)."""
    from hydra import compose, initialize_config_dir

    from harness import REPO_ROOT
    from harness.config import register_resolvers, validate

    code, _, err = harness_cli([*MICRO, override])
    assert_one_line_error(code, err, tmp_path, f"to add it, use a leading +: '{fixed}'")
    assert "spelling" not in err
    register_resolvers()
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = validate(compose("config", overrides=[fixed]))
    key, _, _ = fixed.lstrip("+").partition("=")
    assert len(cfg[key.split(".")[0]][key.split(".")[1]]) == 1


@pytest.mark.parametrize("below", ["", "/cell"])
def test_a_run_folder_that_cannot_be_made_is_one_line(harness_cli, tmp_path, below):
    """A file where the run folder (or a folder above it) would go: one line, not Hydra's traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = harness_cli([*MICRO, f"hydra.run.dir={blocker}{below}"])
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: cannot make the run folder") and str(blocker) in lines[0]


def test_an_os_error_inside_the_run_keeps_its_traceback(harness_cli, monkeypatch):
    """Only Hydra's own set-up (making the folder and its log) is the user's path; the run's I/O errors propagate."""
    import harness.pipeline as pipeline

    def disk_full(cfg, run_dir):
        raise OSError(28, "No space left on device", str(run_dir))

    monkeypatch.setattr(pipeline, "run", disk_full)
    with pytest.raises(OSError, match="No space left"):
        harness_cli([*MICRO])


@pytest.mark.parametrize("n", [300, 500, 4000, 2000])
def test_the_smallest_budget_named_keeps_an_example(n):
    """The error for a budget that keeps nothing names one that keeps at least one (it named 0.5/n, which round()
    takes to 0 when that is exact: budget=0.001 of 500)."""
    import re

    from harness.errors import HarnessError
    from harness.selection import budget_to_k

    with pytest.raises(HarnessError) as info:
        budget_to_k(0.1 / n, n)
    suggested = float(re.search(r"use budget >= ([0-9.e-]+)", str(info.value)).group(1))
    assert budget_to_k(suggested, n) >= 1


def jsonl_pool_with_a_task(tmp_path: Path) -> Path:
    """A 40-row JSONL pool and a user lm-eval task `my_task` under tmp_path/tasks; returns the pool's path."""
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(40)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "items.jsonl"
    data.write_text(json.dumps({"question": "q1", "options": ["a1", "a2"], "label": 0}) + "\n")
    user_lm_eval_task(tmp_path / "tasks", data)
    return pool


def test_a_chat_template_the_tokenizer_lacks_fails_before_training(harness_cli, tmp_path):
    """Asking for the chat template with a tokenizer that has none: one line before anything is written (it was
    lm-eval's traceback after training, or the tokenizer's while tokenizing the pool)."""

    code, _, err = harness_cli([*MICRO, "eval.apply_chat_template=true"])
    assert_one_line_error(code, err, tmp_path, "eval.apply_chat_template=true needs a tokenizer with a chat template")
    pool = jsonl_pool_with_a_task(tmp_path)
    args = [*MICRO_RECIPE, "data=jsonl", f"data.path={pool}", "data.chat_template=true", "eval=lm_eval"]
    code, _, err = harness_cli([*args, "eval.tasks=[my_task]", f"eval.include_path={tmp_path / 'tasks'}"])
    assert_one_line_error(code, err, tmp_path, "data.chat_template=true needs a tokenizer with a chat template")


def test_a_selector_key_in_a_multirun_over_selectors_says_how(harness_cli, tmp_path):
    """`-m selector=el2n,grand selector.warmup_base=model` failed with "check the key's spelling": Hydra composes a
    multirun once with the default selector (random), which has no such key. The line says what works."""
    code, _, err = harness_cli(["-m", *MICRO, "selector=el2n,grand", "selector.warmup_base=model"])
    assert_one_line_error(code, err, tmp_path, "default selector", "++selector.warmup_base=...", "one command per")
    assert "spelling" not in err


def test_a_pretrained_stand_in_needs_the_testbed(harness_cli, tmp_path):
    """warmup_base=pretrained trains the testbed's scratch model on generated examples: on another pool it is one
    line (before any record is written), not a warm-up from something else."""
    pool = jsonl_pool_with_a_task(tmp_path)
    args = [*MICRO_RECIPE, "data=jsonl", f"data.path={pool}", "eval=lm_eval", "eval.tasks=[my_task]"]
    args += [f"eval.include_path={tmp_path / 'tasks'}", "selector=el2n", "selector.warmup_base=pretrained"]
    code, _, err = harness_cli(args)
    assert_one_line_error(code, err, tmp_path, "a pool that is not the testbed", "use selector.warmup_base=model")


def test_no_tokens_to_generate_fails_before_training(harness_cli, tmp_path):
    """A generative task with max_gen_toks < 1 was a transformers traceback after training."""
    code, _, err = harness_cli([*MICRO, "eval.tasks=[addition_gen]", "+eval.gen_kwargs={max_gen_toks: -1}"])
    assert_one_line_error(code, err, tmp_path, "eval.gen_kwargs.max_gen_toks must be a positive integer, got -1")


def test_a_sweep_with_cfg_is_one_line(harness_cli, tmp_path):
    """`-m ... --cfg job` (to look at a sweep's config) was Hydra's ValueError traceback."""
    code, _, err = harness_cli(["-m", "--cfg", "job", "seed=0,1"])
    assert_one_line_error(code, err, tmp_path, "Only one of --run, --multirun", "python -m harness.sweep_lines")
