"""Per-example signals of a proxy model: response-token loss, EL2N and gradient norms (GraNd).

All of them run in batches. Per-example gradients come from one batched forward and backward pass:
when every trainable parameter is the weight or bias of a linear layer (LoRA adapters, or LESS's
attention projections), from the layers' inputs and output gradients (the gradient of example i is
the sum over its tokens of outer products, as in Opacus); otherwise from torch.func (vmap over grad
of a functional call of the model). Both equal a one-example backward pass to float tolerance.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from harness.signals.batching import (
    as_rows,
    check_device,
    device_batch,
    eval_mode,
    length_sorted_batches,
    quiet_vmap,
)
from harness.tokenization import TokenizedPool

EL2N_TOKEN_CHUNK = 4096
"""Response tokens whose float32 softmax is taken at once (bounds memory for large vocabularies)."""


def _response_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: mean next-token cross-entropy and mean EL2N over response tokens (float32).

    logits [b, T, V] predict labels shifted by one; labels are -100 outside the response."""
    targets = labels[:, 1:]
    mask = targets != -100
    example = torch.arange(targets.size(0), device=targets.device).unsqueeze(1).expand_as(targets)[mask]
    picked = logits[:, :-1][mask]  # [N, V], only response positions
    tgt = targets[mask]
    nll = torch.empty(tgt.numel(), dtype=torch.float32, device=logits.device)
    el2n = torch.empty_like(nll)
    for s in range(0, tgt.numel(), EL2N_TOKEN_CHUNK):
        part = picked[s : s + EL2N_TOKEN_CHUNK].float()
        logp = torch.log_softmax(part, dim=-1)
        logp_y = logp.gather(1, tgt[s : s + EL2N_TOKEN_CHUNK, None]).squeeze(1)
        p = logp.exp()
        # ||p - onehot(y)||^2 = sum p^2 - 2 p_y + 1
        sq = (p * p).sum(-1) - 2 * logp_y.exp() + 1
        nll[s : s + EL2N_TOKEN_CHUNK] = -logp_y
        el2n[s : s + EL2N_TOKEN_CHUNK] = sq.clamp_min(0).sqrt()
    count = mask.sum(1).float()
    b = targets.size(0)
    loss = torch.zeros(b, device=logits.device).index_add_(0, example, nll) / count
    score = torch.zeros(b, device=logits.device).index_add_(0, example, el2n) / count
    return loss, score  # NaN for an example without response tokens


def losses_and_el2n(
    model: torch.nn.Module,
    data: TokenizedPool,
    rows: np.ndarray,
    *,
    batch_size: int,
    device: torch.device | str,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per example (in the order of `rows`): mean response-token cross-entropy and EL2N, the L2 distance
    between the softmax and the one-hot target averaged over response tokens. float32 math throughout."""
    rows = as_rows(rows)
    device = check_device(model, device)
    losses = np.full(len(rows), np.nan, dtype=np.float32)
    scores = np.full(len(rows), np.nan, dtype=np.float32)
    with eval_mode(model), torch.no_grad():
        for pos in length_sorted_batches(data, rows, batch_size):
            batch = device_batch(data, rows[pos], pad_id, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            loss, score = _response_stats(logits, batch["labels"])
            losses[pos] = loss.cpu().numpy()
            scores[pos] = score.cpu().numpy()
    return losses, scores


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters in model.named_parameters() order: the order of every flat
    gradient vector here, and the order harness.training hands the parameters to AdamW."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _example_loss(model: torch.nn.Module, params: dict[str, torch.Tensor], ids: torch.Tensor, labels: torch.Tensor):
    """One example's mean response-token loss as a function of the trainable parameters.

    No attention mask is passed: batches are right-padded and attention is causal, so no real token
    ever attends to padding, and padded positions carry no loss. This keeps data-dependent mask logic
    out of vmap, and the result equals the example run alone (the tests check it)."""
    logits = functional_call(model, params, args=(), kwargs={"input_ids": ids.unsqueeze(0), "use_cache": False})
    return _per_example_losses(logits.logits, labels.unsqueeze(0))[0]


def _per_example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[b] mean response-token cross-entropy of each example (float32): the loss both gradient paths differentiate."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != -100
    picked = logp.gather(2, targets.clamp_min(0).unsqueeze(2)).squeeze(2)
    return -(picked * mask).sum(1) / mask.sum(1).clamp_min(1)


def linear_owners(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Linear, str]] | None:
    """Trainable parameter name -> (its nn.Linear, "weight" or "bias"), or None when some trainable
    parameter belongs to anything else (embeddings, norms): then only the vmap path applies."""
    owners: dict[str, tuple[torch.nn.Linear, str]] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            for kind in ("weight", "bias"):
                param = getattr(module, kind)
                if param is not None and param.requires_grad:
                    owners[f"{module_name}.{kind}" if module_name else kind] = (module, kind)
    names = trainable_names(model)
    if not names or set(names) - set(owners):
        return None
    return {n: owners[n] for n in names}


def _linear_grads(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    owners: dict[str, tuple[torch.nn.Linear, str]],
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example gradients of linear layers from one batched pass: for y = x W^T + c, example i's
    gradient is sum_t g_it^T x_it for W and sum_t g_it for c, with g = d(sum of per-example losses)/dy.
    Examples do not interact (causal attention, right padding), so g_i is example i's own gradient.
    Returns the flat [b, P] float32 gradients (trainable_names(model) order; written into `out` when given)
    and name -> a view of them."""
    modules = list(dict.fromkeys(m for m, _ in owners.values()))
    calls: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in modules}

    def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls[module].append((args[0].detach(), output))

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        with torch.enable_grad():
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits
            total = _per_example_losses(logits, batch["labels"]).sum()
            outputs = [out for m in modules for _, out in calls[m]]
            out_grads = iter(torch.autograd.grad(total, outputs, allow_unused=True))
    finally:
        for h in handles:
            h.remove()
    b = batch["input_ids"].size(0)
    device = next(iter(owners.values()))[0].weight.device
    sizes = [getattr(m, kind).numel() for m, kind in owners.values()]
    flat = torch.empty(b, sum(sizes), dtype=torch.float32, device=device) if out is None else out
    views, start = {}, 0
    for (m, kind), size in zip(owners.values(), sizes):
        views[m, kind] = flat[:, start : start + size].view(b, *getattr(m, kind).shape)
        start += size
    written: set[tuple[torch.nn.Module, str]] = set()  # a layer called once writes its place, no zero-fill
    for m in modules:
        for x, _ in calls[m]:
            g = next(out_grads)
            if g is None:
                continue
            g, x = g.float().reshape(b, -1, g.size(-1)), x.float().reshape(b, -1, x.size(-1))
            for kind in ("weight", "bias"):
                place = views.get((m, kind))
                if place is None:
                    continue
                first = (m, kind) not in written
                written.add((m, kind))
                if kind == "weight":
                    torch.bmm(g.mT, x, out=place) if first else place.baddbmm_(g.mT, x)
                else:
                    place.copy_(g.sum(1)) if first else place.add_(g.sum(1))
    for key in views.keys() - written:  # a parameter the loss does not depend on
        views[key].zero_()
    return flat, {name: views[m, kind] for name, (m, kind) in owners.items()}


def per_example_grad_dict(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """name -> [b, *param.shape] gradient of each example's own mean response loss, for the trainable
    parameters: from the linear layers' inputs and output gradients when every trainable parameter
    is a linear layer's (one batched backward pass), else from one vmap(grad(...)) over the batch
    (`chunk_size` bounds how many at once)."""
    owners = linear_owners(model)
    if owners is not None:
        return _linear_grads(model, batch, owners)[1]
    return _vmap_grads(model, batch, chunk_size)


def _vmap_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int | None):
    """name -> [b, *param.shape] per-example gradients from one vmap(grad(...)) over the batch."""
    names = trainable_names(model)
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}

    def loss_fn(p, ids, labels):
        return _example_loss(model, p, ids, labels)

    with quiet_vmap():
        return vmap(grad(loss_fn), in_dims=(None, 0, 0), chunk_size=chunk_size)(
            params, batch["input_ids"], batch["labels"]
        )


def per_example_grads(
    model: torch.nn.Module,
    data: TokenizedPool,
    rows: np.ndarray,
    *,
    device: torch.device | str,
    pad_id: int,
    chunk_size: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flat per-example gradients [len(rows), P] (float32, on `device`) over the trainable parameters,
    concatenated in trainable_names(model) order (into `out` when given); rows form ONE batch."""
    rows = as_rows(rows)
    device = check_device(model, device)
    batch = device_batch(data, rows, pad_id, device)
    with eval_mode(model):
        owners = linear_owners(model)
        if owners is not None:
            return _linear_grads(model, batch, owners, out)[0]
        grads = _vmap_grads(model, batch, chunk_size)
    b = len(rows)
    parts = [grads[n].reshape(b, -1).float() for n in trainable_names(model)]
    return torch.cat(parts, dim=1) if out is None else torch.cat(parts, dim=1, out=out)


def iter_per_example_grads(
    model: torch.nn.Module,
    data: TokenizedPool,
    rows: np.ndarray,
    *,
    batch_size: int,
    device: torch.device | str,
    pad_id: int,
    group_rows: int = 0,
    chunk_size: int | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(positions into rows, flat gradients [len(positions), P]) for length-sorted batches of `rows`,
    several batches at a time up to `group_rows` rows (at least one batch). The gradients are a view of
    one buffer that the next group overwrites: large fresh allocations cost page faults on every batch."""
    rows = as_rows(rows)
    device = check_device(model, device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = length_sorted_batches(data, rows, batch_size)
    capacity = max(group_rows, max((len(pos) for pos in batches), default=0))
    buffer = torch.empty(min(capacity, len(rows)), n_params, dtype=torch.float32, device=device)
    group: list[np.ndarray] = []
    held = 0
    for pos in batches:
        if held + len(pos) > capacity:
            yield np.concatenate(group), buffer[:held]
            group, held = [], 0
        per_example_grads(
            model,
            data,
            rows[pos],
            device=device,
            pad_id=pad_id,
            chunk_size=chunk_size,
            out=buffer[held : held + len(pos)],
        )
        group.append(pos)
        held += len(pos)
    if group:
        yield np.concatenate(group), buffer[:held]


def grad_norms(
    model: torch.nn.Module,
    data: TokenizedPool,
    rows: np.ndarray,
    *,
    batch_size: int,
    device: torch.device | str,
    pad_id: int,
    chunk_size: int | None = None,
) -> np.ndarray:
    """GraNd: per example (in the order of `rows`) the L2 norm of the gradient of its mean response-token
    loss over the trainable parameters (LoRA adapters only for a peft model)."""
    rows = as_rows(rows)
    device = check_device(model, device)
    out = np.zeros(len(rows), dtype=np.float32)
    with eval_mode(model):
        for pos in length_sorted_batches(data, rows, batch_size):
            batch = device_batch(data, rows[pos], pad_id, device)
            grads = per_example_grad_dict(model, batch, chunk_size)
            sq = sum(g.reshape(len(pos), -1).float().square().sum(1) for g in grads.values())
            out[pos] = sq.sqrt().cpu().numpy()
    return out
