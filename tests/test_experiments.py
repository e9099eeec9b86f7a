"""The papers' setups as presets (conf/experiment/), a plan before compute, and a run of each preset on tiny
local stand-ins through the same code paths (no network, no GPU)."""

from __future__ import annotations

import json

import pytest
from conftest import message_lines, record_path, tiny_llama
from omegaconf import OmegaConf

from harness import plan
from harness.evaluation.tasks import check_tasks
from harness.modeling import pool_corpus, train_tokenizer
from harness.testbed import TestbedConfig, generate_testbed

PRESETS = ("bids_llama3_8b", "less_llama2_7b", "small_gpu")


@pytest.fixture(scope="module")
def testbed():
    return generate_testbed(TestbedConfig(n_pool=240, n_validation_per_task=6, n_eval_per_task=6, n_facts=24))


@pytest.fixture(scope="module")
def local_model(tmp_path_factory, testbed):
    """A tiny Llama with the real model's module names (q/k/v/o_proj), saved to a folder and loaded by path."""
    path = tmp_path_factory.mktemp("tiny-llama")
    texts = pool_corpus(testbed, validation=False)
    tok = train_tokenizer(texts + ["<|user|> <|assistant|>"], 300)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tiny_llama(tok, layers=2, hidden=32).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_composes_and_its_tasks_resolve_offline(name):
    cfg = plan.compose([f"+experiment={name}"])
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    from harness.config import validate

    cfg = validate(cfg)
    assert cfg.model.source == "pretrained" and cfg.model.lora.enabled
    check_tasks(list(cfg.eval.tasks))  # lm-eval's registry, offline
    assert set(cfg.eval.fewshot) <= set(cfg.eval.tasks)


def test_bids_preset_is_the_papers_setup():
    cfg = plan.compose(["+experiment=bids_llama3_8b"])
    assert cfg.selector.name == "bids" and cfg.selector.warmup_fraction == 1.0 and cfg.selector.warmup_epochs == 4
    assert cfg.selector.proj_dim == 8192 and cfg.train.epochs == 2
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (128, 512, 0.1)
    assert cfg.hydra.sweeper.params.budget == "0.05,0.1,0.15"
    assert len(cfg.eval.tasks) == 7


def test_plan_of_the_bids_preset(local_model, capsys):
    code = plan.main(["--n-pool", "288000", "+experiment=bids_llama3_8b", f"model.name_or_path={local_model}"])
    out = capsys.readouterr().out
    assert code == 0, out
    store = (288000 + 50 * 7) * 8192 * 4 * 2
    assert "288,350 examples (350 validation: data.validation_tasks) x d=8192 x 4 checkpoints x 2 bytes = " in out
    assert f"= {plan.human_bytes(store)} on disk" in out
    assert "sweep: 3 cell(s)" in out and "--array=0-2" not in out  # the basic launcher: one cell after another
    for budget, k in (("0.05", "14,400"), ("0.1", "28,800"), ("0.15", "43,200")):
        assert f"budget {budget}: k = {k} examples" in out
    assert "warm-up: 288,000 examples x 4 epochs" in out and "GPU-hours on one H100" in out
    code = plan.main(
        ["--n-pool", "1000", "+experiment=bids_llama3_8b", f"model.name_or_path={local_model}", "hydra/launcher=slurm"]
    )
    assert code == 0 and "one Slurm job array: --array=0-2" in capsys.readouterr().out
    # the README's order (overrides, then options) with one more override after the options: argparse refused it
    args = ["+experiment=bids_llama3_8b", "--n-pool", "1000", "--gpu", "h100", f"model.name_or_path={local_model}"]
    code = plan.main([*args, "hydra/launcher=slurm"])
    assert code == 0 and "one Slurm job array: --array=0-2" in capsys.readouterr().out


def test_plan_counts_the_cells_the_multirun_launches(capsys):
    # the command line's key replaces the preset's list (README: `+sweep=scaling seed=0`), as in the multirun
    code = plan.main(["--n-pool", "1000", "+sweep=scaling", "seed=0", "budget=0.1", "hydra/launcher=slurm"])
    out = capsys.readouterr().out
    selectors = OmegaConf.load(plan.REPO_ROOT / "conf/sweep/scaling.yaml").hydra.sweeper.params.selector.split(",")
    n = len(selectors)
    assert code == 0 and f"sweep: {n} cell(s), one Slurm job array: --array=0-{n - 1}" in out, out
    assert "budget 0.1: k = 100 examples" in out and "budget 0.05" not in out  # only the budget that runs
    # comma lists and Hydra's sweep functions on the command line, in the multirun's order
    code = plan.main(["--n-pool", "1000", "seed=range(0,2)", "budget=0.1,0.2"])
    out = capsys.readouterr().out
    assert code == 0 and "sweep: 4 cell(s)" in out, out
    assert out.split("one cell after another\n")[1].split("\n")[:4] == [
        "  seed=0 budget=0.1",
        "  seed=0 budget=0.2",
        "  seed=1 budget=0.1",
        "  seed=1 budget=0.2",
    ]


P, HIDDEN, LAYERS, VOCAB = 7_000_000_000, 4096, 32, 32000


def fake_size(model_cfg, feature_modules=None):
    """A 7B model whose LoRA trains r million parameters: tells which LoRA settings the plan counted."""
    trainable = int(model_cfg.lora.r) * 10**6 if model_cfg.lora.enabled else P
    size = plan.ModelSize(P, trainable, HIDDEN, LAYERS)
    size.vocab = VOCAB
    return size, trainable


def plan_lines(monkeypatch, capsys, args):
    monkeypatch.setattr(plan, "model_size", fake_size)
    code = plan.main(["--n-pool", "1000", "--tokens-per-example", "100", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_plan_takes_warmup_and_features_over_the_selectors_lora(monkeypatch, capsys):
    # the warm-up trains the selector's LoRA (selector.lora_r), not the final training's model.lora
    out = plan_lines(monkeypatch, capsys, ["+experiment=small_gpu", "model.lora.r=4", "selector.lora_r=8"])
    assert "4.00M trainable LoRA" in out and "(8.00M trainable LoRA adapters)" in out, out
    assert "projection over 8.00M parameters" in out, out
    out = plan_lines(monkeypatch, capsys, ["+experiment=small_gpu", "selector.warmup_mode=full"])
    assert "projection over 7000.00M parameters" in out, out


def test_plan_gradient_feature_flops_count_weight_gradients_of_the_featured_parameters_only(monkeypatch, capsys):
    # per example and checkpoint: forward 2PT + backward through activations 2PT + weight gradients 2FT + 2Fd
    out = plan_lines(monkeypatch, capsys, ["+experiment=less_llama2_7b", "~data.validation_tasks"])
    featured, n = 128 * 10**6, (1000 + 50 * 3) * 4
    expected = ((4 * P + 2 * featured) * 100 + 2 * featured * 8192) * n
    assert f"gradient features: {expected:.2e} FLOPs" in out, out
    assert "150 validation: assumed: 50 per evaluated task" in out, out


def test_plan_counts_the_validation_examples_the_preset_asks_for(monkeypatch, capsys):
    out = plan_lines(monkeypatch, capsys, ["+experiment=less_llama2_7b"])
    n_val = 285 + 81 + 9  # LESS: MMLU 5 x 57, BBH 3 x 27, TyDiQA 1 x 9
    store = (1000 + n_val) * 8192 * 4 * 2
    assert f"1,375 examples ({n_val} validation" in out and f"= {plan.human_bytes(store)} on disk" in out, out
    assert f"influence matrix {plan.human_bytes(1000 * n_val * 4)}" in out, out


def feature_gib(out: str) -> float:
    return float(out.split("gradient features ")[-1].split(" GiB")[0])


def test_plan_feature_memory_is_at_the_signal_batch_with_its_activations(monkeypatch, capsys):
    small = plan_lines(monkeypatch, capsys, ["+experiment=less_llama2_7b", "eval.batch_size=2"])
    large = plan_lines(monkeypatch, capsys, ["+experiment=less_llama2_7b", "eval.batch_size=8"])
    assert "at 2 examples per batch" in small and "at 8 examples per batch" in large, small
    seq, featured = 2048, 128 * 10**6
    per_example = featured * 4 + 34 * seq * HIDDEN * LAYERS + seq * VOCAB * (2 + 8)  # gradients, layers, logits
    assert feature_gib(large) - feature_gib(small) == pytest.approx(6 * per_example / 2**30, abs=0.11)


def test_plan_total_counts_every_cell_and_each_shared_warmup_once(monkeypatch, capsys):
    # LESS's own setup: one selection per target benchmark (same budget), for two seeds: six trainings; the warm-up
    # and gradient store depend on the seed only, so two of each
    out = plan_lines(
        monkeypatch, capsys, ["+experiment=less_llama2_7b", "eval.tasks=[mmlu],[bbh],[tydiqa_goldp]", "seed=0,1"]
    )
    featured, per_token = 128 * 10**6, 4 * P + 2 * 128 * 10**6
    train = per_token * 4 * 128 * 100  # k = 50: 4 epochs of one step of 128 examples of 100 tokens; the warm-up too
    grad = (per_token * 100 + 2 * featured * 8192) * (1000 + 375) * 4
    total = 6 * train + 2 * train + 2 * grad
    assert f"total {total:.2e} FLOPs (6 training run(s), 2 warm-up(s), 2 gradient store(s))" in out, out
    # `full` ignores the budget: once per seed; random at each budget and seed
    out = plan_lines(monkeypatch, capsys, ["selector=full,random", "budget=0.1,0.2", "seed=0,1"])
    assert "(6 training run(s), 0 warm-up(s), 0 gradient store(s))" in out and "sweep: 8 cell(s)" in out, out


def test_plan_counts_the_warmups_and_passes_of_score_selectors_once_per_seed(monkeypatch, capsys):
    # EL2N and GraNd: 3 warm-ups per seed (1 epoch over the pool), shared by both selectors and both budgets; each
    # takes its own pass over the pool after every warm-up (losses: forward; gradient norms: forward and backward);
    # on the testbed the warm-ups start from the pretrained stand-in, trained once for the whole sweep
    out = plan_lines(monkeypatch, capsys, ["selector=el2n,grand", "budget=0.1,0.2", "seed=0,1"])
    counted = "(8 training run(s), 6 warm-up(s), 0 gradient store(s), 12 per-example pass(es), 1 pretrained stand-in"
    assert counted in out, out
    per_token, tokens = 6 * P, 100  # every parameter trains (the proxy has no LoRA)
    train = per_token * 32 * tokens * 2 * 2 * (4 + 7) * 10  # 2 selectors x 2 seeds, k = 100 and 200: 4 and 7 steps
    warm = per_token * 32 * tokens * 32  # 1,000 examples: 32 steps of 32
    stand_in = per_token * 32 * tokens * 250 * 10  # 8,000 examples: 10 epochs of 250 steps of 32
    losses, norms = 2 * P * tokens * 1000, (per_token * tokens + 2 * P) * 1000
    assert f"total {train + stand_in + 6 * (warm + losses + norms):.2e} FLOPs" in out, out
    assert "selection signals: the pretrained stand-in, 8,000 examples x 10 epoch(s) = 2,500 steps" in out, out
    assert "3 warm-up(s) of 1,000 examples x 1 epoch(s) = 96 steps" in out, out
    # without it (warmup_base=model): no stand-in, other warm-ups
    out = plan_lines(monkeypatch, capsys, ["selector=el2n", "selector.warmup_base=model", "budget=0.1"])
    assert "pretrained stand-in" not in out and "(1 training run(s), 3 warm-up(s)" in out, out
    # diversity: RDS+ embeddings over one warm-up (for every budget), and per later round of the iterative variant a
    # warm-up on what that cell selected so far
    out = plan_lines(
        monkeypatch, capsys, ["selector=diversity", "selector.embedding=rds", "selector.rounds=3", "budget=0.1,0.2"]
    )
    assert "(2 training run(s), 5 warm-up(s), 0 gradient store(s), 5 per-example pass(es))" in out, out
    assert "(embeddings, losses of what is selected so far)" in out, out  # cluster_score=selected: the round's rows


def test_diversity_shares_its_warmup_with_el2n_as_the_signal_cache_does(monkeypatch):
    monkeypatch.setattr(plan, "model_size", fake_size)

    def warmups(*overrides):
        cfg = plan.cell_config(list(overrides))
        return {j.key for j in plan.selection_jobs(cfg, 1000, 100, 100, cfg.seed) if j.kind == plan.WARMUP}

    el2n, rds = warmups("selector=el2n"), warmups("selector=diversity", "selector.embedding=rds")
    assert len(el2n) == 3 and len(rds) == 1 and not rds & el2n  # on the testbed EL2N's start from the stand-in
    el2n = warmups("selector=el2n", "selector.warmup_base=model")
    assert len(el2n) == 3 and rds <= el2n
    assert not rds & warmups("selector=el2n", "selector.warmup_schedule=run")  # the first epoch of a 10-epoch run
    assert not rds & warmups("selector=diversity", "selector.embedding=rds", "seed=1")
    assert not warmups("selector=diversity")  # the testbed's TF-IDF embeddings need no warm-up


def test_sizes_are_named_in_binary_units():
    assert plan.human_bytes(2**30) == "1.0 GiB" and plan.human_bytes(3 * 2**20) == "3.0 MiB"


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_warms_up_the_adapters_it_trains(name):
    # LESS and BIDS take gradient features of the warm-up's LoRA and train the selection with the same LoRA
    cfg = plan.compose([f"+experiment={name}"])
    s, lora = cfg.selector, cfg.model.lora
    assert (s.lora_r, s.lora_alpha, s.lora_dropout) == (lora.r, lora.alpha, lora.dropout)
    assert list(s.lora_modules) == list(lora.target_modules)


def test_wandb_that_cannot_start_is_one_line(monkeypatch, tmp_path):
    import sys
    import types

    from harness.errors import HarnessError
    from harness.tracking import make_tracker

    def init(**kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nTraceback ...")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cfg = OmegaConf.create({"logger": {"name": "wandb", "project": "p", "entity": None, "mode": None, "tags": []}})
    with pytest.raises(HarnessError) as err:
        make_tracker(cfg, tmp_path, "cell")
    assert "\n" not in str(err.value) and "api_key not configured" in str(err.value)
    assert "logger.mode=offline" in str(err.value)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["+experiment=no_such_preset"], "no_such_preset"),
        (["--n-pool", "10", "budget=abc"], "budget must be a number in (0, 1], got 'abc'"),
        (
            ["--n-pool", "10", "+experiment=bids_llama3_8b"],
            "cannot read the config of model 'meta-llama/Meta-Llama-3-8B'",
        ),
        (
            ["--n-pool", "9", "+experiment=less_llama2_7b", "model.name_or_path=/nowhere/model"],
            "cannot read the config",
        ),
    ],
)
def test_plan_bad_input_is_one_line(args, fragment, capsys):
    code = plan.main(args)
    err = capsys.readouterr().err
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stand_in_pool(tmp_path, testbed):
    """A local pool in UltraInteract-SFT's columns (id, task, instruction, response) and validation examples."""
    rows = [
        {"id": f"ui-{i}", "task": t, "instruction": p, "response": r}
        for i, (t, p, r) in enumerate(
            zip(testbed.examples["task"], testbed.examples["prompt"], testbed.examples["response"])
        )
    ]
    val = [
        {"id": f"val-{i}", "task": t, "instruction": p, "response": r}
        for i, (t, p, r) in enumerate(
            zip(testbed.validation["task"], testbed.validation["prompt"], testbed.validation["response"])
        )
    ]
    return write_jsonl(tmp_path / "pool.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", val)


def stand_in_tasks(tmp_path, testbed):
    """Local lm-eval tasks in place of the benchmarks: a multiple-choice one and a generative one that declares
    `unsafe_code` (as HumanEval does), so the preset's opt-in is exercised."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    items = testbed.eval_items
    mc = [
        {"q": p, "options": list(c), "label": int(g)}
        for p, c, g in zip(items["prompt"], items["choices"], items["gold"])
    ]
    gen = [{"q": p, "answer": list(c)[int(g)]} for p, c, g in zip(items["prompt"], items["choices"], items["gold"])]
    mc_data, gen_data = write_jsonl(tmp_path / "mc.jsonl", mc[:24]), write_jsonl(tmp_path / "gen.jsonl", gen[:12])
    mc_dev, gen_dev = write_jsonl(tmp_path / "mc_dev.jsonl", mc[24:]), write_jsonl(tmp_path / "gen_dev.jsonl", gen[24:])
    common = "dataset_path: json\ntest_split: test\nvalidation_split: validation\nmetadata:\n  version: 1.0\n"
    (folder / "stand_in_mc.yaml").write_text(
        f"task: stand_in_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {mc_data}\n    validation: {mc_dev}\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: options\ndoc_to_target: label\n"
        "target_delimiter: ' '\nmetric_list:\n  - metric: acc\n"
    )
    (folder / "stand_in_code.yaml").write_text(
        f"task: stand_in_code\n{common}unsafe_code: true\ndataset_kwargs:\n  data_files:\n"
        f"    test: {gen_data}\n    validation: {gen_dev}\n"
        "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: answer\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


TINY = [
    "model.max_length=64",
    "model.dtype=float32",
    "train.mixed_precision=no",
    "train.global_batch_size=16",
    "train.micro_batch_size=8",
    "train.lr=1e-3",
    "eval.batch_size=16",
    "selector.warmup_epochs=2",
    "selector.warmup_lr=1e-3",
    "selector.proj_dim=64",
    "model.lora.r=4",
    "model.lora.alpha=8",
    "selector.lora_r=4",
    "selector.lora_alpha=8",
    "budget=0.15",
]


def stand_in_data(name: str, tmp_path, testbed) -> list[str]:
    """Each preset's pool in its real pool's format, written locally, and where its validation examples come from."""
    pool, val = stand_in_pool(tmp_path, testbed)
    columns = "data.columns={id: id, task: task, prompt: instruction, response: response}"
    if name == "bids_llama3_8b":  # hub loader (json builder); validation from the stand-in benchmarks' splits
        return [
            "data.dataset=json",
            f"data.data_files={pool}",
            columns,
            "~data.validation_tasks",
            "+data.validation_tasks={stand_in_mc: 6, stand_in_code: 6}",
        ]
    if name == "less_llama2_7b":  # the converted JSONL pool; validation from a file of its own
        return [f"data.path={pool}", f"data.validation_path={val}", columns, "~data.validation_tasks"]
    alpaca = [
        {"instruction": p, "input": "", "output": r}
        for p, r in zip(testbed.examples["prompt"], testbed.examples["response"])
    ]
    alpaca_file = write_jsonl(tmp_path / "alpaca.jsonl", alpaca)  # Alpaca's columns, no task labels
    return [
        "data.dataset=json",
        f"data.data_files={alpaca_file}",
        "~data.validation_tasks",
        "+data.validation_tasks={stand_in_mc: 6, stand_in_code: 6}",
    ]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_end_to_end_on_tiny_stand_ins(harness_cli, tmp_path, local_model, testbed, name):
    folder = stand_in_tasks(tmp_path, testbed)
    code, out, err = harness_cli(
        [
            f"+experiment={name}",
            f"model.name_or_path={local_model}",
            *stand_in_data(name, tmp_path, testbed),
            f"eval.include_path={folder}",
            "eval.tasks=[stand_in_mc,stand_in_code]",
            "~eval.fewshot",
            "eval.confirm_run_unsafe_code=true",
            "data.chat_template=false",
            *TINY,
        ]
    )
    assert code == 0, err[-3000:]
    run = record_path(out)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["selector"] == ("influence" if name == "less_llama2_7b" else "bids")
    assert manifest["n_selected"] == 36 and manifest["identity"]["model"]["lora"]["target_modules"] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]
    names = {s["name"] for s in manifest["selection_signals"]}
    assert names == {"warmup", "influence"}
    if name != "less_llama2_7b":
        assert manifest["selection_info"]["validation_per_task"] == {"stand_in_code": 6, "stand_in_mc": 6}
    import pandas as pd

    results = pd.read_csv(run / "results.csv")
    assert {"stand_in_mc", "stand_in_code"} <= set(results["task"])


def test_validation_from_benchmarks_that_are_not_on_this_machine_is_one_line(harness_cli, tmp_path, local_model):
    pool = write_jsonl(
        tmp_path / "pool.jsonl", [{"id": f"a{i}", "dataset": "t", "prompt": "p", "completion": "c"} for i in range(4)]
    )
    code, _, err = harness_cli(["+experiment=less_llama2_7b", f"model.name_or_path={local_model}", f"data.path={pool}"])
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert "cannot build validation examples from lm-eval task 'mmlu'" in lines[0]


def test_preset_with_a_pool_that_does_not_fit_its_columns(harness_cli, tmp_path, local_model):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "add 1 2 =", "completion": "3"}] * 4)
    code, _, err = harness_cli(
        [
            "+experiment=bids_llama3_8b",
            f"model.name_or_path={local_model}",
            "data.dataset=json",
            f"data.data_files={pool}",
        ]
    )
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1 and "has no field" in lines[0], err
    assert not list(tmp_path.rglob("results.csv"))
