"""Photometric losses and masked image metrics. Images are ``[B, H, W, C]`` float in [0, 1]."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _gauss_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM ``[B, H, W]`` (mean over channels) with a Gaussian window, zero padding at the
    borders (Wang et al. 2004 constants; what the 3DGS literature reports)."""
    B, H, W, C = a.shape
    x = torch.cat([a, b, a * a, b * b, a * b], -1).permute(0, 3, 1, 2)  # [B, 5C, H, W]
    g = _gauss_window(window, sigma, a.device, a.dtype)
    k = 5 * C
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(k, 1, 1, window), padding=(0, window // 2), groups=k)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(k, 1, window, 1), padding=(window // 2, 0), groups=k)
    mu_a, mu_b, aa, bb, ab = x.split(C, dim=1)
    c1, c2 = 0.01**2, 0.03**2
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(1)


def photometric_loss(pred: Tensor, target: Tensor, lambda_dssim: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """``(1 - lambda) * 10 * MSE + lambda * (1 - SSIM)`` over the whole (composited) image.

    Why L2: where the frames vary in ways the avatar cannot predict (hair that swings, a silhouette
    that shifts by a few pixels), L1 fits the per-pixel median, a sharp edge in one place, while
    L2 fits the mean, the blend that minimises the squared error PSNR measures. The factor 10
    keeps typical residuals (~0.1) at L1's magnitude against the other terms."""
    diff = pred - target
    l1 = diff.abs().mean()
    err = 10.0 * (diff**2).mean()
    if lambda_dssim == 0:  # the SSIM map costs about a quarter of a CPU training step
        return err, {"l1": float(l1.detach())}
    dssim = 1.0 - ssim_map(pred, target).mean()
    loss = (1.0 - lambda_dssim) * err + lambda_dssim * dssim
    return loss, {"l1": float(l1.detach()), "dssim": float(dssim.detach())}


@torch.no_grad()
def masked_metrics(pred: Tensor, target: Tensor, mask: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """PSNR (dB) and SSIM over foreground pixels (``mask [B, H, W, 1] > threshold``), pooled
    over the batch: PSNR from the mean squared error of all foreground pixels and channels,
    SSIM as the mean of the SSIM map over foreground pixels (both images composited on the same
    background beforehand). ``psnr_full``/``ssim_full``: the same over every pixel - the
    convention of the head-avatar literature (INSTA, GaussianAvatars, FlashAvatar), where the
    background, identical in both images up to the render's stray splats, raises the figure."""
    fg = mask[..., 0] > threshold
    n = int(fg.sum())
    sq = (pred - target) ** 2
    smap = ssim_map(pred, target)
    full = {"psnr_full": _psnr(float(sq.mean())), "ssim_full": float(smap.mean())}
    if n == 0:
        return {"psnr": float("nan"), "ssim": float("nan"), "pixels": 0, **full}
    return {"psnr": _psnr(float(sq[fg].mean())), "ssim": float(smap[fg].mean()), "pixels": n, **full}


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))
