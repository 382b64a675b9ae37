"""Real spherical harmonics up to degree 3, the 3DGS convention (as in gsplat and INRIA's code).

Colour of a Gaussian seen along ``dirs`` = sum_k basis_k(dirs / |dirs|) * coeffs[k]; the caller
adds 0.5 and clamps at 0. Pure torch: differentiable in both dirs and coeffs, any device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from avatar.errors import AvatarError

_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Basis values [..., (degree+1)^2] at the unit directions ``dirs`` [..., 3]."""
    if not 0 <= degree <= 3:
        raise AvatarError(f"sh_degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours.

    Args:
        degree: degree in use, 0..3; only the first (degree+1)^2 coefficients are read.
        dirs: [..., 3] viewing directions (camera -> Gaussian), any length.
        coeffs: [..., K, 3] with K >= (degree+1)^2.

    Returns:
        [..., 3] colours (before the +0.5 offset).
    """
    n = (degree + 1) ** 2
    if coeffs.shape[-2] < n:
        raise AvatarError(f"sh_degree={degree} needs {n} coefficients per Gaussian, got {coeffs.shape[-2]}")
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bases = sh_bases(degree, unit)  # [..., n]
    return (bases.unsqueeze(-1) * coeffs[..., :n, :]).sum(dim=-2)


def _sphere_samples(n: int) -> Tensor:
    """``[n, 3]`` unit directions spread evenly over the sphere (Fibonacci lattice), float64."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = i * (torch.pi * (3.0 - 5.0**0.5))
    r = (1.0 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


def sh_rotation(degree: int, rotations: Tensor) -> Tensor:
    """``[..., K, K]`` matrices M (K = (degree+1)^2) that turn coefficients with a frame.

    For coefficients ``c [K, 3]`` defined in a frame that is rotated by ``R`` (``rotations
    [..., 3, 3]``, frame-to-world), ``M @ c`` are the world coefficients of the same function:
    ``basis(d) @ (M @ c) == basis(R^T d) @ c`` for every world direction d. Each band is closed
    under rotation, so M is found exactly by least squares on a fixed set of sample directions
    (simpler than Wigner-D recursions and differentiable in R).
    """
    k = (degree + 1) ** 2
    s = _sphere_samples(max(4 * k, 16)).to(rotations.device)
    basis = sh_bases(degree, s)  # [S, K]
    pinv = torch.linalg.pinv(basis).to(rotations.dtype)  # [K, S]
    turned = sh_bases(degree, s.to(rotations.dtype) @ rotations)  # rows R^T s: [..., S, K]
    return pinv @ turned
