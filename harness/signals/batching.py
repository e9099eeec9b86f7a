"""Shared plumbing of the signal computations: length-sorted batches, eval mode, device checks."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from harness.errors import HarnessError
from harness.tokenization import TokenizedPool
from harness.training import collate


def as_rows(rows: np.ndarray | list[int]) -> np.ndarray:
    """Pool row indices as a 1-d int64 array."""
    out = np.asarray(rows, dtype=np.int64).reshape(-1)
    return out


def device_batch(data: TokenizedPool, rows: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The rows collated into one right-padded batch (as the training loop builds it), on `device`."""
    return {k: v.to(device) for k, v in collate(data, rows, pad_id).items()}


def length_sorted_batches(data: TokenizedPool, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Positions into `rows`, grouped into batches of similar length (shortest first) so that padding
    is small; callers put results back at these positions, so the output order is the caller's."""
    if batch_size < 1:
        raise HarnessError(f"signal batch_size must be at least 1, got {batch_size}")
    order = np.argsort(data.lengths[rows], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the duration (signals must be deterministic); the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def quiet_vmap() -> Iterator[None]:
    """Silence torch's note that an op (CPU SDPA) has no vmap batching rule: the fallback is exact."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
        yield


def check_device(model: torch.nn.Module, device: torch.device | str) -> torch.device:
    """The device as a torch.device; the model's parameters must already be there."""
    device = torch.device(device)
    first = next(model.parameters(), None)
    if first is not None and first.device.type != device.type:
        raise HarnessError(f"the model is on {first.device} but signals were asked on {device}; move the model first")
    return device
