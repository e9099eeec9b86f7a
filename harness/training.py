"""The one training recipe: loss on response tokens, AdamW, warm-up then decay, a global batch that
does not depend on the number of processes, seeded data order, checkpoints that a rerun resumes from."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from harness.config import FLOAT16_TRAINING
from harness.errors import HarnessError
from harness.interrupt import Interrupted, StopFlag
from harness.runtime import together
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
    seconds_total: float = 0.0
    attempts: list[dict] = field(default_factory=list)


def epoch_orders(epochs: list[np.ndarray], order_seed: int) -> list[np.ndarray]:
    """Each epoch's rows in a seeded random order (one independent stream per epoch). The rows are sorted
    first, so the order never depends on the order in which a selector listed its examples."""
    return [stage_rng(order_seed, f"epoch-{e}").permutation(np.sort(rows)) for e, rows in enumerate(epochs)]


def global_batches(
    epochs: list[np.ndarray], order_seed: int, batch_size: int, max_steps: int | None = None
) -> list[tuple[int, np.ndarray]]:
    """(epoch, rows) of every optimizer step, in order; the last batch of an epoch may be smaller.
    With max_steps the plan stops after that many steps (compute=steps)."""
    out = []
    for e, rows in enumerate(epoch_orders(epochs, order_seed)):
        out.extend((e, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size))
    return out[:max_steps] if max_steps is not None else out


def steps_per_epoch(k: int, batch_size: int) -> int:
    return -(-int(k) // int(batch_size))


def count_steps(epochs: list[np.ndarray], batch_size: int, max_steps: int | None = None) -> int:
    """Optimizer steps of a plan: ceil(len / batch) per epoch (what the learning-rate schedule spans)."""
    total = sum(steps_per_epoch(len(rows), batch_size) for rows in epochs)
    return min(total, max_steps) if max_steps is not None else total


@dataclass(frozen=True)
class ComputePlan:
    """How long the proxy trains: `epochs` passes over k examples, cut at `max_steps` under compute=steps."""

    compute: str
    epochs: int
    max_steps: int | None
    steps: int


def compute_plan(cfg: Any, k: int, n_pool: int) -> ComputePlan:
    """Training length under the recipe's convention: a fixed number of epochs over the selection (LESS, BIDS),
    or the same optimizer steps for every cell (RS2): `train.steps`, or by default the steps of `epochs`
    passes over the whole pool; the selection is then repeated as often as that takes."""
    per_epoch = steps_per_epoch(k, cfg.global_batch_size)
    if cfg.compute == "epochs":
        return ComputePlan("epochs", int(cfg.epochs), None, per_epoch * int(cfg.epochs))
    full_epoch = steps_per_epoch(n_pool, cfg.global_batch_size)
    target = int(cfg.steps) if cfg.steps is not None else int(cfg.epochs) * full_epoch
    return ComputePlan("steps", -(-target // per_epoch), target, target)


def training_flops(n_params: int, n_trainable: int, tokens: int) -> float:
    """Estimated training FLOPs: forward 2*N*T, backward through the activations 2*N*T, weight gradients
    2*N_trainable*T (= the usual 6*N*T when every parameter trains; less under LoRA)."""
    return float(4 * n_params * tokens + 2 * n_trainable * tokens)


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


def optimizer_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """Adam's state keyed by parameter name (not by index), as the gradient features of LESS need it."""
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if p.requires_grad and state:
            out[name] = {
                "exp_avg": state["exp_avg"].detach().cpu().clone(),
                "exp_avg_sq": state["exp_avg_sq"].detach().cpu().clone(),
                "step": float(state["step"]),
            }
    return out


def plan_fingerprint(epochs: list[np.ndarray], cfg: Any, order_seed: int, model_id: str) -> str:
    """What a checkpoint belongs to: the data plan, the recipe, the order seed and the model."""
    h = hashlib.sha256()
    for rows in epochs:
        h.update(np.sort(np.asarray(rows, dtype=np.int64)).tobytes())
        h.update(b"|")
    h.update(json.dumps([cfg, order_seed, model_id], sort_keys=True, default=str).encode())
    return h.hexdigest()


RECIPE_NOT_IN_PLAN = ("checkpoint_every", "keep_checkpoint", "micro_batch_size")
"""Recipe keys that do not change the update: a run may resume with other values (e.g. a smaller micro-batch
after running out of memory)."""


def recipe_of(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(cfg).items() if k not in RECIPE_NOT_IN_PLAN}


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    found = sorted(p for p in ckpt_dir.iterdir() if CHECKPOINT_RE.match(p.name) and (p / "state.pt").exists())
    return found[-1] if found else None


def checkpoint_step(run_dir: Path) -> int | None:
    """Step of the checkpoint a rerun of run_dir would resume from (None when there is none)."""
    found = latest_checkpoint(Path(run_dir) / "checkpoints")
    return int(CHECKPOINT_RE.match(found.name).group(1)) if found else None


def check_resumable(run_dir: Path, fingerprint: str) -> int | None:
    """Raise the one-line error before anything is written when run_dir holds a checkpoint of another plan;
    returns the step a resume would continue from."""
    found = latest_checkpoint(Path(run_dir) / "checkpoints")
    if found is None:
        return None
    state = torch.load(found / "state.pt", map_location="cpu", weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise HarnessError(
            f"checkpoint {found} belongs to a different selection or recipe; pass rerun=true to start over "
            "(what is there is archived) or choose another hydra.run.dir"
        )
    return int(state["step"])


def _write_state(final: Path, state: dict[str, Any]) -> None:
    """torch.save into a temporary folder beside `final`, then rename (a reader sees all or nothing)."""
    if final.exists():
        return
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    try:
        tmp.rename(final)
    except OSError:  # another writer won the race with the same content
        shutil.rmtree(tmp, ignore_errors=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random state: torch's CPU generator and, on a GPU, the generator of its device."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def gather_rng_states(accelerator: Accelerator) -> list[dict[str, Any]]:
    """Every process's random state, by rank (a collective: every process calls it at the same step). Each
    process draws its own dropout masks, so a resume restores each process's own state."""
    mine = rng_state(accelerator.device)
    if accelerator.num_processes == 1:
        return [mine]
    out: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(out, mine)
    return out


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    fingerprint: str,
    clock: dict,
    loss: float = float("nan"),
    rank_rng: list[dict[str, Any]] | None = None,
) -> None:
    """Write step-N atomically (with the loss of step N, which a resume at the last step reports, and the random
    state of every process, `rank_rng`) and drop older step checkpoints."""
    final = ckpt_dir / f"step-{step:08d}"
    state = {
        "step": step,
        "fingerprint": fingerprint,
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),  # the main process's (what checkpoints without rank_rng hold)
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "rank_rng": rank_rng,
        "clock": clock,
        "loss": float(loss),
    }
    _write_state(final, state)
    for old in ckpt_dir.iterdir():
        if CHECKPOINT_RE.match(old.name) and old != final:
            shutil.rmtree(old, ignore_errors=True)


def save_epoch_checkpoint(folder: Path, epoch: int, step: int, model, optimizer, avg_lr: float) -> None:
    """A kept end-of-epoch checkpoint (warm-up runs): trainable weights and Adam's moments by parameter name."""
    state = {
        "epoch": epoch,
        "step": step,
        "avg_lr": avg_lr,
        "model": trainable_state(model),
        "moments": optimizer_moments(model, optimizer),
        "betas": optimizer.param_groups[0]["betas"],
        "eps": optimizer.param_groups[0]["eps"],
    }
    _write_state(Path(folder) / f"epoch-{epoch:03d}", state)


def load_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    fingerprint: str,
    *,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> tuple[int, dict, float]:
    """Restore weights, optimizer, schedule and RNG onto the model's device; returns (step, clock, loss of that
    step). Process `rank` of `world` gets its own random state back; a checkpoint without one per process (older,
    or written by another number of processes) gives every process the main process's."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise HarnessError(
            f"checkpoint {path} belongs to a different selection or recipe; pass rerun=true to start over "
            "(what is there is archived) or choose another hydra.run.dir"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(state["optimizer"])  # moments follow their parameters' device
    scheduler.load_state_dict(state["scheduler"])
    per_rank = state.get("rank_rng")
    if per_rank is not None and len(per_rank) == world:
        mine = per_rank[rank]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], device)
    else:
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    clock = state.get("clock") or {"seconds": 0.0, "attempts": []}
    return int(state["step"]), clock, float(state.get("loss", float("nan")))


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


def learning_rates(cfg: Any, total: int) -> list[float]:
    """The learning rate of every optimizer step of a plan (the schedule simulated on a dummy optimizer)."""
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = get_scheduler(
        cfg.scheduler, dummy, num_warmup_steps=math.ceil(cfg.warmup_ratio * total), num_training_steps=total
    )
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        dummy.step()
        scheduler.step()
    return rates


def _any_process(flag: bool, accelerator: Accelerator) -> bool:
    """True on every process when any process has the flag (a signal may reach the ranks at different steps)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


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
    *,
    max_steps: int | None = None,
    stop_at: int | None = None,
    epoch_checkpoints: Path | None = None,
    stop: StopFlag | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train `model` in place on `epochs` (pool rows per epoch, cut at max_steps); resumes from
    run_dir/checkpoints. With epoch_checkpoints, a checkpoint with Adam's moments is kept after every epoch.
    With stop_at, training stops after that many steps while the schedule still spans the whole plan (a model
    taken early in a full-length run)."""
    attempt_start = time.perf_counter()
    if any(p.requires_grad and p.dtype == torch.float16 for p in model.parameters()):
        raise HarnessError(FLOAT16_TRAINING)  # before anything is written
    plan = global_batches(epochs, order_seed, cfg.global_batch_size, max_steps)
    scheduled = len(plan)
    batches = plan[:stop_at] if stop_at is not None else plan
    total = len(batches)
    model.to(accelerator.device)  # before the optimizer and any checkpoint: Adam's moments live beside the weights
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    scheduler = get_scheduler(
        cfg.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * scheduled),
        num_training_steps=scheduled,
    )
    ckpt_dir = Path(run_dir) / "checkpoints"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    recipe = {**recipe_of(cfg), "max_steps": max_steps, **({"stop_at": stop_at} if stop_at is not None else {})}
    fingerprint = plan_fingerprint(epochs, recipe, order_seed, model_id)
    torch.manual_seed(order_seed)  # dropout and any other randomness inside the model
    start, clock, loss_value = 0, {"seconds": 0.0, "attempts": []}, float("nan")
    found = latest_checkpoint(ckpt_dir)
    if found is not None:  # a resume at the last step trains no step: the loss is the checkpoint's
        start, clock, loss_value = load_checkpoint(
            found,
            model,
            optimizer,
            scheduler,
            fingerprint,
            rank=accelerator.process_index,
            world=accelerator.num_processes,
            device=accelerator.device,
        )
        log.info("resumed from checkpoint %s (step %d of %d)", found.name, start, total)
    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    log_path = Path(run_dir) / "train_log.jsonl"
    together(accelerator, lambda: trim_log(log_path, start), main_only=True)
    seen_examples = sum(len(rows) for _, rows in batches[:start])
    seen_tokens = int(sum(data.lengths[rows].sum() for _, rows in batches[:start]))
    seen_response = sum(response_token_count(data, rows) for _, rows in batches[:start])
    rates = learning_rates(cfg, scheduled)[:total] if epoch_checkpoints is not None else []
    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        unit="step",
        disable=not (accelerator.is_main_process and progress),
        mininterval=0.2 if sys.stderr.isatty() else 15.0,  # keep batch logs (Slurm) short
    )

    def elapsed() -> float:
        return clock["seconds"] + time.perf_counter() - attempt_start

    def clock_now(done: int) -> dict:
        attempt = {"from_step": start, "to_step": done, "seconds": round(time.perf_counter() - attempt_start, 3)}
        return {"seconds": elapsed(), "attempts": [*clock["attempts"], attempt]}

    if stop is not None:
        stop.training = True
    try:
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
            lr = scheduler.get_last_lr()[0]  # the rate this step uses (scheduler.step() moves on to the next)
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
                    "lr": lr,
                    "examples": seen_examples,
                    "tokens": seen_tokens,
                    "seconds": round(elapsed(), 3),
                }
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch)
            epoch_end = done == total or batches[done][0] != epoch
            stopping = _any_process(stop is not None and stop.requested, accelerator)
            if done % cfg.checkpoint_every == 0 or epoch_end or stopping:
                rank_rng = gather_rng_states(accelerator)  # every process, before the main one writes

                def write(done=done, epoch=epoch, epoch_end=epoch_end, loss=loss_value, rank_rng=rank_rng) -> None:
                    # the kept epoch checkpoint first: a resume point past an epoch's end implies its checkpoint
                    if epoch_end and epoch_checkpoints is not None:
                        avg_lr = float(np.mean([r for (e, _), r in zip(batches, rates) if e == epoch]))
                        save_epoch_checkpoint(epoch_checkpoints, epoch, done, model, optimizer, avg_lr)
                    save_checkpoint(
                        ckpt_dir,
                        done,
                        model,
                        optimizer,
                        scheduler,
                        fingerprint,
                        clock_now(done),
                        loss,
                        rank_rng=rank_rng,
                    )

                together(accelerator, write, main_only=True)  # the others wait, and stop if the main one cannot write
            if stopping:
                raise Interrupted(stop.signame or "SIGTERM", step=done, stage="training")
            if on_step is not None:
                on_step(done, loss_value)
    finally:
        if stop is not None:
            stop.training = False
        bar.close()
    if stop is not None and stop.requested:  # a signal after the last step's check: its checkpoint is written
        raise Interrupted(stop.signame or "SIGTERM", step=total, stage="training")
    final_clock = clock_now(total)
    return TrainOutcome(
        steps=total,
        examples_seen=seen_examples,
        tokens_seen=seen_tokens,
        response_tokens_seen=seen_response,
        final_loss=loss_value,
        seconds=time.perf_counter() - attempt_start,
        resumed_from_step=start,
        seconds_total=final_clock["seconds"],
        attempts=final_clock["attempts"],
    )
