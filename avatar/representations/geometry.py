"""Small differentiable geometry helpers for surface-bound representations: per-triangle frames
and quaternion algebra (wxyz, the rasterizer's convention)."""
from __future__ import annotations

import torch
from torch import Tensor


def triangle_frames(vertices: Tensor, faces: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """Local frame of every triangle.

    Args:
        vertices: ``[B, V, 3]``.
        faces: ``[F, 3]`` int64.
    Returns:
        ``(origin [B, F, 3], R_world_tri [B, F, 3, 3], scale [B, F])``: origin = centroid;
        columns of R = (first edge direction, in-plane perpendicular, unit normal) - a proper
        rotation; scale = sqrt(2 * area), a length that grows linearly with the triangle.
    """
    a, b, c = vertices[:, faces[:, 0]], vertices[:, faces[:, 1]], vertices[:, faces[:, 2]]
    origin = (a + b + c) / 3.0
    e0 = b - a
    cross = torch.cross(e0, c - a, dim=-1)
    dbl_area = cross.norm(dim=-1)
    n = cross / (dbl_area[..., None] + eps)
    t = e0 / (e0.norm(dim=-1, keepdim=True) + eps)
    bt = torch.cross(n, t, dim=-1)
    rot = torch.stack([t, bt, n], dim=-1)  # columns
    return origin, rot, torch.sqrt(dbl_area + eps)


def quat_multiply(q: Tensor, r: Tensor) -> Tensor:
    """Hamilton product of wxyz quaternions ``[..., 4]`` (rotation ``q`` after ``r``)."""
    w1, x1, y1, z1 = q.unbind(-1)
    w2, x2, y2, z2 = r.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        dim=-1,
    )


def quat_to_matrix(q: Tensor) -> Tensor:
    """wxyz ``[..., 4]`` (any non-zero norm) -> ``[..., 3, 3]``."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def matrix_to_quat(m: Tensor) -> Tensor:
    """Rotation ``[..., 3, 3]`` -> unit wxyz ``[..., 4]`` (sign fixed by the largest component).

    Each of the four candidate formulas divides by the component it is built around; the one
    with the largest such component is used, so the division is always well conditioned.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    four = 2.0 * torch.sqrt(sq.clamp_min(1e-12))  # 4*|w|, 4*|x|, 4*|y|, 4*|z| candidates
    cands = torch.stack(
        [
            torch.stack([four[..., 0] ** 2 / 4, m21 - m12, m02 - m20, m10 - m01], -1) / four[..., 0:1],
            torch.stack([m21 - m12, four[..., 1] ** 2 / 4, m01 + m10, m02 + m20], -1) / four[..., 1:2],
            torch.stack([m02 - m20, m01 + m10, four[..., 2] ** 2 / 4, m12 + m21], -1) / four[..., 2:3],
            torch.stack([m10 - m01, m02 + m20, m12 + m21, four[..., 3] ** 2 / 4], -1) / four[..., 3:4],
        ],
        dim=-2,
    )  # [..., 4 candidates, 4]
    best = sq.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return q / q.norm(dim=-1, keepdim=True)


def params_pose(params: dict[str, Tensor], batch: int | None = None) -> Tensor | None:
    """``[B, 4, 4]`` head poses of per-frame head parameters (a missing ``global_orient`` or
    ``transl`` is zero), or None when ``params`` has neither (the head at rest)."""
    go, tr = params.get("global_orient"), params.get("transl")
    if go is None and tr is None:
        return None
    like = go if go is not None else tr
    b = batch if batch is not None else like.shape[0]
    zeros = like.new_zeros(1, 3)
    return rigid_transforms((go if go is not None else zeros).expand(b, 3), (tr if tr is not None else zeros).to(like).expand(b, 3))


def rigid_transforms(global_orient: Tensor, transl: Tensor) -> Tensor:
    """``[B, 4, 4]`` head-to-world transforms from ``[B, 3]`` axis-angle and ``[B, 3]``
    translation (the head models' global pose: rotate about the origin, then translate)."""
    from avatar.models.rotations import axis_angle_to_matrix

    T = torch.zeros(global_orient.shape[0], 4, 4, dtype=global_orient.dtype, device=global_orient.device)
    T[:, :3, :3] = axis_angle_to_matrix(global_orient)
    T[:, :3, 3] = transl
    T[:, 3, 3] = 1.0
    return T
