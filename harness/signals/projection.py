"""Random projections of gradient vectors from P to d dimensions that are never held as a dense d x P
matrix: blocks of the matrix are regenerated on demand from (seed, block index).

The matrix R (P x d) is defined block by block: block k holds input coordinates [k*B, (k+1)*B), with
B = max(1, block_entries // d), and is drawn by a torch.Generator seeded from a hash of (seed, k).
So any process that builds Projector(P, d, seed) on the same kind of device gets the same matrix,
and a block can be generated alone. `project` streams over the blocks: out = x @ R, with memory for
one block at a time. Blocks are kept in memory while they fit `cache_bytes`; when the whole matrix
fits (small P), later calls skip the generation entirely.

Kinds:
- "rademacher" (LESS, TRAK): R[i, j] = +-1/sqrt(d) with equal odds. Cost per example: 2*P*d flops.
- "sparse" (sparse Johnson-Lindenstrauss, Kane and Nelson's block construction): the output is split
  into s equal segments; each input coordinate lands on one random position in every segment with a
  random sign, scaled by 1/sqrt(s). Same norm-preservation guarantee in expectation, P*s work per
  example instead of P*d (for d = 8192 and s = 4, 2000x fewer operations), somewhat larger variance on
  very sparse inputs.

torch's CPU and CUDA generators give different streams, and the CUDA stream may depend on the GPU
model, so `fingerprint()` names the generating device: features to be compared (train against
validation) must come from projectors with equal fingerprints.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from harness.errors import HarnessError

KINDS = ("rademacher", "sparse")
DEFAULT_BLOCK_ENTRIES = 1 << 25
"""Matrix entries per generated block (32M: 128 MB as float32 while in use); part of the definition.
Large blocks keep the per-block overhead (generator seeding, kernel launches) small when P is ~1e8."""


def _sign_table(device: torch.device) -> torch.Tensor:
    """Row b holds the 8 bits of byte b (least significant first) as +-1 floats."""
    bits = (torch.arange(256, device=device).unsqueeze(1) >> torch.arange(8, device=device)) & 1
    return bits.to(torch.float32).mul_(2).sub_(1)


def block_seed(seed: int, block: int) -> int:
    """The generator seed of one block: a stable hash of (seed, block), equal in every process."""
    digest = hashlib.blake2b(f"proj:{seed}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator_identity(device: torch.device | str) -> str:
    """What the random stream depends on besides the seed: the generating device (a GPU's model, since CUDA
    streams may differ between models) and torch's version."""
    device = torch.device(device)
    gen = device.type
    if gen == "cuda":
        gen += f"[{torch.cuda.get_device_name(device)}]"
    return f"gen={gen}:torch={'.'.join(torch.__version__.split('.')[:2])}"


class Projector:
    """x [b, P] -> x @ R [b, d] for a seeded random R that is generated block by block, never stored whole
    unless it fits `cache_bytes`."""

    def __init__(
        self,
        n_params: int,
        dim: int,
        seed: int,
        kind: str = "rademacher",
        *,
        sparsity: int = 4,
        device: torch.device | str = "cpu",
        cache_bytes: int = 1 << 30,
        block_entries: int = DEFAULT_BLOCK_ENTRIES,
    ) -> None:
        if kind not in KINDS:
            raise HarnessError(f"projection kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if dim < 1 or n_params < 1:
            raise HarnessError(f"projection dimension and parameter count must be positive, got d={dim}, P={n_params}")
        if kind == "sparse" and not 1 <= sparsity <= dim:
            raise HarnessError(f"sparse projection needs 1 <= sparsity <= dim, got sparsity={sparsity}, dim={dim}")
        self.n_params, self.dim, self.seed, self.kind = int(n_params), int(dim), int(seed), kind
        self.sparsity = int(sparsity)
        self.device = torch.device(device)
        self.cache_bytes = int(cache_bytes)
        self.block_rows = max(1, int(block_entries) // self.dim)
        self.n_blocks = -(-self.n_params // self.block_rows)
        self._cache: dict[int, tuple[torch.Tensor, ...]] = {}
        self._cached_bytes = 0

    def fingerprint(self) -> str:
        """Everything that defines the matrix; equal fingerprints, equal projections."""
        extra = f":s={self.sparsity}" if self.kind == "sparse" else ""
        return (
            f"{self.kind}:P={self.n_params}:d={self.dim}:seed={self.seed}:rows={self.block_rows}{extra}"
            f":{generator_identity(self.device)}"
        )

    def block_range(self, k: int) -> tuple[int, int]:
        """Input coordinates [start, stop) of block k."""
        start = k * self.block_rows
        return start, min(self.n_params, start + self.block_rows)

    def generate_block(self, k: int) -> tuple[torch.Tensor, ...]:
        """Block k as drawn from its own generator. rademacher: (signs [rows, d] float32 of +-1);
        sparse: (positions [rows, s] int64, signs [rows, s] float32)."""
        start, stop = self.block_range(k)
        rows = stop - start
        gen = torch.Generator(device=self.device)
        gen.manual_seed(block_seed(self.seed, k))
        if self.kind == "rademacher":
            # one random byte gives 8 signs: look its bits up in a 256 x 8 table of +-1 (one pass)
            n_bytes = -(-self.dim // 8)
            raw = torch.randint(0, 256, (rows * n_bytes,), generator=gen, device=self.device)
            signs = F.embedding(raw, _sign_table(self.device)).reshape(rows, n_bytes * 8)[:, : self.dim]
            return (signs.contiguous(),)
        s = self.sparsity
        lo = torch.tensor([j * self.dim // s for j in range(s)], device=self.device)
        width = torch.tensor([(j + 1) * self.dim // s - j * self.dim // s for j in range(s)], device=self.device)
        raw = torch.randint(0, 1 << 31, (rows, s), generator=gen, dtype=torch.int64, device=self.device)
        positions = lo + raw % width
        signs = torch.randint(0, 2, (rows, s), generator=gen, device=self.device).to(torch.float32).mul_(2).sub_(1)
        return positions, signs

    def _block(self, k: int) -> tuple[torch.Tensor, ...]:
        if k in self._cache:
            return self._cache[k]
        block = self.generate_block(k)
        size = sum(t.numel() * t.element_size() for t in block)
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[k] = block
            self._cached_bytes += size
        return block

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.dim if self.kind == "rademacher" else self.sparsity)

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """[b, P] -> [b, d] float32 on the projector's device."""
        if flat.dim() != 2 or flat.size(1) != self.n_params:
            raise ValueError(f"expected a [b, {self.n_params}] tensor, got {tuple(flat.shape)}")
        flat = flat.to(self.device, torch.float32)
        out = torch.zeros(flat.size(0), self.dim, dtype=torch.float32, device=self.device)
        for k in range(self.n_blocks):
            start, stop = self.block_range(k)
            x = flat[:, start:stop]
            if self.kind == "rademacher":
                (signs,) = self._block(k)
                out.addmm_(x, signs)
            else:
                positions, signs = self._block(k)
                out.index_add_(1, positions.reshape(-1), (x.unsqueeze(-1) * signs).reshape(x.size(0), -1))
        return out.mul_(self.scale)

    def materialize(self) -> torch.Tensor:
        """The whole P x d matrix (tests and small P only): what `project` multiplies by."""
        if self.n_params * self.dim > 1 << 28:
            raise ValueError("refusing to materialise a projection with more than 2^28 entries")
        dense = torch.zeros(self.n_params, self.dim, dtype=torch.float32, device=self.device)
        for k in range(self.n_blocks):
            start, stop = self.block_range(k)
            if self.kind == "rademacher":
                dense[start:stop] = self.generate_block(k)[0]
            else:
                positions, signs = self.generate_block(k)
                rows = torch.arange(start, stop, device=self.device).unsqueeze(1).expand_as(positions)
                dense.index_put_((rows.reshape(-1), positions.reshape(-1)), signs.reshape(-1), accumulate=True)
        return dense.mul_(self.scale)
