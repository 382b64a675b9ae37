"""Which device a run uses, and which splat rasterizer draws there.

``"auto"`` picks CUDA only when a GPU rasterizer works there: gsplat when it is installed, else our
Warp kernels when Warp sees a CUDA device. Every command that renders resolves its device here.
"""
from __future__ import annotations

import functools

import torch

from avatar.errors import AvatarError


@functools.lru_cache(maxsize=1)
def gpu_raster_backend() -> str | None:
    """The rasterizer CUDA tensors get under ``backend="auto"``: ``"gsplat"`` when it imports,
    else ``"gpu"`` (our Warp kernels) when Warp sees a CUDA device, else ``None``."""
    if not torch.cuda.is_available():
        return None
    try:
        import gsplat  # noqa: F401 - optional
    except ImportError:
        pass
    else:
        return "gsplat"
    try:
        import warp as wp

        wp.config.quiet = True
        wp.init()
        return "gpu" if wp.is_cuda_available() else None
    except Exception:  # noqa: BLE001 - a Warp that cannot start is a Warp we cannot use
        return None


def pick_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when torch sees a GPU and :func:`gpu_raster_backend` has a rasterizer
    for it, else the CPU; ``"cuda"`` without a usable GPU is an error that says what to do."""
    if name == "auto":
        return torch.device("cuda" if gpu_raster_backend() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AvatarError("device='cuda' but no CUDA device is available; use device=cpu (or the fast-cpu preset)")
    if name == "cuda" and gpu_raster_backend() is None:
        raise AvatarError("device='cuda' but no GPU rasterizer works here: Warp sees no CUDA device and gsplat "
                          "is not installed; run `avatar doctor`, or use device=cpu")  # fmt: skip
    return torch.device(name)


def describe(device: torch.device) -> str:
    """One line naming the device and the rasterizer it draws with, for logs and reports."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}; rasterizer {gpu_raster_backend()})"
    return "cpu (rasterizer: C++ kernels)"
