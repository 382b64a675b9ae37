"""Rotation helpers shared by the head models (pure torch, batched, differentiable)."""
from __future__ import annotations

import torch
from torch import Tensor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula.

    Args:
        axis_angle: ``[..., 3]`` rotation vectors (axis * angle, radians).
    Returns:
        ``[..., 3, 3]`` rotation matrices.

    Exact and smooth at zero: near ``|w| = 0`` the coefficients use their Taylor series, so the
    gradient of the identity rotation is well defined (no ``+ eps`` inside the norm).

    >>> axis_angle_to_matrix(torch.zeros(2, 3)).shape
    torch.Size([2, 3, 3])
    """
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Inverse of :func:`axis_angle_to_matrix` for ``[..., 3, 3]`` rotations (angles in [0, pi])."""
    trace = matrix[..., 0, 0] + matrix[..., 1, 1] + matrix[..., 2, 2]
    cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    angle = torch.acos(cos)
    axis = torch.stack(
        [matrix[..., 2, 1] - matrix[..., 1, 2], matrix[..., 0, 2] - matrix[..., 2, 0], matrix[..., 1, 0] - matrix[..., 0, 1]],
        dim=-1,
    )
    sin = torch.sin(angle)
    small = sin.abs() < 1e-6
    scale = torch.where(small, 0.5 + angle**2 / 12.0, angle / (2.0 * torch.where(small, torch.ones_like(sin), sin)))
    out = axis * scale[..., None]
    # Near pi the antisymmetric part vanishes: recover the axis from the symmetric part instead.
    near_pi = (cos < -0.999) & small
    if near_pi.any():
        sym = (matrix[near_pi] + torch.eye(3, dtype=matrix.dtype, device=matrix.device)) / 2.0
        col = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
        v = sym[torch.arange(sym.shape[0]), :, col]
        v = v / v.norm(dim=-1, keepdim=True)
        out[near_pi] = v * angle[near_pi][..., None]
    return out


def rigid(rotation: Tensor, translation: Tensor) -> Tensor:
    """``[..., 3, 3]`` and ``[..., 3]`` -> ``[..., 4, 4]`` homogeneous transforms."""
    top = torch.cat([rotation, translation[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)
