"""Training details: the logged learning rate, each process's random state across a resume, a tokenizer without
an end-of-sequence token, and float16 weights refused for training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
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
from harness.training import latest_checkpoint, learning_rates, load_checkpoint, train

MODEL = {
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pool = generate_testbed(TestbedConfig(n_pool=120, n_eval_per_task=10, n_validation_per_task=5, n_facts=16))
    tok = train_tokenizer(pool_corpus(pool, validation=False), 300)
    data = tokenize_pool(pool, tok, 64, False, tmp_path_factory.mktemp("cache"))
    return pool, tok, data


def recipe(**kw):
    base = OmegaConf.structured(TrainSchema(global_batch_size=16, micro_batch_size=8, checkpoint_every=2, epochs=2))
    return OmegaConf.merge(base, kw)


def model_of(tok, **kw):
    return build_model(OmegaConf.merge(OmegaConf.create(MODEL), kw), tok, init_seed=7)


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
        outcome = train(model_of(tok), data, [rows, rows], cfg, 3, tmp_path, Accelerator(), tok.pad_token_id)
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
            model_of(tok),
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
    train(model_of(tok), data, [np.arange(32)], recipe(), 1, tmp_path, Accelerator(), tok.pad_token_id)
    found = latest_checkpoint(tmp_path / "checkpoints")
    state = torch.load(found / "state.pt", weights_only=False)
    assert len(state["rank_rng"]) == 1 and torch.equal(state["rank_rng"][0]["torch"], state["torch_rng"])
    other = torch.Generator().manual_seed(1234).get_state()
    state["rank_rng"] = [{"torch": state["torch_rng"], "cuda": None}, {"torch": other, "cuda": None}]
    torch.save(state, found / "state.pt")

    def restored(**kw):
        model = model_of(tok)
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
    script.write_text(f"MODEL = {MODEL!r}\n" + textwrap.dedent(TWO_PROCESS_SCRIPT))
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
        train(model_of(tok, dtype="float16"), data, [np.arange(32)], recipe(), 1, tmp_path / "a", Accelerator(), 0)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists()
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = model_of(tok, dtype="float16", lora=lora)
    outcome = train(model, data, [np.arange(32)], recipe(), 1, tmp_path / "b", Accelerator(), tok.pad_token_id)
    assert outcome.steps == 2 and np.isfinite(outcome.final_loss)
