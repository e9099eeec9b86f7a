"""RDS+ embeddings (Ivison et al., 2025): the proxy model's final-layer hidden states, mean-pooled with
weights that grow with position, then L2-normalised so dot products are cosines."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.signals.batching import as_rows, check_device, device_batch, eval_mode, length_sorted_batches
from harness.tokenization import TokenizedPool


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[b, T, hidden] output of the last layer (after the final norm). Calls the decoder stack directly
    where the model exposes it, which skips the vocabulary projection."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wrapper
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is not None and decoder is not base:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def position_weighted_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sum_t w_t h_t with w_t = t / sum_{s<=T} s over an example's real tokens t = 1..T (padding gets 0)."""
    mask = attention_mask.float()
    positions = torch.cumsum(mask, dim=1) * mask  # 1..T on real tokens, 0 on padding
    weights = positions / positions.sum(1, keepdim=True).clamp_min(1)
    return torch.einsum("bt,bth->bh", weights, hidden.float())


def embeddings(
    model: torch.nn.Module,
    data: TokenizedPool,
    rows: np.ndarray,
    *,
    batch_size: int,
    device: torch.device | str,
    pad_id: int,
) -> np.ndarray:
    """RDS+ embedding of every row (n x hidden, float32, unit L2 norm), in the order of `rows`; the whole
    example (prompt and response) is embedded."""
    rows = as_rows(rows)
    device = check_device(model, device)
    out: np.ndarray | None = None
    with eval_mode(model), torch.no_grad():
        for pos in length_sorted_batches(data, rows, batch_size):
            batch = device_batch(data, rows[pos], pad_id, device)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            pooled = F.normalize(position_weighted_mean(final_hidden_states(model, ids, mask), mask), dim=1)
            if out is None:
                out = np.zeros((len(rows), pooled.size(1)), dtype=np.float32)
            out[pos] = pooled.cpu().numpy()
    if out is None:
        hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0))
        out = np.zeros((0, hidden), dtype=np.float32)
    return out
