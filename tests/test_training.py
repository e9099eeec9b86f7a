"""The training recipe: response-only loss, fixed global batch, seeded order, checkpoint and resume (each process's
random state, a stop signal at any step), the logged learning rate, and what cannot train (no EOS, float16)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from conftest import OFFLINE
from omegaconf import OmegaConf

from harness.config import TrainSchema
from harness.errors import HarnessError
from harness.modeling import build_model, pool_corpus, train_tokenizer
from harness.testbed import TestbedConfig, generate_testbed
from harness.tokenization import encode_examples, tokenize_pool
from harness.training import collate, global_batches, latest_checkpoint, learning_rates, load_checkpoint, train

MODEL = OmegaConf.create(
    {
        "source": "scratch",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_length": 64,
        "dtype": "float32",
        "lora": {"enabled": False},
    }
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pool = generate_testbed(TestbedConfig(n_pool=200, n_eval_per_task=100, n_validation_per_task=20, n_facts=16))
    texts = pool_corpus(pool, validation=False)
    tok = train_tokenizer(texts, 300)
    data = tokenize_pool(pool, tok, 64, False, tmp_path_factory.mktemp("cache"))
    return pool, tok, data


def recipe(**kw):
    base = OmegaConf.structured(TrainSchema(global_batch_size=16, micro_batch_size=8, checkpoint_every=2, epochs=2))
    return OmegaConf.merge(base, kw)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fresh(tok, **kw):
    """The test model (seeded), with `kw` merged into its config."""
    return build_model(OmegaConf.merge(MODEL, kw), tok, init_seed=7)


def test_labels_cover_only_the_response(setup):
    pool, tok, data = setup
    batch = collate(data, np.array([0, 1, 2]), tok.pad_token_id)
    for j, row in enumerate([0, 1, 2]):
        labelled = batch["labels"][j][batch["labels"][j] != -100].tolist()
        seq = data.example(row).tolist()
        assert labelled == seq[data.prompt_len[row] :]
        assert labelled[-1] == tok.eos_token_id
        decoded = tok.decode(labelled[:-1])
        assert decoded.strip() == pool.examples["response"][row]


def test_split_matches_lm_eval_context_continuation(setup):
    _, tok, _ = setup
    seqs, plen, *_ = encode_examples(["add 12 30 ="], ["42"], tok, " ", 64, False)
    whole = tok("add 12 30 = 42", add_special_tokens=False)["input_ids"]
    ctx = tok("add 12 30 =", add_special_tokens=False)["input_ids"]
    assert seqs[0][: plen[0]] == ctx and seqs[0][plen[0] : -1] == whole[len(ctx) :]


def test_tokenized_cache_tells_apart_tokenizers_with_one_vocabulary(setup, tmp_path):
    """Same vocabulary, another pre-tokenizer (add_prefix_space): other ids, so another cache entry."""
    import copy

    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from harness.modeling import SPECIAL_TOKENS

    pool, tok, _ = setup
    backend = copy.deepcopy(tok.backend_tokenizer)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=True)]
    )
    other = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    assert other.get_vocab() == tok.get_vocab()
    tokenize_pool(pool, tok, 64, False, tmp_path)
    cached = tokenize_pool(pool, other, 64, False, tmp_path)
    expected, *_ = encode_examples(
        pool.examples["prompt"].tolist()[:1], pool.examples["response"].tolist()[:1], other, pool.delimiter, 64, False
    )
    assert cached.example(0).tolist() == expected[0]


def test_empty_prompt_gets_a_prefix_token_and_every_response_token_a_label(setup):
    """A pool of bare texts (empty prompt, no bos): lm-eval scores the text after a prefix token; training must
    predict its first token too, and the loss must be divided by the labels it really has."""
    from harness.tokenization import TokenizedPool
    from harness.training import response_token_count

    _, tok, _ = setup
    seqs, plen, *_ = encode_examples(["", "add 1 2 ="], ["hello world", "3"], tok, " ", 64, False)
    assert plen[0] == 1 and seqs[0][0] == tok.bos_token_id
    assert seqs[0][1:-1] == tok(" hello world", add_special_tokens=False)["input_ids"]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    data = TokenizedPool(np.concatenate(seqs).astype(np.int32), offsets, np.asarray(plen, dtype=np.int32), 0)
    labels = collate(data, np.array([0, 1]), tok.pad_token_id)["labels"]
    assert int((labels[:, 1:] != -100).sum()) == response_token_count(data, np.array([0, 1]))


def test_a_prompt_that_brings_its_own_bos_gets_no_second_one(setup):
    """A chat template that writes BOS into the text: evaluation adds none then (runner.tok_encode), nor may
    training, or the two would see different sequences."""
    _, tok, _ = setup
    seqs, plen, *_ = encode_examples(["<s>add 1 2 =", "add 1 2 ="], ["3", "3"], tok, " ", 64, True)
    assert seqs[0] == seqs[1] and seqs[0][:2] != [tok.bos_token_id] * 2
    assert seqs[0][0] == tok.bos_token_id and plen[0] == plen[1]


def test_truncation_counts_the_examples_that_lost_part_of_their_response(setup, caplog):
    """A long prompt loses its start and keeps its whole answer; a long answer loses its end (and eos): the
    warning tells the two apart, since only the second changes what is trained on."""
    from harness.tokenization import tokenize_frame, warn_truncation

    pool, tok, _ = setup
    long_words = " ".join(["add 12 30"] * 12)
    seqs, plen, truncated, cut = encode_examples(
        [long_words + " =", "add 1 2 =", "add 1 2 ="], ["42", "3", long_words], tok, " ", 16, False
    )
    assert (truncated, cut) == (2, 1) and all(len(s) <= 16 for s in seqs)
    assert seqs[0][-1] == tok.eos_token_id and seqs[2][-1] != tok.eos_token_id and plen[2] == 1
    frame = pd.DataFrame({"prompt": [long_words + " =", "add 1 2 ="], "response": ["42", long_words]})
    data = tokenize_frame(pool, frame, tok, 16, False)
    with caplog.at_level("WARNING"):
        warn_truncation(data, "pool examples", 16)
    assert "2 pool examples were longer than 16 tokens" in caplog.text and "1 of them also lost" in caplog.text


def test_batches_have_the_global_size_and_a_seeded_order():
    epochs = [np.arange(40), np.arange(40)]
    a, b, c = global_batches(epochs, 1, 16), global_batches(epochs, 1, 16), global_batches(epochs, 2, 16)
    assert [len(r) for _, r in a] == [16, 16, 8, 16, 16, 8]
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    assert sorted(np.concatenate([r for e, r in a if e == 0]).tolist()) == list(range(40))


def test_micro_batch_size_does_not_change_the_result(setup, tmp_path):
    """Gradient accumulation: the global batch, not the micro batch, defines the update."""
    _, tok, data = setup
    rows = np.arange(64)
    results = []
    for micro in (16, 4):
        model = fresh(tok)
        train(
            model,
            data,
            [rows, rows],
            recipe(micro_batch_size=micro),
            3,
            tmp_path / f"m{micro}",
            Accelerator(),
            tok.pad_token_id,
        )
        results.append(weights(model))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5)


def test_same_seed_same_weights_and_loss_drops(setup, tmp_path):
    _, tok, data = setup
    rows = np.arange(96)
    outs, ws = [], []
    for name in ("a", "b"):
        model = fresh(tok)
        outs.append(
            train(model, data, [rows] * 3, recipe(lr=3e-3), 5, tmp_path / name, Accelerator(), tok.pad_token_id)
        )
        ws.append(weights(model))
    assert all(torch.equal(ws[0][k], ws[1][k]) for k in ws[0])
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == outs[0].steps == 18
    assert np.mean([e["loss"] for e in log[-3:]]) < np.mean([e["loss"] for e in log[:3]])
    assert log[-1]["lr"] < max(e["lr"] for e in log)  # warm-up then decay


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_uninterrupted_weights(setup, tmp_path):
    _, tok, data = setup
    rows = np.arange(80)
    plan = [rows, rows]

    reference = fresh(tok)
    train(reference, data, plan, recipe(), 11, tmp_path / "straight", Accelerator(), tok.pad_token_id)

    def die_at_step_5(step, loss):
        if step == 5:
            raise Interrupt

    interrupted = fresh(tok)
    with pytest.raises(Interrupt):
        train(
            interrupted,
            data,
            plan,
            recipe(),
            11,
            tmp_path / "cut",
            Accelerator(),
            tok.pad_token_id,
            on_step=die_at_step_5,
        )
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step-00000005"

    resumed = fresh(tok)
    outcome = train(resumed, data, plan, recipe(), 11, tmp_path / "cut", Accelerator(), tok.pad_token_id)
    assert outcome.resumed_from_step == 5 and outcome.steps == 10
    assert outcome.examples_seen == 160
    final_ref, final_res = weights(reference), weights(resumed)
    assert all(torch.equal(final_ref[k], final_res[k]) for k in final_ref)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_resume_at_the_last_step_reports_the_final_loss(setup, tmp_path):
    """Training finished, then evaluation was cut (e.g. Slurm preemption): the rerun trains no step, and its
    outcome still carries the final loss, not NaN."""
    _, tok, data = setup
    rows = np.arange(40)
    first = train(fresh(tok), data, [rows, rows], recipe(), 3, tmp_path, Accelerator(), tok.pad_token_id)
    again = train(fresh(tok), data, [rows, rows], recipe(), 3, tmp_path, Accelerator(), tok.pad_token_id)
    assert again.resumed_from_step == again.steps == first.steps
    assert np.isfinite(first.final_loss) and again.final_loss == pytest.approx(first.final_loss)


def test_checkpoint_of_another_plan_is_refused(setup, tmp_path):
    from harness.errors import HarnessError

    _, tok, data = setup
    train(fresh(tok), data, [np.arange(32)], recipe(), 1, tmp_path, Accelerator(), tok.pad_token_id)
    with pytest.raises(HarnessError, match="different selection"):
        train(fresh(tok), data, [np.arange(1, 33)], recipe(), 1, tmp_path, Accelerator(), tok.pad_token_id)


def test_data_order_does_not_depend_on_how_the_selector_listed_ids():
    rows = np.random.default_rng(0).permutation(50)
    a = global_batches([rows, rows], 4, 16)
    b = global_batches([rows[::-1], np.sort(rows)], 4, 16)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def test_resume_with_another_micro_batch_size(setup, tmp_path):
    """Out of memory, smaller micro-batches, run again: the update is the same, so the run resumes."""
    _, tok, data = setup
    rows = np.arange(64)
    plan = [rows, rows]

    def die_at_step_3(step, loss):
        if step == 3:
            raise Interrupt

    reference = fresh(tok)
    train(reference, data, plan, recipe(checkpoint_every=1), 2, tmp_path / "ref", Accelerator(), tok.pad_token_id)
    cut = fresh(tok)
    with pytest.raises(Interrupt):
        train(
            cut,
            data,
            plan,
            recipe(checkpoint_every=1),
            2,
            tmp_path / "cut",
            Accelerator(),
            tok.pad_token_id,
            on_step=die_at_step_3,
        )
    resumed = fresh(tok)
    outcome = train(
        resumed,
        data,
        plan,
        recipe(checkpoint_every=1, micro_batch_size=4),
        2,
        tmp_path / "cut",
        Accelerator(),
        tok.pad_token_id,
    )
    assert outcome.resumed_from_step == 3
    for key, value in weights(reference).items():
        torch.testing.assert_close(value, weights(resumed)[key], rtol=1e-4, atol=1e-5)


def test_model_is_on_its_device_before_the_optimizer_and_checkpoint(setup, tmp_path, monkeypatch):
    """On a GPU the checkpoint's Adam moments must land beside the weights: the model moves first."""
    import harness.training as training

    _, tok, data = setup
    seen = []
    real_adamw = torch.optim.AdamW

    class Spy(real_adamw):
        def __init__(self, params, **kw):
            params = list(params)
            seen.append([p.device for p in params])
            super().__init__(params, **kw)

    moved = []
    model = fresh(tok)
    real_to = model.to

    def spy_to(*args, **kw):
        moved.append(len(seen))  # how many optimizers existed when the model moved
        return real_to(*args, **kw)

    monkeypatch.setattr(model, "to", spy_to)
    monkeypatch.setattr(training.torch.optim, "AdamW", Spy)
    train(model, data, [np.arange(32)], recipe(), 1, tmp_path, Accelerator(), tok.pad_token_id)
    assert moved and moved[0] == 0  # moved before any optimizer was built


def test_compute_plan_conventions():
    from harness.training import compute_plan

    by_epochs = compute_plan(recipe(epochs=3, global_batch_size=10), k=25, n_pool=100)
    assert (by_epochs.epochs, by_epochs.max_steps, by_epochs.steps) == (3, None, 9)
    by_steps = compute_plan(recipe(compute="steps", epochs=3, global_batch_size=10), k=25, n_pool=100)
    assert by_steps.steps == 30 and by_steps.max_steps == 30 and by_steps.epochs == 10  # ceil(30 / 3)
    fixed = compute_plan(recipe(compute="steps", steps=7, global_batch_size=10), k=25, n_pool=100)
    assert (fixed.steps, fixed.epochs) == (7, 3)
    assert len(global_batches([np.arange(25)] * fixed.epochs, 0, 10, fixed.max_steps)) == 7


def test_warm_up_keeps_a_checkpoint_with_adam_moments_per_epoch(setup, tmp_path):
    _, tok, data = setup
    model = fresh(tok)
    rows = np.arange(48)
    train(
        model,
        data,
        [rows] * 3,
        recipe(),
        0,
        tmp_path / "w",
        Accelerator(),
        tok.pad_token_id,
        epoch_checkpoints=tmp_path / "epochs",
    )
    found = sorted(p.name for p in (tmp_path / "epochs").iterdir())
    assert found == ["epoch-000", "epoch-001", "epoch-002"]
    state = torch.load(tmp_path / "epochs" / "epoch-002" / "state.pt", weights_only=False)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state["moments"]) == names and set(state["model"]) == names
    assert state["avg_lr"] > 0 and state["moments"][next(iter(names))]["step"] == 9.0


def test_the_log_shows_the_learning_rate_each_step_used(setup, tmp_path):
    """Step 1 of a warm-up runs at the schedule's first rate (0 for a linear warm-up), not at the second."""
    _, tok, data = setup
    cfg = recipe(warmup_ratio=0.25)
    rows = np.arange(64)
    used = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kw):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kw)

    torch.optim.AdamW.step = spy
    try:
        outcome = train(fresh(tok), data, [rows, rows], cfg, 3, tmp_path, Accelerator(), tok.pad_token_id)
    finally:
        torch.optim.AdamW.step = real_step
    logged = [json.loads(line)["lr"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(logged) == outcome.steps == 8
    assert logged == pytest.approx(used) and logged == pytest.approx(learning_rates(cfg, 8))
    assert logged[0] == 0.0 and max(logged) == pytest.approx(cfg.lr)


def test_a_signal_after_the_last_steps_check_still_stops_the_run(setup, tmp_path):
    """A SIGTERM (or submitit's USR2) that lands after the last step's stop check is not dropped: the run stops
    with the final checkpoint (the requeued run resumes there and evaluates), instead of going on into evaluation
    and being killed there."""
    from harness.interrupt import Interrupted, StopFlag

    _, tok, data = setup
    stop = StopFlag()
    rows = np.arange(64)

    def late_signal(done: int, loss: float) -> None:
        if done == 8:  # the last step, after its check
            stop.handle(15, None)

    with pytest.raises(Interrupted) as caught:
        train(
            fresh(tok),
            data,
            [rows, rows],
            recipe(),
            3,
            tmp_path,
            Accelerator(),
            tok.pad_token_id,
            on_step=late_signal,
            stop=stop,
        )
    assert caught.value.step == 8 and caught.value.signame == "SIGTERM"
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000008"


def test_a_resume_restores_each_processs_own_random_state(setup, tmp_path):
    """The checkpoint holds one random state per process; process r of the same number of processes gets its own
    back, while a checkpoint of another number of processes (or an older one) gives the main process's."""
    _, tok, data = setup
    train(fresh(tok), data, [np.arange(32)], recipe(), 1, tmp_path, Accelerator(), tok.pad_token_id)
    found = latest_checkpoint(tmp_path / "checkpoints")
    state = torch.load(found / "state.pt", weights_only=False)
    assert len(state["rank_rng"]) == 1 and torch.equal(state["rank_rng"][0]["torch"], state["torch_rng"])
    other = torch.Generator().manual_seed(1234).get_state()
    state["rank_rng"] = [{"torch": state["torch_rng"], "cuda": None}, {"torch": other, "cuda": None}]
    torch.save(state, found / "state.pt")

    def restored(**kw):
        model = fresh(tok)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        torch.manual_seed(0)
        step, _, _ = load_checkpoint(found, model, optimizer, scheduler, state["fingerprint"], **kw)
        assert step == state["step"]
        return torch.get_rng_state()

    assert torch.equal(restored(rank=1, world=2, device=torch.device("cpu")), other)
    assert torch.equal(restored(rank=0, world=2, device=torch.device("cpu")), state["torch_rng"])
    assert torch.equal(restored(rank=1, world=3, device=torch.device("cpu")), state["torch_rng"])
    del state["rank_rng"]  # a checkpoint written before per-process states
    torch.save(state, found / "state.pt")
    assert torch.equal(restored(), state["torch_rng"])


TWO_PROCESS_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from harness.config import TrainSchema
from harness.modeling import build_model, pool_corpus, train_tokenizer
from harness.testbed import TestbedConfig, generate_testbed
from harness.tokenization import tokenize_pool
from harness.training import train

out = Path(sys.argv[1])
acc = Accelerator()
pool = generate_testbed(TestbedConfig(n_pool=120, n_eval_per_task=10, n_validation_per_task=5, n_facts=16))
tok = train_tokenizer(pool_corpus(pool, validation=False), 300)
data = tokenize_pool(pool, tok, 64, False, out / f"cache-{acc.process_index}")
lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.3, "target_modules": ["q_proj", "v_proj"]}
model_cfg = OmegaConf.create({**MODEL, "lora": lora})
cfg = OmegaConf.structured(TrainSchema(global_batch_size=16, micro_batch_size=4, checkpoint_every=1, epochs=2))
rows = np.arange(64)


class Cut(Exception):
    pass


def cut(step, loss):
    if step == 3:
        raise Cut


def run(name, **kw):
    model = build_model(model_cfg, tok, 5)
    train(model, data, [rows, rows], cfg, 9, out / name, acc, tok.pad_token_id, progress=False, **kw)
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


straight = run("straight")
try:
    run("cut", on_step=cut)
except Cut:
    pass
resumed = run("cut")
if acc.is_main_process:
    torch.save({"straight": straight, "resumed": resumed}, out / "weights.pt")
acc.wait_for_everyone()
"""


def test_two_processes_with_dropout_resume_like_an_uninterrupted_run(tmp_path):
    """LoRA dropout on 2 processes (gloo): each process draws its own masks, so a resume must give each its own
    random state back (with the main process's state on both, the weights drift from the uninterrupted run's)."""
    script = tmp_path / "resume.py"
    script.write_text(f"MODEL = {OmegaConf.to_container(MODEL)!r}\n" + textwrap.dedent(TWO_PROCESS_SCRIPT))
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    weights = torch.load(tmp_path / "weights.pt", weights_only=False)
    assert weights["straight"].keys() == weights["resumed"].keys() and weights["straight"]
    for name, value in weights["straight"].items():
        assert torch.equal(weights["resumed"][name], value), name


def test_a_tokenizer_without_eos_is_refused_in_one_line(setup):
    from transformers import PreTrainedTokenizerFast

    from harness.modeling import SPECIAL_TOKENS

    _, tok, _ = setup
    no_eos = {k: v for k, v in SPECIAL_TOKENS.items() if k != "eos_token"}
    other = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, **no_eos)
    assert other.eos_token_id is None
    with pytest.raises(HarnessError, match="eos") as info:
        encode_examples(["add 1 2 ="], ["3"], other, " ", 64, False)
    assert "\n" not in str(info.value) and "model" in str(info.value)


def test_float16_weights_are_not_trained(setup, tmp_path):
    """AdamW on float16 weights without loss scaling: refused before anything is written; float16 frozen weights
    under LoRA (whose adapters peft keeps in float32) still train."""
    _, tok, data = setup
    with pytest.raises(HarnessError, match="model.dtype=bfloat16") as info:
        train(fresh(tok, dtype="float16"), data, [np.arange(32)], recipe(), 1, tmp_path / "a", Accelerator(), 0)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists()
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = fresh(tok, dtype="float16", lora=lora)
    outcome = train(model, data, [np.arange(32)], recipe(), 1, tmp_path / "b", Accelerator(), tok.pad_token_id)
    assert outcome.steps == 2 and np.isfinite(outcome.final_loss)
