"""Which device a run uses, and which splat rasterizer draws there.

``"auto"`` picks CUDA only when a GPU rasterizer works there: gsplat when it is installed, else our
Warp kernels when Warp sees a CUDA device. Every command that renders resolves its device here.
"""
from __future__ import annotations

import functools

import torch

from avatar.errors import AvatarError
from avatar.render.gaussians import resolve_backend


@functools.lru_cache(maxsize=1)
def gpu_raster_backend() -> str | None:
    """The rasterizer CUDA tensors get under ``backend="auto"`` (see
    :func:`~avatar.render.gaussians.resolve_backend`: ``AVATAR_RASTER_BACKEND``, else gsplat when it
    imports, else ``"gpu"``), or ``None`` when there is no CUDA device or that rasterizer cannot run
    there (our Warp kernels need Warp to see the device)."""
    if not torch.cuda.is_available():
        return None
    backend = resolve_backend("auto", torch.device("cuda"))
    if backend == "cpu":  # AVATAR_RASTER_BACKEND=cpu: the C++ kernels take CPU tensors only
        return None
    if backend != "gpu":
        return backend
    try:
        from avatar.render._gpu import _warp

        return "gpu" if _warp().is_cuda_available() else None
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
    backend = resolve_backend("auto", device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}; rasterizer {backend})"
    return f"cpu (rasterizer {backend})"
