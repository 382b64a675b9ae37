"""Gaussian splats as the standard 3DGS ``.ply`` (the INRIA layout splat viewers read).

One binary little-endian ``vertex`` element with float32 properties, in this order:
``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3K-1} opacity scale_0 scale_1 scale_2
rot_0 rot_1 rot_2 rot_3``. Opacity is stored as a logit, scales as logs, rotations as (w, x, y, z)
quaternions; ``f_rest`` is channel-major (all K coefficients of red, then green, then blue), as
the reference implementation flattens ``[N, 3, K]``. Normals are zero (unused by viewers).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.errors import AvatarError
from avatar.utils.files import atomic_write

__all__ = ["GaussianPly", "write_gaussians_ply", "read_gaussians_ply", "ply_property_names"]


@dataclass(frozen=True)
class GaussianPly:
    """Gaussians read back from a .ply, in linear units (see :func:`write_gaussians_ply`)."""

    means: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] wxyz, unit
    scales: np.ndarray  # [N, 3] linear
    opacities: np.ndarray  # [N] in (0, 1)
    sh_dc: np.ndarray  # [N, 3]
    sh_rest: np.ndarray | None  # [N, K, 3]


def ply_property_names(num_rest: int) -> list[str]:
    """Property names for ``num_rest`` higher-order SH coefficients per channel (K)."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * num_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_gaussians_ply(
    path: str | Path,
    means: np.ndarray,
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    sh_dc: np.ndarray,
    sh_rest: np.ndarray | None = None,
) -> int:
    """Write Gaussians as a 3DGS ``.ply`` (atomically). Returns the number written.

    Args:
        means: ``[N, 3]`` centres (metres, world).
        quats: ``[N, 4]`` rotations (w, x, y, z); normalised here.
        scales: ``[N, 3]`` standard deviations (linear, > 0); stored as logs.
        opacities: ``[N]`` in [0, 1]; stored as logits (clamped away from 0 and 1 so they stay finite).
        sh_dc: ``[N, 3]`` degree-0 SH coefficients (``(rgb - 0.5) / 0.28209479`` for a plain colour).
        sh_rest: ``[N, K, 3]`` higher SH coefficients (K = 3, 8 or 15), or ``None``.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (means, quats, scales, opacities, sh_dc)]
    means, quats, scales, opacities, sh_dc = arrays
    n = len(means)
    expect = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
              "opacities": (opacities.reshape(-1), (n,)), "sh_dc": (sh_dc, (n, 3))}
    for key, (arr, shp) in expect.items():
        if arr.shape != shp:
            raise AvatarError(f"{key} must have shape {shp}, got {arr.shape}")
    k = 0
    if sh_rest is not None:
        sh_rest = np.asarray(sh_rest, dtype=np.float64)
        if sh_rest.ndim != 3 or sh_rest.shape[0] != n or sh_rest.shape[2] != 3:
            raise AvatarError(f"sh_rest must be [N, K, 3] with N={n}, got {sh_rest.shape}")
        k = sh_rest.shape[1]
    if (scales <= 0).any():
        raise AvatarError("scales must be positive (they are stored as logs)")
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    if (norm == 0).any():
        raise AvatarError("a quaternion is zero")
    op = np.clip(opacities.reshape(-1), 1e-7, 1.0 - 1e-7)
    names = ply_property_names(k)
    data = np.zeros(n, dtype=[(name, "<f4") for name in names])
    cols = [means, np.zeros((n, 3)), sh_dc]
    if k:
        cols.append(sh_rest.transpose(0, 2, 1).reshape(n, 3 * k))  # channel-major, as INRIA
    cols += [np.log(op / (1.0 - op))[:, None], np.log(scales), quats / norm]
    flat = np.concatenate(cols, axis=1)
    for i, name in enumerate(names):
        data[name] = flat[:, i]
    header = "ply\nformat binary_little_endian 1.0\nelement vertex {}\n{}end_header\n".format(
        n, "".join(f"property float {name}\n" for name in names))
    with atomic_write(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())
    return n


def read_gaussians_ply(path: str | Path) -> GaussianPly:
    """Read a 3DGS ``.ply`` (binary little endian, float properties) back into linear units."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise AvatarError(f"{path} is not a PLY file")
        count, names, fmt = None, [], None
        while True:
            line = f.readline()
            if not line:
                raise AvatarError(f"{path}: header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                if words[1] != "vertex" or count is not None:
                    raise AvatarError(f"{path}: expected a single 'vertex' element, found {words[1]!r}")
                count = int(words[2])
            elif words[0] == "property":
                if words[1] != "float":
                    raise AvatarError(f"{path}: property {words[-1]} is {words[1]}, expected float")
                names.append(words[2])
            elif words[0] == "end_header":
                break
        if fmt != "binary_little_endian" or count is None:
            raise AvatarError(f"{path}: expected binary_little_endian with a vertex element (got {fmt})")
        data = np.frombuffer(f.read(count * 4 * len(names)), dtype=[(nm, "<f4") for nm in names], count=count)
    rest = sorted((nm for nm in names if nm.startswith("f_rest_")), key=lambda s: int(s.split("_")[-1]))
    if len(rest) % 3:
        raise AvatarError(f"{path}: {len(rest)} f_rest properties is not a multiple of 3")
    col = lambda *ns: np.stack([data[nm].astype(np.float64) for nm in ns], axis=1)  # noqa: E731
    k = len(rest) // 3
    return GaussianPly(
        means=col("x", "y", "z"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        scales=np.exp(col("scale_0", "scale_1", "scale_2")),
        opacities=1.0 / (1.0 + np.exp(-data["opacity"].astype(np.float64))),
        sh_dc=col("f_dc_0", "f_dc_1", "f_dc_2"),
        sh_rest=col(*rest).reshape(count, 3, k).transpose(0, 2, 1) if k else None,
    )
