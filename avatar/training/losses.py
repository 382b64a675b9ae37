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


class MetricSums:
    """Running sums behind :func:`masked_metrics`, fed one batch of frames at a time, so that a
    clip's pooled figures need no more memory than one frame (frames are rendered on the run's
    device; a long held-out set would not fit there at once). Sums are kept in float64 on the host."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.sq_fg = self.ssim_fg = self.sq_all = self.ssim_all = 0.0
        self.values_fg = self.pixels_fg = self.values_all = self.pixels_all = 0

    @torch.no_grad()
    def add(self, pred: Tensor, target: Tensor, mask: Tensor) -> "MetricSums":
        """Adds images ``[B, H, W, C]`` with their matte ``[B, H, W, 1]``; returns ``self``."""
        fg = mask[..., 0] > self.threshold
        sq = ((pred - target) ** 2).double()
        smap = ssim_map(pred, target).double()
        n = int(fg.sum())
        self.sq_fg += float(sq[fg].sum())
        self.ssim_fg += float(smap[fg].sum())
        self.pixels_fg += n
        self.values_fg += n * sq.shape[-1]
        self.sq_all += float(sq.sum())
        self.ssim_all += float(smap.sum())
        self.pixels_all += smap.numel()
        self.values_all += sq.numel()
        return self

    def merge(self, other: "MetricSums") -> "MetricSums":
        """Adds ``other``'s sums (e.g. one frame's, whose own figures are wanted too); returns ``self``."""
        for name in ("sq_fg", "ssim_fg", "sq_all", "ssim_all", "values_fg", "pixels_fg", "values_all", "pixels_all"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def result(self) -> dict[str, float]:
        """PSNR (dB) and SSIM over foreground pixels, and ``psnr_full``/``ssim_full`` over every pixel."""
        if self.pixels_all == 0:
            return {}
        full = {"psnr_full": _psnr(self.sq_all / self.values_all), "ssim_full": self.ssim_all / self.pixels_all}
        if self.pixels_fg == 0:
            return {"psnr": float("nan"), "ssim": float("nan"), "pixels": 0, **full}
        return {"psnr": _psnr(self.sq_fg / self.values_fg), "ssim": self.ssim_fg / self.pixels_fg,
                "pixels": self.pixels_fg, **full}  # fmt: skip


def masked_metrics(pred: Tensor, target: Tensor, mask: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """PSNR (dB) and SSIM over foreground pixels (``mask [B, H, W, 1] > threshold``), pooled
    over the batch: PSNR from the mean squared error of all foreground pixels and channels,
    SSIM as the mean of the SSIM map over foreground pixels (both images composited on the same
    background beforehand). ``psnr_full``/``ssim_full``: the same over every pixel - the
    convention of the head-avatar literature (INSTA, GaussianAvatars, FlashAvatar), where the
    background, identical in both images up to the render's stray splats, raises the figure."""
    return MetricSums(threshold).add(pred, target, mask).result()


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))
