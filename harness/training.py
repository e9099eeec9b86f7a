"""The one training recipe: loss on response tokens, AdamW, warm-up then decay, a global batch that
does not depend on the number of processes, seeded data order, checkpoints that a rerun resumes from."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from harness.errors import HarnessError
from harness.seeding import stage_rng
from harness.storage import atomic_write_text
from harness.tokenization import TokenizedPool

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainOutcome:
    steps: int
    examples_seen: int
    tokens_seen: int
    response_tokens_seen: int
    final_loss: float
    seconds: float
    resumed_from_step: int


def epoch_orders(epochs: list[np.ndarray], order_seed: int) -> list[np.ndarray]:
    """Each epoch's rows in a seeded random order (one independent stream per epoch)."""
    return [stage_rng(order_seed, f"epoch-{e}").permutation(rows) for e, rows in enumerate(epochs)]


def global_batches(epochs: list[np.ndarray], order_seed: int, batch_size: int) -> list[tuple[int, np.ndarray]]:
    """(epoch, rows) of every optimizer step, in order; the last batch of an epoch may be smaller."""
    out = []
    for e, rows in enumerate(epoch_orders(epochs, order_seed)):
        out.extend((e, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size))
    return out


def count_steps(epochs: list[np.ndarray], batch_size: int) -> int:
    """Optimizer steps of a plan: ceil(len / batch) per epoch (what the learning-rate schedule spans)."""
    return sum(-(-len(rows) // batch_size) for rows in epochs)


def collate(data: TokenizedPool, rows: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels that are -100 outside the response."""
    seqs = [data.example(int(r)) for r in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, (r, s) in enumerate(zip(rows, seqs)):
        t = torch.from_numpy(s.astype(np.int64))
        input_ids[j, : len(s)] = t
        mask[j, : len(s)] = 1
        p = int(data.prompt_len[int(r)])
        labels[j, p : len(s)] = t[p:]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def response_token_count(data: TokenizedPool, rows: np.ndarray) -> int:
    return int((data.lengths[rows] - data.prompt_len[rows]).sum())


def summed_response_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over response tokens (the caller divides by the global count)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def plan_fingerprint(epochs: list[np.ndarray], cfg: Any, order_seed: int, model_id: str) -> str:
    """What a checkpoint belongs to: the data plan, the recipe, the order seed and the model."""
    h = hashlib.sha256()
    for rows in epochs:
        h.update(np.asarray(rows, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(json.dumps([cfg, order_seed, model_id], sort_keys=True, default=str).encode())
    return h.hexdigest()


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    found = sorted(p for p in ckpt_dir.iterdir() if CHECKPOINT_RE.match(p.name) and (p / "state.pt").exists())
    return found[-1] if found else None


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, scheduler, fingerprint: str) -> None:
    """Write step-N atomically (temporary folder, then rename) and drop older checkpoints."""
    final = ckpt_dir / f"step-{step:08d}"
    if final.exists():
        return
    tmp = ckpt_dir / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "step": step,
        "fingerprint": fingerprint,
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(state, tmp / "state.pt")
    tmp.rename(final)
    for old in ckpt_dir.iterdir():
        if CHECKPOINT_RE.match(old.name) and old != final:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, optimizer, scheduler, fingerprint: str) -> int:
    """Restore weights, optimizer, schedule and RNG; returns the step to continue from."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise HarnessError(
            f"checkpoint {path} belongs to a different selection or recipe; pass rerun=true to start over "
            "(the old record is archived) or choose another hydra.run.dir"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def trim_log(log_path: Path, last_step: int) -> None:
    """Keep the log lines up to the step training continues from (a killed run may have logged more)."""
    if not log_path.exists():
        return
    kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    atomic_write_text(log_path, "".join(line + "\n" for line in kept))


def _all_reduce_grads(params: list[torch.nn.Parameter], accelerator: Accelerator) -> None:
    """Sum gradients over processes in one flat buffer (each process already divided by the global
    token count, so the sum is the gradient of the global mean loss)."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(p.dtype)
        offset += n


def train(
    model: torch.nn.Module,
    data: TokenizedPool,
    epochs: list[np.ndarray],
    cfg: Any,
    order_seed: int,
    run_dir: Path,
    accelerator: Accelerator,
    pad_id: int,
    model_id: str = "",
    on_step: Callable[[int, float], None] | None = None,
) -> TrainOutcome:
    """Train `model` in place on `epochs` (pool rows per epoch); resumes from run_dir/checkpoints."""
    start_time = time.perf_counter()
    batches = global_batches(epochs, order_seed, cfg.global_batch_size)
    total = len(batches)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total), num_training_steps=total
    )
    ckpt_dir = Path(run_dir) / "checkpoints"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    recipe = {k: v for k, v in dict(cfg).items() if k not in ("checkpoint_every", "keep_checkpoint")}
    fingerprint = plan_fingerprint(epochs, recipe, order_seed, model_id)
    torch.manual_seed(order_seed)  # dropout and any other randomness inside the model
    start = 0
    found = latest_checkpoint(ckpt_dir)
    if found is not None:
        start = load_checkpoint(found, model, optimizer, scheduler, fingerprint)
        log.info("resumed from checkpoint %s (step %d of %d)", found.name, start, total)
    model.to(accelerator.device)
    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    log_path = Path(run_dir) / "train_log.jsonl"
    if accelerator.is_main_process:
        trim_log(log_path, start)
    seen_examples = sum(len(rows) for _, rows in batches[:start])
    seen_tokens = int(sum(data.lengths[rows].sum() for _, rows in batches[:start]))
    seen_response = sum(response_token_count(data, rows) for _, rows in batches[:start])
    loss_value = float("nan")
    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        unit="step",
        disable=not accelerator.is_main_process,
        mininterval=0.2 if sys.stderr.isatty() else 15.0,  # keep batch logs (Slurm) short
    )
    for step in range(start, total):
        epoch, rows = batches[step]
        n_resp = max(1, response_token_count(data, rows))
        mine = rows[rank::world]
        optimizer.zero_grad(set_to_none=True)
        local_loss = torch.zeros((), device=accelerator.device)
        for i in range(0, len(mine), cfg.micro_batch_size):
            batch = {
                k: v.to(accelerator.device)
                for k, v in collate(data, mine[i : i + cfg.micro_batch_size], pad_id).items()
            }
            with accelerator.autocast():
                loss = summed_response_loss(model, batch) / n_resp
            loss.backward()
            local_loss += loss.detach()
        _all_reduce_grads(params, accelerator)
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        loss_value = float(accelerator.reduce(local_loss, reduction="sum")) if world > 1 else float(local_loss)
        seen_examples += len(rows)
        seen_tokens += int(data.lengths[rows].sum())
        seen_response += response_token_count(data, rows)
        done = step + 1
        if accelerator.is_main_process:
            entry = {
                "step": done,
                "epoch": epoch,
                "loss": round(loss_value, 6),
                "lr": scheduler.get_last_lr()[0],
                "examples": seen_examples,
                "tokens": seen_tokens,
                "seconds": round(time.perf_counter() - start_time, 3),
            }
            with open(log_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch)
        epoch_end = done == total or batches[done][0] != epoch
        if done % cfg.checkpoint_every == 0 or epoch_end:
            if accelerator.is_main_process:
                save_checkpoint(ckpt_dir, done, model, optimizer, scheduler, fingerprint)
            accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(done, loss_value)
    bar.close()
    return TrainOutcome(
        steps=total,
        examples_seen=seen_examples,
        tokens_seen=seen_tokens,
        response_tokens_seen=seen_response,
        final_loss=loss_value,
        seconds=time.perf_counter() - start_time,
        resumed_from_step=start,
    )
