"""Gaussian splats for the browser viewer: pack Gaussians into viser's wire layout, and send only
the parts of the cloud that changed.

viser's splat buffer is 8 uint32 per Gaussian (32 bytes): centre (3 x float32), a reserved word,
the covariance's upper triangle (6 x float16) and RGBA (4 x uint8). Two consequences shape this
module:

* float16 covariances: a 1 mm Gaussian has a variance of 1e-6 m^2, a float16 subnormal with about
  four significant bits. The splats are therefore stored in centimetres (``UNIT = 100``: variances
  x 1e4) and the scene node is scaled back by ``1 / UNIT``; viser applies the node's scale to the
  covariance on the client (``T_camera_group`` includes it).
* a buffer update replaces the whole buffer of one scene node. The cloud is split into spatially
  compact chunks (Morton order of the rest positions), one scene node per chunk; viser composites
  all splat nodes in one global sort, so the split is invisible. After an expression change only
  the chunks whose packed bytes changed are sent: ``jawOpen`` moves the lower face, not the back
  of the head.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from avatar.representations.geometry import quat_to_matrix

__all__ = ["UNIT", "SplatUpdate", "ChunkedSplats", "pack_rgba", "pack_geometry", "pack_splats", "morton_order"]

UNIT = 100.0  # splat coordinates are sent in centimetres; the scene node scales them back to metres
_TRIU = (0, 1, 2, 4, 5, 8)  # upper triangle of a row-major 3x3, viser's order


def _np(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def pack_rgba(rgb, opacities) -> np.ndarray:
    """``rgb [N, 3]`` and ``opacities [N]`` or ``[N, 1]`` in [0, 1] -> ``[N]`` uint32 (RGBA bytes)."""
    rgb = _np(rgb).astype(np.float32, copy=False)
    op = _np(opacities).astype(np.float32, copy=False).reshape(-1, 1)
    if rgb.ndim != 2 or rgb.shape[1] != 3 or op.shape[0] != rgb.shape[0]:
        raise ValueError(f"expected rgb [N, 3] and opacities [N] or [N, 1], got {rgb.shape} and {_np(opacities).shape}")
    rgba = np.clip(np.rint(np.concatenate([rgb, op], 1) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgba).view(np.uint32).reshape(-1)


def _covariance_triu(quats: Tensor, scales: Tensor) -> Tensor:
    """``[N, 6]`` upper triangle (viser's order) of ``R diag(s^2) R^T``, element-wise (batched
    3x3 matmuls are several times slower in torch for N in the 10^4-10^5 range)."""
    # Work on contiguous rows ([4, N], [3, N]): element-wise ops on strided columns are ~3x slower.
    q = quats.T.contiguous()
    q = q / q.norm(dim=0, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q
    xx, yy, zz, xy, xz, yz, wx, wy, wz = x * x, y * y, z * z, x * y, x * z, y * z, w * x, w * y, w * z
    r00, r01, r02 = 1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)
    r10, r11, r12 = 2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)
    r20, r21, r22 = 2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)
    a, b, c = (scales * scales).T.contiguous()
    ra = (r00 * a, r10 * a, r20 * a)
    rb = (r01 * b, r11 * b, r21 * b)
    rc = (r02 * c, r12 * c, r22 * c)
    row = ((r00, r01, r02), (r10, r11, r12), (r20, r21, r22))
    out = torch.empty(6, quats.shape[0], dtype=quats.dtype)
    for k, (i, j) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))):
        # cov_ij = sum_m R_im R_jm s_m^2
        torch.mul(ra[i], row[j][0], out=out[k])
        out[k].addcmul_(rb[i], row[j][1]).addcmul_(rc[i], row[j][2])
    return out.T


def pack_geometry(means, quats, scales, out: np.ndarray | None = None, unit: float = UNIT) -> np.ndarray:
    """The moving part of the splat buffer: ``[N, 8]`` uint32 with words 0-2 (centre) and 4-6
    (covariance) filled; word 3 is zero and word 7 (RGBA) is left as it is in ``out``.

    Args:
        means: ``[N, 3]`` centres (metres).
        quats: ``[N, 4]`` rotations, wxyz (normalised here).
        scales: ``[N, 3]`` standard deviations along the rotated axes (metres, not log).
        out: buffer to fill in place (e.g. one that already holds the colours).
        unit: coordinates are multiplied by ``unit`` (covariances by ``unit**2``).
    """
    means = torch.as_tensor(means, dtype=torch.float32)
    n = means.shape[0]
    quats = torch.as_tensor(quats, dtype=torch.float32)
    scales = torch.as_tensor(scales, dtype=torch.float32)
    if means.shape != (n, 3) or quats.shape != (n, 4) or scales.shape != (n, 3):
        raise ValueError(f"expected means [N, 3], quats [N, 4], scales [N, 3]; got "
                         f"{tuple(means.shape)}, {tuple(quats.shape)}, {tuple(scales.shape)}")
    with torch.no_grad():
        cov = _covariance_triu(quats, scales * unit)
        centres = (means * unit).numpy()
        cov16 = cov.numpy().astype(np.float16)  # [N, 6] (a transposed view; astype copies)
    if out is None:
        out = np.zeros((n, 8), dtype=np.uint32)
    elif out.shape != (n, 8) or out.dtype != np.uint32:
        raise ValueError(f"out must be uint32 [{n}, 8], got {out.dtype} {out.shape}")
    out[:, 0:3] = centres.view(np.uint32)
    out[:, 3] = 0
    out[:, 4:7] = np.ascontiguousarray(cov16).view(np.uint32)
    return out


def pack_splats(means, quats, scales, opacities, rgb, unit: float = UNIT) -> np.ndarray:
    """Gaussians -> viser's ``[N, 8]`` uint32 splat buffer (the adapter between a Gaussian avatar
    and the viewer). Shapes as in :func:`pack_geometry`; ``opacities [N]``/``[N, 1]`` and
    ``rgb [N, 3]`` in [0, 1].

    >>> buf = pack_splats(torch.zeros(1, 3), torch.tensor([[1., 0, 0, 0]]), torch.full((1, 3), 0.01),
    ...                   torch.ones(1), torch.ones(1, 3))
    >>> buf.shape, buf.dtype
    ((1, 8), dtype('uint32'))
    """
    out = pack_geometry(means, quats, scales, unit=unit)
    out[:, 7] = pack_rgba(rgb, opacities)
    return out


def morton_order(points: np.ndarray, bits: int = 10) -> np.ndarray:
    """Indices that sort ``points [N, 3]`` along a Z-order curve (spatially compact runs)."""
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(0), p.max(0)
    q = ((p - lo) / np.maximum(hi - lo, 1e-12) * ((1 << bits) - 1)).astype(np.uint64)
    code = np.zeros(len(p), dtype=np.uint64)
    for b in range(bits):
        for axis in range(3):
            code |= ((q[:, axis] >> np.uint64(b)) & np.uint64(1)) << np.uint64(3 * b + axis)
    return np.argsort(code, kind="stable")


@dataclass(frozen=True)
class SplatUpdate:
    """What one update sent: chunks and Gaussians whose bytes changed, and the buffer bytes queued
    for each connected client (viser adds a small msgpack header per message)."""

    chunks_sent: int
    chunks_total: int
    gaussians_sent: int
    bytes_sent: int


class ChunkedSplats:
    """A splat cloud shown as ``ceil(N / chunk_size)`` viser splat nodes; :meth:`update` re-sends
    only the chunks whose packed bytes changed.

    Args:
        scene: ``server.scene`` (viser's scene API).
        name: scene-node prefix, e.g. ``"/avatar/splats"``.
        rest_means: ``[N, 3]`` positions used to make spatially compact chunks.
        rgb, opacities: per-Gaussian colour and opacity in [0, 1] (colours may change: :meth:`update`).
        chunk_size: Gaussians per chunk (the unit of re-sending).
    """

    def __init__(self, scene, name: str, rest_means, rgb, opacities, chunk_size: int = 2048) -> None:
        rest = _np(rest_means).astype(np.float64)
        n = rest.shape[0]
        if n == 0:
            raise ValueError("no Gaussians to show")
        self.scene, self.name, self.num_gaussians = scene, name, n
        self.order = morton_order(rest)  # buffer row r holds Gaussian order[r]
        self.position = np.empty(n, dtype=np.int64)
        self.position[self.order] = np.arange(n)  # Gaussian i is buffer row position[i]
        self.chunk_size = max(1, int(chunk_size))
        self._buffer = np.zeros((n, 8), dtype=np.uint32)
        self._opacities = _np(opacities).reshape(-1)[self.order]
        self._buffer[:, 7] = pack_rgba(_np(rgb)[self.order], self._opacities)
        self._sent = np.zeros_like(self._buffer)
        self._handles: list = []
        self._order_t = torch.from_numpy(self.order)
        self._lock = threading.Lock()

    @property
    def num_chunks(self) -> int:
        return -(-self.num_gaussians // self.chunk_size)

    def update(self, means, quats, scales, index=None, rgb=None, opacities=None) -> SplatUpdate:
        """Show the Gaussians at ``means``/``quats``/``scales`` (shapes as in :func:`pack_geometry`):
        all of them in their original order, or only those listed in ``index [n]`` (the others
        keep their last values). The first call must be complete; it adds the scene nodes.
        ``rgb``, ``opacities``: ``[N, 3]``, ``[N]`` new colours / opacities of all Gaussians
        (original order), or None to keep them."""
        if index is None:
            rows = self.order
            geometry = pack_geometry(*(torch.as_tensor(x)[self._order_t] for x in (means, quats, scales)))
        else:
            if len(self._handles) < self.num_chunks:
                raise ValueError("the first update must give every Gaussian")
            rows = self.position[np.asarray(index, dtype=np.int64)]
            geometry = pack_geometry(means, quats, scales)
            order = np.argsort(rows)
            rows, geometry = rows[order], geometry[order]
        with self._lock:
            self._buffer[slice(None) if index is None else rows, :7] = geometry[:, :7]  # full: already in buffer order
            if opacities is not None:
                self._opacities = _np(opacities).reshape(-1)[self.order]
            if rgb is not None or opacities is not None:
                colours = self._buffer[:, 7:8].view(np.uint8)[:, :3] / 255.0 if rgb is None else _np(rgb)[self.order]
                self._buffer[:, 7] = pack_rgba(colours, self._opacities)
            everything = index is None or rgb is not None or opacities is not None
            touched = np.arange(self.num_chunks) if everything else np.unique(rows // self.chunk_size)
            sent = gaussians = chunks = 0
            for k in touched:
                lo, hi = k * self.chunk_size, min((k + 1) * self.chunk_size, self.num_gaussians)
                chunk = self._buffer[lo:hi]
                if k < len(self._handles):
                    if np.array_equal(chunk, self._sent[lo:hi]):
                        continue
                    self._handles[k].buffer = chunk
                else:
                    self._handles.append(self._add(k, chunk))
                self._sent[lo:hi] = chunk
                sent += chunk.nbytes
                gaussians += hi - lo
                chunks += 1
        return SplatUpdate(chunks, self.num_chunks, gaussians, sent)

    def _add(self, k: int, chunk: np.ndarray):
        # add_gaussian_splats packs from dense arrays; create a 1-Gaussian node and then assign
        # our buffer so the packing lives in one place (pack_geometry/pack_rgba).
        handle = self.scene.add_gaussian_splats(
            f"{self.name}/chunk{k:04d}",
            centers=np.zeros((1, 3), np.float32),
            covariances=np.eye(3, dtype=np.float32)[None] * 1e-4,
            rgbs=np.zeros((1, 3), np.float32),
            opacities=np.zeros((1, 1), np.float32),
            scale=1.0 / UNIT,
        )
        handle.buffer = chunk
        return handle

    def remove(self) -> None:
        with self._lock:
            for h in self._handles:
                h.remove()
            self._handles.clear()
