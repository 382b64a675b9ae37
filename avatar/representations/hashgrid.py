"""Multi-resolution hash grids (Instant-NGP, Muller et al. 2022) for points that do not move.

A grid has ``levels`` levels of increasing resolution ``n_l`` (cells per axis, geometric from
``min_resolution`` to ``max_resolution``). Each level stores ``features`` numbers at the corners
of its cells: densely (``(n_l + 1)^3`` rows) when they fit in ``2^log2_size`` rows, else at a
spatial hash of the corner, ``(i * 1 ^ j * 2654435761 ^ k * 805459861) mod 2^log2_size``, where
distinct corners may share a row. A point in the unit cube reads the trilinear blend of its cell's
eight corners on every level; the ``levels * features`` numbers are its encoding.

All levels of one grid live in one flat table ``[P, F]`` (level ``l`` from row
``offsets[l]``), so several grids of the same spec stack as ``[G, P, F]`` and a weighted sum of
grids is one matrix product (:func:`blend_tables`). Mesh-bound Gaussians read the grids at their
fixed canonical positions: the rows and trilinear weights (:func:`hash_corners`) are computed once
and reused every step, and a step is then a blend and a weighted gather (:func:`encode`).

:func:`encode` runs a C++ kernel on the CPU; :func:`_encode` is its torch twin (any device), and
:func:`_encode_naive` the whole encoding written point by point from the definition, for the tests.
"""
from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from avatar.errors import AvatarError

PRIMES = (1, 2654435761, 805459861)
# corner c of a cell is (c & 1, c >> 1 & 1, c >> 2 & 1)
_CORNERS = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)])


@dataclass(frozen=True)
class HashGridSpec:
    """Sizes of a grid (see the module docstring)."""

    levels: int = 8
    log2_size: int = 12  # rows per level at most (2^log2_size)
    features: int = 2  # numbers per row
    min_resolution: int = 16  # cells per axis of the coarsest level
    max_resolution: int = 256  # ... and of the finest

    def __post_init__(self) -> None:
        if self.levels < 1 or self.features < 1 or not 4 <= self.log2_size <= 24:
            raise AvatarError(f"hash grid needs levels >= 1, features >= 1, 4 <= log2_size <= 24: {self}")
        if not 1 <= self.min_resolution <= self.max_resolution:
            raise AvatarError(f"hash grid needs 1 <= min_resolution <= max_resolution: {self}")

    @property
    def table_size(self) -> int:
        return 1 << self.log2_size

    def resolutions(self) -> list[int]:
        if self.levels == 1:
            return [self.min_resolution]
        growth = math.exp((math.log(self.max_resolution) - math.log(self.min_resolution)) / (self.levels - 1))
        return [int(math.floor(self.min_resolution * growth**level + 1e-9)) for level in range(self.levels)]

    def dense(self, level: int) -> bool:
        """Whether level ``level`` indexes its corners directly (no hashing)."""
        return (self.resolutions()[level] + 1) ** 3 <= self.table_size

    def level_sizes(self) -> list[int]:
        return [min(self.table_size, (n + 1) ** 3) for n in self.resolutions()]

    def offsets(self) -> list[int]:
        """First row of each level in the flat table."""
        sizes = self.level_sizes()
        return [sum(sizes[:level]) for level in range(self.levels)]

    @property
    def num_rows(self) -> int:
        return sum(self.level_sizes())

    @property
    def encoding_size(self) -> int:
        return self.levels * self.features


def hash_corners(x: Tensor, spec: HashGridSpec) -> tuple[Tensor, Tensor]:
    """Rows and trilinear weights of points ``x [N, 3]`` in the unit cube (clamped to it):
    ``(rows [L, N, 8] int32 into the flat table, weights [L, N, 8] in x's dtype)``, level-major
    (each level's pass of the kernel reads its part front to back)."""
    x = x.clamp(0.0, 1.0)
    corners = _CORNERS.to(x.device)
    size = spec.table_size
    rows, weights = [], []
    for level, (n, first) in enumerate(zip(spec.resolutions(), spec.offsets())):
        p = x * n
        cell = p.floor().clamp(0, n - 1)
        frac = p - cell  # [N, 3] in [0, 1]
        ijk = cell.long()[:, None, :] + corners[None]  # [N, 8, 3]
        weights.append(torch.where(corners[None].bool(), frac[:, None], 1.0 - frac[:, None]).prod(-1))
        if spec.dense(level):
            idx = ijk[..., 0] + (n + 1) * (ijk[..., 1] + (n + 1) * ijk[..., 2])
        else:  # the products exceed 32 bits, but the low log2_size bits are those of the uint32 product
            idx = (ijk[..., 0] * PRIMES[0]) ^ (ijk[..., 1] * PRIMES[1]) ^ (ijk[..., 2] * PRIMES[2])
            idx = idx & (size - 1)
        rows.append((idx + first).int())
    return torch.stack(rows), torch.stack(weights)


def blend_tables(tables: Tensor, weights: Tensor) -> Tensor:
    """``tables [G, P, F]`` mixed by ``weights [..., G]`` -> ``[..., P, F]`` (one matrix product)."""
    G, P, F = tables.shape
    return (weights.to(tables) @ tables.reshape(G, P * F)).reshape(*weights.shape[:-1], P, F)


def encode(tables: Tensor, rows: Tensor, weights: Tensor, groups: Tensor | None = None) -> Tensor:
    """``tables [B, K, P, F]`` (K grids per frame) read at :func:`hash_corners`' ``rows``/``weights
    [L, N, 8]``, point n from grid ``groups[n]`` (``[N]`` int32; grid 0 for all when None) ->
    ``[B, N, L * F]``; differentiable in ``tables`` (the points do not move). On the CPU a C++
    kernel (``kernels/splat_cpu/hashgrid.cpp``), elsewhere or without a compiler :func:`_encode`."""
    if tables.device.type == "cpu" and tables.dtype in (torch.float32, torch.float64) and _cpu_kernels() is not None:
        return _HashGather.apply(tables, rows, weights.to(tables), groups, torch.get_num_threads())
    return _encode(tables, rows, weights, groups)


def _encode(tables: Tensor, rows: Tensor, weights: Tensor, groups: Tensor | None = None) -> Tensor:
    """:func:`encode` in torch ops: a gather of the eight corners and their weighted sum."""
    B, K, P, F = tables.shape
    L, N, _ = rows.shape
    flat = tables.reshape(B, K * P, F)
    if groups is not None:
        rows = rows + (groups.to(rows) * P)[None, :, None]
    per_level = (flat[:, rows] * weights.to(tables)[None, ..., None]).sum(3)  # [B, L, N, F]
    return per_level.transpose(1, 2).reshape(B, N, L * F)


@functools.cache
def _cpu_kernels() -> Any:
    """The CPU kernel library with the hash-gather functions declared, or None where it cannot be
    built (then :func:`encode` runs :func:`_encode`)."""
    from avatar.render._cpu_backend import load_cpu_kernels

    try:
        lib = load_cpu_kernels()
    except (AvatarError, OSError):
        return None
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    for sfx in ("f32", "f64"):
        for name in (f"splat_hash_gather_fwd_{sfx}", f"splat_hash_gather_bwd_{sfx}"):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = [i32, i32, i32, i32, i32, i64, p, p, p, p, p, i32], None
    return lib


class _HashGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tables: Tensor, rows: Tensor, weights: Tensor, groups: Tensor | None,  # type: ignore[override]
                n_threads: int) -> Tensor:  # fmt: skip
        tables, rows, weights = tables.contiguous(), rows.int().contiguous(), weights.contiguous()
        groups = None if groups is None else groups.int().contiguous()
        B, K, P, F = tables.shape
        L, N, _ = rows.shape
        if groups is not None and (groups.shape != (N,) or int(groups.min()) < 0 or int(groups.max()) >= K):
            raise ValueError(f"groups must be [{N}] in [0, {K}), got {list(groups.shape)}")
        out = tables.new_empty(B, N, L * F)
        sfx = "f32" if tables.dtype == torch.float32 else "f64"
        getattr(_cpu_kernels(), f"splat_hash_gather_fwd_{sfx}")(
            B, K, N, L, F, P, rows.data_ptr(), None if groups is None else groups.data_ptr(), weights.data_ptr(),
            tables.data_ptr(), out.data_ptr(), n_threads)  # fmt: skip
        ctx.save_for_backward(rows, weights, groups)
        ctx.shape, ctx.n_threads = (B, K, P, F), n_threads
        return out

    @staticmethod
    def backward(ctx: Any, v_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        rows, weights, groups = ctx.saved_tensors
        B, K, P, F = ctx.shape
        L, N, _ = rows.shape
        v_out = v_out.contiguous()  # bound to a name: the kernel reads it after the call starts
        v_tables = v_out.new_empty(B, K, P, F)
        sfx = "f32" if v_out.dtype == torch.float32 else "f64"
        getattr(_cpu_kernels(), f"splat_hash_gather_bwd_{sfx}")(
            B, K, N, L, F, P, rows.data_ptr(), None if groups is None else groups.data_ptr(), weights.data_ptr(),
            v_out.data_ptr(), v_tables.data_ptr(), ctx.n_threads)  # fmt: skip
        return v_tables, None, None, None, None


def _encode_naive(table: Tensor, x: Tensor, spec: HashGridSpec) -> Tensor:
    """:func:`encode` of ``table [P, F]`` at ``x [N, 3]`` -> ``[N, L * F]``, from the definition:
    point by point, corner by corner, the hash in explicit uint32 arithmetic. Slow (tests only)."""
    out = []
    for point in x.clamp(0.0, 1.0).tolist():
        feats = []
        for level, (n, first) in enumerate(zip(spec.resolutions(), spec.offsets())):
            acc = table.new_zeros(spec.features)
            base = [min(int(math.floor(c * n)), n - 1) for c in point]
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        i, j, k = base[0] + dx, base[1] + dy, base[2] + dz
                        w = 1.0
                        for corner, c, b in ((dx, point[0], base[0]), (dy, point[1], base[1]), (dz, point[2], base[2])):
                            f = c * n - b
                            w *= f if corner else 1.0 - f
                        if (n + 1) ** 3 <= spec.table_size:
                            row = i + (n + 1) * j + (n + 1) ** 2 * k
                        else:
                            row = ((i * PRIMES[0]) ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) % 2**32 % spec.table_size
                        acc = acc + w * table[first + row]
            feats.append(acc)
        out.append(torch.cat(feats))
    return torch.stack(out)
