"""Slow, dense, pure-torch twin of the splat kernels: the math written out, used by tests.

Same semantics as the CPU kernels in ``kernels/splat_cpu`` and gsplat's (v1.5) CUDA ones, but
with no tiles and no early exit: every Gaussian is evaluated at every pixel, sorted by depth, and
blended with a cumulative product. Differentiable by autograd, so it also documents the gradients
the hand-written backward passes must produce. Memory is O(pixels x Gaussians): tiny scenes only.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_MIN = 1e-4
GAUSSIAN_EXTEND = 3.33


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] wxyz quaternions (any norm) -> [..., 3, 3] rotation matrices."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """[N, 4], [N, 3] -> world-space covariances [N, 3, 3] = R S S^T R^T."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near: float = 0.01,
    far: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """EWA projection. Returns radii [C,N,2] int32 (0 = culled), means2d [C,N,2], depths [C,N],
    conics [C,N,3] (a, b, c of the inverse blurred 2D covariance) and compensations [C,N]
    (sqrt(det(cov2d) / det(cov2d + eps2d I))). Culled entries are zero, as in gsplat."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    mc = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    covc = R[:, None] @ quat_scale_to_covar(quats, scales)[None] @ R[:, None].transpose(-1, -2)
    x, y, z_raw = mc.unbind(-1)
    # Culled entries still flow through the graph (masked at the end); keep them finite so that
    # masked-out gradients stay 0 instead of 0 * inf = NaN.
    depth_ok = (z_raw >= near) & (z_raw <= far)
    z = torch.where(depth_ok, z_raw, torch.ones_like(z_raw))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Clamp the point where the Jacobian is taken to 1.3x the field of view: far off-screen
    # Gaussians would otherwise get huge, meaningless 2D footprints.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(*z.shape, 2, 3)
    cov2d = J @ covc @ J.transpose(-1, -2)  # [C, N, 2, 2]
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    safe_det = torch.where(det > 0, det, torch.ones_like(det))
    ratio = det_orig / safe_det
    compensations = torch.where(ratio > 0, torch.sqrt(torch.where(ratio > 0, ratio, 1.0)), 0.0)
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    with torch.no_grad():
        opac = opacities[None].expand_as(z)
        if antialiased:
            opac = opac * compensations
        extend = torch.clamp(
            torch.sqrt(2.0 * torch.log(torch.clamp_min(opac, 1e-30) / ALPHA_THRESHOLD).clamp_min(0)),
            max=GAUSSIAN_EXTEND,
        )
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        u, v = means2d.unbind(-1)
        keep = depth_ok & (det > 0) & (opac >= ALPHA_THRESHOLD)
        keep &= ~((rx <= radius_clip) & (ry <= radius_clip))
        keep &= ~((u + rx <= 0) | (u - rx >= width) | (v + ry <= 0) | (v - ry >= height))
        radii = torch.where(keep[..., None], torch.stack([rx, ry], -1), 0).to(torch.int32)
    k = keep[..., None]
    return (
        radii,
        torch.where(k, means2d, 0.0),
        torch.where(keep, z, 0.0),
        torch.where(k, conics, 0.0),
        torch.where(keep, compensations, 0.0),
    )


def tile_ranges(means2d: Tensor, radii: Tensor, tile_size: int, width: int, height: int) -> Tensor:
    """Tiles a Gaussian is binned into: [C, N, 4] int (x0, y0, x1, y1), max exclusive."""
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    m = means2d.detach().double() / tile_size
    r = radii.double() / tile_size
    lo = torch.floor(m - r)
    hi = torch.ceil(m + r)
    lim = torch.tensor([tiles_x, tiles_y], dtype=torch.float64, device=m.device)
    lo = torch.minimum(lo.clamp_min(0), lim)
    hi = torch.minimum(hi.clamp_min(0), lim)
    return torch.cat([lo, hi], dim=-1).long()


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2]
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,  # [C, D]
    max_elements: int = 1 << 24,
) -> tuple[Tensor, Tensor]:
    """Dense front-to-back blending. Returns render [C,H,W,D] and alpha [C,H,W,1].

    Pixels are processed in chunks of about ``max_elements / N`` so forward-only use (no grad)
    stays within memory; with autograd every chunk's intermediates are kept anyway."""
    C, N, D = colors.shape
    dev, dt = means2d.device, means2d.dtype
    ys, xs = torch.meshgrid(torch.arange(height, device=dev), torch.arange(width, device=dev), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    px, py = xs.to(dt) + 0.5, ys.to(dt) + 0.5
    ptx, pty = xs // tile_size, ys // tile_size
    rect = tile_ranges(means2d, radii, tile_size, width, height)
    renders, alphas = [], []
    for cam in range(C):
        ids = torch.nonzero((radii[cam] > 0).all(-1)).squeeze(-1)
        # Front to back; equal depths keep index order, like the kernels' (depth, id) sort.
        ids = ids[torch.argsort(depths[cam, ids].detach(), stable=True)]
        m, q, o, col, rc = means2d[cam, ids], conics[cam, ids], opacities[cam, ids], colors[cam, ids], rect[cam, ids]
        chunk = max(1, max_elements // max(1, len(ids)))
        img, trans = [], []
        for p0 in range(0, px.numel(), chunk):
            sl = slice(p0, p0 + chunk)
            dx = m[None, :, 0] - px[sl, None]
            dy = m[None, :, 1] - py[sl, None]
            sigma = 0.5 * (q[None, :, 0] * dx * dx + q[None, :, 2] * dy * dy) + q[None, :, 1] * dx * dy
            alpha = torch.clamp(o[None] * torch.exp(-sigma), max=MAX_ALPHA)
            in_tiles = (
                (ptx[sl, None] >= rc[None, :, 0]) & (ptx[sl, None] < rc[None, :, 2])
                & (pty[sl, None] >= rc[None, :, 1]) & (pty[sl, None] < rc[None, :, 3])
            )  # fmt: skip
            valid = in_tiles & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            alpha = torch.where(valid, alpha, 0.0)
            one_minus = 1.0 - alpha
            T = torch.cumprod(torch.cat([torch.ones_like(one_minus[:, :1]), one_minus[:, :-1]], 1), 1)
            # A pixel stops before the Gaussian that would bring T to <= 1e-4; T only decreases, so
            # the included Gaussians are a prefix of the sorted list.
            include = (T * one_minus) > TRANSMITTANCE_MIN
            weights = torch.where(include, alpha * T, 0.0)
            img.append(weights @ col)
            trans.append(torch.where(include, one_minus, 1.0).prod(dim=1))
        img_c = torch.cat(img, 0) if img else torch.zeros(0, D, dtype=dt, device=dev)
        T_c = torch.cat(trans, 0)
        if backgrounds is not None:
            img_c = img_c + T_c[:, None] * backgrounds[cam][None]
        renders.append(img_c.reshape(height, width, D))
        alphas.append((1.0 - T_c).reshape(height, width, 1))
    return torch.stack(renders), torch.stack(alphas)
