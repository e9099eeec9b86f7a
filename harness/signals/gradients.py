"""LESS gradient features (Xia et al., 2024): per-example gradients of the trainable (LoRA) parameters,
turned into the Adam update direction for training examples (plain gradients for validation examples),
randomly projected and L2-normalised; plus a resumable store for them (shard files, assembled into one .npy)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.signals.batching import as_rows, check_device
from harness.signals.per_example import iter_per_example_grads, trainable_names
from harness.signals.projection import Projector
from harness.storage import DONE_MARKER, atomic_write, atomic_write_json, atomic_write_text, share_mode
from harness.tokenization import TokenizedPool

FORMULAS = ("paper", "authors")
GRADIENT_KINDS = ("adam", "sgd")
ADAM_ELEMENTS = 1 << 22
"""Entries of the gradients turned into Adam directions at once (bounds the one temporary)."""
PROJECT_ROWS = 256
PROJECT_BYTES = 256 << 20
"""Batches of gradients are projected together, up to this many rows or bytes of float32 gradients: the
projection is one matrix product, and a CPU runs it at about 1.4x the speed with 256 rows as with 64."""


def adam_direction(
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    formula: str = "paper",
    *,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Adam update direction of each gradient row (grads [b, P] or [P]; moments [P]), in float32.

    Both formulas first fold the gradient into the checkpoint's moments, as the next optimizer step
    would: m' = b1*m + (1-b1)*g, v' = b2*v + (1-b2)*g^2.
    - "paper" (LESS, eq. for Gamma in section 2.2): bias-corrected moments and eps outside the root,
      m'/(1-b1^t) / (sqrt(v'/(1-b2^t)) + eps). The paper's t counts the update these moments belong
      to; here t = step + 1 with step = torch's state["step"] (updates already folded in), so the result
      is exactly the step torch.optim.Adam/AdamW would take (divided by lr, without weight decay) if
      this example were the next batch.
    - "authors" (LESS code, collect_grad_reps.py): no bias correction and eps inside the root,
      m' / sqrt(v' + eps). With eps = 1e-8 this differs from "paper" wherever v' is tiny or t is small.
    The bias corrections are folded into the per-parameter constants, so a block takes five elementwise
    passes. With `scratch` (float32 grads, a flat buffer of at least grads.numel() entries) the result
    overwrites `grads` and the second moment lives in `scratch`: no allocation.
    """
    if formula not in FORMULAS:
        raise HarnessError(f"adam formula must be one of {', '.join(FORMULAS)}, got {formula!r}")
    b1, b2 = betas
    c1, c2 = (1.0, 1.0) if formula == "authors" else (1 / (1 - b1 ** (int(step) + 1)), 1 / (1 - b2 ** (int(step) + 1)))
    inplace = scratch is not None and grads.dtype == torch.float32
    g = grads if inplace else grads.float()
    v_out = scratch[: g.numel()].view(g.shape) if inplace else None
    v = torch.addcmul(exp_avg_sq.float() * (b2 * c2), g, g, value=(1 - b2) * c2, out=v_out)  # v' (bias-corrected)
    m = torch.add(exp_avg.float() * (b1 * c1), g, alpha=(1 - b1) * c1, out=g if inplace else None)  # m'
    if formula == "authors":
        return m.div_(v.add_(eps).sqrt_())
    return m.div_(v.sqrt_().add_(eps))


def flat_moments(
    model: torch.nn.Module, moments: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """exp_avg and exp_avg_sq flattened in trainable_names(model) order, looked up by parameter name."""
    names = trainable_names(model)
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in moments]
    if missing:
        raise HarnessError(
            f"the checkpoint has no Adam moments for parameter {missing[0]!r} ({len(missing)} missing); "
            "use the checkpoint of this model's warm-up run"
        )
    m_parts, v_parts = [], []
    for n in names:
        m, v = moments[n]
        if m.shape != params[n].shape or v.shape != params[n].shape:
            raise HarnessError(
                f"Adam moments for {n!r} have shape {tuple(m.shape)}, the parameter {tuple(params[n].shape)}; "
                "use the checkpoint of this model's warm-up run"
            )
        m_parts.append(m.reshape(-1).to(device, torch.float32))
        v_parts.append(v.reshape(-1).to(device, torch.float32))
    return torch.cat(m_parts), torch.cat(v_parts)


@dataclass
class AdamState:
    """Adam moments by parameter name, the step count and the hyper-parameters of a checkpoint."""

    moments: dict[str, tuple[torch.Tensor, torch.Tensor]]
    step: int
    betas: tuple[float, float]
    eps: float


def adam_state_from_optimizer(model: torch.nn.Module, optimizer_state: dict[str, Any]) -> AdamState:
    """Name the moments of a torch Adam/AdamW state_dict (as harness.training saves it: the optimizer
    was given the trainable parameters in model.named_parameters() order)."""
    names = trainable_names(model)
    groups = optimizer_state["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    if len(ids) != len(names):
        raise HarnessError(
            f"the optimizer state covers {len(ids)} parameters, the model has {len(names)} trainable ones; "
            "load the adapters of the same warm-up run before its optimizer state"
        )
    state = optimizer_state["state"]
    params = dict(model.named_parameters())
    moments, steps = {}, []
    for i, name in zip(ids, names):
        s = state.get(i)
        if s is None:  # never updated: zero moments
            zero = torch.zeros_like(params[name], dtype=torch.float32, device="cpu")
            moments[name] = (zero, zero)
            continue
        moments[name] = (s["exp_avg"], s["exp_avg_sq"])
        steps.append(int(float(s["step"])))
    return AdamState(moments, max(steps, default=0), tuple(groups[0]["betas"]), float(groups[0]["eps"]))


def gradient_features(
    model: torch.nn.Module,
    data: TokenizedPool,
    rows: np.ndarray,
    *,
    kind: str,
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    step: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    formula: str = "paper",
    projector: Projector,
    batch_size: int,
    device: torch.device | str,
    pad_id: int,
) -> np.ndarray:
    """[len(rows), d] float32 unit vectors: each example's gradient over the trainable parameters
    (kind="adam": as an Adam update direction from the checkpoint's moments, for training examples;
    kind="sgd": the plain gradient, for validation examples), projected, then L2-normalised."""
    if kind not in GRADIENT_KINDS:
        raise HarnessError(f"gradient feature kind must be adam or sgd, got {kind!r}")
    rows = as_rows(rows)
    device = check_device(model, device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if projector.n_params != n_params:
        raise HarnessError(
            f"the projector was built for {projector.n_params} parameters, the model trains {n_params}; "
            "build it from the model's trainable parameter count"
        )
    if kind == "adam":
        if moments is None:
            raise HarnessError("adam gradient features need the checkpoint's Adam moments; pass moments=")
        exp_avg, exp_avg_sq = flat_moments(model, moments, device)
    out = np.zeros((len(rows), projector.dim), dtype=np.float32)
    group_rows = min(PROJECT_ROWS, PROJECT_BYTES // (4 * n_params))
    # Adam directions in blocks of about ADAM_ELEMENTS entries, with one reused temporary
    rows_at_once, cols_at_once = max(1, ADAM_ELEMENTS // n_params), min(n_params, ADAM_ELEMENTS)
    scratch = torch.empty(rows_at_once * cols_at_once if kind == "adam" else 0, device=device)
    for pos, flat in iter_per_example_grads(
        model, data, rows, batch_size=batch_size, device=device, pad_id=pad_id, group_rows=group_rows
    ):
        if kind == "adam":
            for r in range(0, len(pos), rows_at_once):
                for c in range(0, n_params, cols_at_once):
                    block, cols = flat[r : r + rows_at_once, c : c + cols_at_once], slice(c, c + cols_at_once)
                    adam_direction(block, exp_avg[cols], exp_avg_sq[cols], step, betas, eps, formula, scratch=scratch)
        out[pos] = F.normalize(projector.project(flat), dim=1).cpu().numpy()
    return out


STORE_DTYPES = ("float16", "float32")


class FeatureStore:
    """Rows of features in one .npy file (read memory-mapped), computed shard by shard.

    Each shard is committed as a file of its own (shards/<k>.npy, written atomically: the file is the shard's
    completion marker), so an interrupted fill leaves only whole shards and the next fill computes the missing
    ones, and several processes on several nodes may fill disjoint shards at once without ever writing one file
    (memory-mapped writes from several NFS clients write back whole pages, and shards share pages at their
    edges). The finishing call (`fill(..., finish=True)`, one process) streams the shards in order into
    features.npy (temporary name, then rename; memory bounded by one shard), marks the store complete and
    deletes the shard files.

    float16 is the default: rows are unit vectors of d ~ 8192 entries of size ~1/sqrt(d) ~ 0.01, which float16
    holds to about 4 significant digits (cosine error ~1e-4, far below the differences selection acts on) at
    half the disk and page-cache footprint of float32 (LESS reports 17.7 GB for its store)."""

    FILE = "features.npy"
    SHARDS = "shards"

    def __init__(
        self,
        path: Path | str,
        n_rows: int,
        dim: int,
        *,
        dtype: str = "float16",
        shard_rows: int = 4096,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in STORE_DTYPES:
            raise HarnessError(f"feature store dtype must be float16 or float32, got {dtype!r}")
        if shard_rows < 1:
            raise HarnessError(f"feature store shard_rows must be at least 1, got {shard_rows}")
        self.path = Path(path)
        self.n_rows, self.dim, self.dtype, self.shard_rows = int(n_rows), int(dim), dtype, int(shard_rows)
        self.meta = {"n_rows": self.n_rows, "dim": self.dim, "dtype": dtype, "shard_rows": self.shard_rows}
        self.meta["meta"] = json.loads(json.dumps(meta or {}, default=str))
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != self.meta:
                raise HarnessError(
                    f"feature store {self.path} holds other features ({found}); delete it or choose another path"
                )

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    def shard_bounds(self, k: int) -> tuple[int, int]:
        """Rows [start, stop) of shard k."""
        start = k * self.shard_rows
        return start, min(self.n_rows, start + self.shard_rows)

    def _shard_file(self, k: int) -> Path:
        return self.path / self.SHARDS / f"{k:06d}.npy"

    @property
    def complete(self) -> bool:
        return (self.path / DONE_MARKER).exists()

    def missing_shards(self) -> list[int]:
        """Shards not yet committed, in order."""
        if self.complete:
            return []
        return [k for k in range(self.n_shards) if not self._shard_file(k).exists()]

    def _ensure_meta(self) -> None:
        if not (self.path / "meta.json").exists():  # every writer writes the same content, atomically
            atomic_write_json(self.path / "meta.json", self.meta)

    def write_shard(self, k: int, values: np.ndarray) -> None:
        """Write and commit shard k (values [rows of shard k, dim]) to its own file."""
        start, stop = self.shard_bounds(k)
        values = np.asarray(values)
        if values.shape != (stop - start, self.dim):
            raise ValueError(f"shard {k} needs shape {(stop - start, self.dim)}, got {values.shape}")
        self._ensure_meta()
        target = self._shard_file(k)
        atomic_write(target, partial(_write_npy, array=np.ascontiguousarray(values, dtype=self.dtype)))

    def _read_shard(self, k: int) -> np.ndarray:
        start, stop = self.shard_bounds(k)
        values = np.load(self._shard_file(k), allow_pickle=False)
        if values.shape != (stop - start, self.dim) or values.dtype != np.dtype(self.dtype):
            raise HarnessError(
                f"feature store {self.path}: shard file {self._shard_file(k).name} holds {values.dtype} "
                f"{values.shape}, not {self.dtype} {(stop - start, self.dim)}; delete it and fill again"
            )
        return values

    def _assemble(self) -> None:
        """Stream the committed shards, in order, into features.npy (temporary name, then rename)."""
        for stale in self.path.glob(f".{self.FILE}.*.tmp"):  # left by an assembly that was killed
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{self.FILE}.", suffix=".tmp")
        os.close(fd)
        try:
            if self.n_rows == 0:
                with open(tmp, "wb") as fh:
                    _write_npy(fh, np.zeros((0, self.dim), dtype=self.dtype))
            else:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(self.n_rows, self.dim))
                for k in range(self.n_shards):
                    start, stop = self.shard_bounds(k)
                    out[start:stop] = self._read_shard(k)
                out.flush()
                del out
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            share_mode(Path(tmp))
            os.replace(tmp, self.path / self.FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def fill(
        self, compute: Callable[[int, int], np.ndarray], shards: list[int] | None = None, finish: bool = True
    ) -> np.memmap | None:
        """Compute (compute(start, stop) -> [stop - start, dim]) and commit the missing shards (or the given
        ones: several processes each fill their own, with finish=False). With finish (one process, after the
        others are done), also compute any shard still missing, assemble features.npy from the shards, mark
        the store complete, delete the shard files and open it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._ensure_meta()
        if self.complete:
            shards = []
        for k in self.missing_shards() if shards is None else shards:
            start, stop = self.shard_bounds(k)
            self.write_shard(k, compute(start, stop))
        if not finish:
            return None
        if not self.complete:
            for k in self.missing_shards():  # shards given above and others left to compute
                start, stop = self.shard_bounds(k)
                self.write_shard(k, compute(start, stop))
            self._assemble()
            atomic_write_text(self.path / DONE_MARKER, "ok\n")
        shutil.rmtree(self.path / self.SHARDS, ignore_errors=True)
        return self.open()

    def open(self) -> np.memmap:
        """The finished store, read-only and memory-mapped ([n_rows, dim])."""
        if not self.complete:
            raise HarnessError(f"feature store {self.path} is incomplete; run its fill() again to finish it")
        return np.load(self.path / self.FILE, mmap_mode="r")


def _write_npy(fh: BinaryIO, array: np.ndarray) -> None:
    np.lib.format.write_array(fh, array, allow_pickle=False)
