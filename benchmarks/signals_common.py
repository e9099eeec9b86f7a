"""Shared setup of the signal benchmarks: the testbed proxy after a short AdamW warm-up, the obvious
one-example-at-a-time references, and a runner that measures each way in its own process (peak RSS)."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from harness.modeling import build_model, pool_corpus, train_tokenizer
from harness.signals.gradients import adam_direction, adam_state_from_optimizer, flat_moments
from harness.testbed import TestbedConfig, generate_testbed
from harness.tokenization import tokenize_pool
from harness.training import collate, summed_response_loss

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
TINY_LLAMA = {  # conf/model/tiny_llama.yaml
    "source": "scratch",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_length": 64,
    "vocab_size": 512,
    "dtype": "float32",
}
LORA = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": QKVO}
LORA_PAPER = {**LORA, "r": 128, "alpha": 512}
"""LESS's LoRA (r=128, alpha=512, dropout 0.1 on q/k/v/o): 393,216 adapter parameters on the testbed model."""


def threads() -> int:
    """CPU threads of each measured way: BENCH_THREADS (default 1, so CPU seconds are comparable)."""
    return int(os.environ.get("BENCH_THREADS", "1"))


def build(lora: bool, n_pool: int = 1000, warmup_steps: int = 5, rank: int = 8):
    """(tokenizer, tokenized pool, model after a few AdamW steps, its Adam state). Deterministic.
    With `lora`, adapters of `rank` (8, or 128 as LESS sets it) on q/k/v/o."""
    torch.set_num_threads(threads())
    warnings.filterwarnings("ignore", category=FutureWarning)
    pool = generate_testbed(TestbedConfig(n_pool=n_pool, n_validation_per_task=5, n_eval_per_task=5, n_facts=64))
    texts = pool_corpus(pool, validation=False)
    tok = train_tokenizer(texts, TINY_LLAMA["vocab_size"])
    data = tokenize_pool(pool, tok, 64, False, Path(tempfile.mkdtemp(prefix="bench-signals-")))
    adapters = (LORA_PAPER if rank == 128 else {**LORA, "r": rank}) if lora else {"enabled": False}
    cfg = OmegaConf.create({**TINY_LLAMA, "lora": adapters})
    model = build_model(cfg, tok, init_seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    model.train()
    torch.manual_seed(0)
    for step in range(warmup_steps):
        batch = collate(data, np.arange(step * 32, step * 32 + 32), tok.pad_token_id)
        opt.zero_grad()
        (summed_response_loss(model, batch) / int((batch["labels"] != -100).sum())).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return tok, data, model, adam_state_from_optimizer(model, opt.state_dict())


def loop_flat_grad(model, data, row: int, pad_id: int) -> torch.Tensor:
    """The obvious way: one example, one forward and backward pass of the training loss."""
    batch = collate(data, np.array([row]), pad_id)
    model.zero_grad(set_to_none=True)
    (summed_response_loss(model, batch) / int((batch["labels"] != -100).sum())).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


def loop_grad_norms(model, data, rows, pad_id) -> np.ndarray:
    norms = [float(loop_flat_grad(model, data, int(r), pad_id).double().norm()) for r in rows]
    return np.array(norms, dtype=np.float32)


def loop_features(model, data, rows, pad_id, projector, state) -> np.ndarray:
    """LESS-style: one example, one backward pass, one Adam direction, one projection at a time."""
    m, v = flat_moments(model, state.moments, "cpu")
    out = []
    for r in rows:
        g = loop_flat_grad(model, data, int(r), pad_id)
        d = adam_direction(g[None], m, v, state.step, state.betas, state.eps)
        out.append(torch.nn.functional.normalize(projector.project(d), dim=1)[0].numpy())
    return np.stack(out)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(target, kwargs, queue) -> None:
    queue.put(target(**kwargs))


def in_child(target, **kwargs):
    """Run target(**kwargs) in a fresh process (so peak RSS is its own); it returns a dict."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, kwargs, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def timed(fn, baseline_mb: float, repeats: int = 1):
    """(result, seconds, peak RSS in MB above `baseline_mb`, the peak once the model was built).
    With one thread, CPU time of this process (the shared machine's load does not count); with more
    (BENCH_THREADS), wall time, since CPU time would add the threads up. With `repeats`, the median."""
    clock = time.process_time if threads() == 1 else time.perf_counter
    seconds = []
    for _ in range(repeats):
        start = clock()
        out = fn()
        seconds.append(clock() - start)
    return out, float(np.median(seconds)), max(0.0, peak_mb() - baseline_mb)
