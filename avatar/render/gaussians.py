"""Differentiable Gaussian-splat rasterization: one entry point, gsplat's semantics.

Backends (``RasterOptions.backend``; ``"auto"`` picks by device, and the environment variable
``AVATAR_RASTER_BACKEND`` = auto | gpu | gsplat | cpu | torch, when set, replaces what "auto" picks):

- ``"cpu"``: our tile rasterizer in ``kernels/splat_cpu`` (C++, compiled at first use); float32 or
  float64 CPU tensors. What "auto" picks for CPU tensors.
- ``"gpu"``: the same ops as NVIDIA Warp kernels in ``kernels/splat_warp``, run on the tensors'
  device (CUDA, or the CPU, which is how CI checks them); float32 only. What "auto" picks for CUDA
  tensors when gsplat is not installed.
- ``"gsplat"``: ``gsplat.rasterization`` (an optional dependency, CUDA only). What "auto" picks for
  CUDA tensors when gsplat is importable.
- ``"torch"``: the slow dense pure-torch twin (``_torch_impl``), for tests and debugging.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from avatar.errors import AvatarError
from avatar.render import _torch_impl
from avatar.render._sh import spherical_harmonics

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
_RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
_BACKENDS = ("auto", "gpu", "gsplat", "cpu", "torch")
BACKEND_ENV = "AVATAR_RASTER_BACKEND"


@dataclass(frozen=True)
class RasterOptions:
    """Rarely changed knobs of :func:`rasterize` (defaults are gsplat's).

    Attributes:
        eps2d: pixels^2 added to the 2D covariance diagonal (the 0.3 px low-pass filter).
        radius_clip: Gaussians whose radii (px) are both <= this are skipped.
        tile_size: tile edge in pixels for binning.
        absgrad: also accumulate |d loss / d means2d| per pixel into ``meta["means2d"].absgrad``
            during backward (densification a la AbsGS / gsplat's ``absgrad``).
        rasterize_mode: "classic", or "antialiased" (opacity scaled by the eps2d compensation
            factor, Mip-Splatting style).
        backend: "auto" (CUDA -> gsplat if importable, else "gpu"; CPU -> "cpu"; the environment
            variable ``AVATAR_RASTER_BACKEND``, when set, overrides this choice), "cpu" (our C++
            kernels), "gpu" (our Warp kernels, on the tensors' device, float32), "gsplat", or
            "torch" (the dense reference: every Gaussian at every pixel; small scenes only).
        num_threads: C++ kernel threads; None = ``torch.get_num_threads()``.
    """

    eps2d: float = 0.3
    radius_clip: float = 0.0
    tile_size: int = 16
    absgrad: bool = False
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    backend: Literal["auto", "gpu", "gsplat", "cpu", "torch"] = "auto"
    num_threads: int | None = None


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] | [C, N, D] | SH [N, K, 3] | [C, N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    backgrounds: Tensor | None = None,  # [C, D]
    near: float = 0.01,
    far: float = 1e10,
    sh_degree: int | None = None,
    render_mode: RenderMode = "RGB",
    options: RasterOptions = RasterOptions(),
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render N 3D Gaussians into C pinhole cameras, differentiably.

    Conventions are gsplat's: OpenCV cameras (x right, y down, z forward), ``viewmats`` are
    world->camera, ``Ks`` are pixel intrinsics, quaternions are wxyz (normalised here), scales are
    linear standard deviations (not log), opacities are in [0, 1] (not logits).

    Args:
        means: [N, 3] centres in world space.
        quats: [N, 4] rotations, wxyz, any non-zero norm.
        scales: [N, 3] per-axis standard deviations.
        opacities: [N] in [0, 1].
        colors: [N, D] or [C, N, D] features (RGB, or any D), or with ``sh_degree`` set,
            SH coefficients [N, K, 3] or [C, N, K, 3], K >= (sh_degree + 1)^2; then the colour is
            ``max(SH(view direction) + 0.5, 0)``.
        viewmats: [C, 4, 4] world->camera transforms.
        Ks: [C, 3, 3] intrinsics.
        width, height: image size in pixels.
        backgrounds: [C, D] colour behind the Gaussians (added as transmittance * background).
        near, far: camera-space z range; Gaussians outside are culled.
        sh_degree: None for plain features, else 0..3.
        render_mode: "RGB" (features), "D" (accumulated depth), "ED" (depth / alpha), or
            "RGB+D" / "RGB+ED" (depth appended as the last channel).
        options: see :class:`RasterOptions`.

    Returns:
        ``(render, alpha, meta)``: render [C, H, W, D'] (D' = D, 1 or D+1 by mode), alpha
        [C, H, W, 1], and meta with ``means2d`` [C, N, 2] (call ``meta["means2d"].retain_grad()``
        before backward to read its gradient; ``.absgrad`` with ``options.absgrad``), ``radii``
        [C, N, 2] int32 (0 = not drawn), ``depths`` [C, N], ``conics`` [C, N, 3], ``opacities``
        [C, N] and tile info.

    >>> import torch
    >>> N = 100
    >>> means = torch.randn(N, 3) * 0.1 + torch.tensor([0.0, 0.0, 1.0])
    >>> quats, scales = torch.randn(N, 4), torch.full((N, 3), 0.01)
    >>> opacities, colors = torch.full((N,), 0.8), torch.rand(N, 3)
    >>> K = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    >>> rgb, alpha, meta = rasterize(means, quats, scales, opacities, colors,
    ...                              torch.eye(4)[None], K[None], 64, 64)
    >>> rgb.shape, alpha.shape, meta["means2d"].shape
    (torch.Size([1, 64, 64, 3]), torch.Size([1, 64, 64, 1]), torch.Size([1, 100, 2]))
    """
    if render_mode not in _RENDER_MODES:
        raise AvatarError(f"render_mode must be one of {_RENDER_MODES}, got {render_mode!r}")
    if options.rasterize_mode not in ("classic", "antialiased"):
        raise AvatarError(f"rasterize_mode must be 'classic' or 'antialiased', got {options.rasterize_mode!r}")
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, sh_degree, width, height)

    backend = resolve_backend(options.backend, means.device)
    if backend == "gsplat":
        return _rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            backgrounds, near, far, sh_degree, render_mode, options,
        )  # fmt: skip
    if backend == "cpu":
        if means.device.type != "cpu":
            raise AvatarError(f"backend='cpu' needs CPU tensors, got {means.device}")
        if means.dtype not in (torch.float32, torch.float64):
            raise AvatarError(f"the CPU rasterizer takes float32 or float64, got {means.dtype}")
    elif backend == "gpu":
        tensors = (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds)
        bad = sorted({str(t.dtype) for t in tensors if t is not None and t.dtype != torch.float32})
        if bad:
            raise AvatarError(
                f"backend='gpu' takes float32 tensors, got {', '.join(bad)}: convert them with .float(), "
                "or use backend='cpu' (float64 on the CPU)"
            )
        if means.device.type not in ("cpu", "cuda"):
            raise AvatarError(f"backend='gpu' runs on CUDA or CPU tensors, got {means.device}")
    elif backend != "torch":
        raise AvatarError(f"unknown backend {backend!r}; use one of {_BACKENDS}")
    return _rasterize_ours(
        backend, means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        backgrounds, near, far, sh_degree, render_mode, options,
    )  # fmt: skip


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that ``backend`` means for tensors on ``device``: "auto" becomes
    ``$AVATAR_RASTER_BACKEND`` when that is set (and not "auto"), else "gsplat" (CUDA, gsplat
    importable), "gpu" (CUDA, no gsplat) or "cpu". Other values are returned as they are."""
    if backend != "auto":
        return backend
    env = os.environ.get(BACKEND_ENV, "").strip()
    if env and env not in _BACKENDS:
        raise AvatarError(f"{BACKEND_ENV}={env!r} is not a rasterizer backend; use one of {_BACKENDS}")
    if env and env != "auto":
        return env
    if device.type == "cuda":
        return "gsplat" if _gsplat_importable() else "gpu"
    return "cpu"


def _gsplat_importable() -> bool:
    try:
        import gsplat  # noqa: F401  (optional: only CUDA users install it)
    except ImportError:
        return False
    return True


def _check_shapes(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    backgrounds: Tensor | None,
    sh_degree: int | None,
    width: int,
    height: int,
) -> None:
    N, C = means.shape[0], viewmats.shape[0]
    expected = {
        "means": (means, (N, 3)),
        "quats": (quats, (N, 4)),
        "scales": (scales, (N, 3)),
        "opacities": (opacities, (N,)),
        "viewmats": (viewmats, (C, 4, 4)),
        "Ks": (Ks, (C, 3, 3)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise AvatarError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if sh_degree is None:
        ok = (colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))
        if not ok:
            raise AvatarError(f"colors must be [N, D] or [C, N, D] with N={N}, C={C}; got {list(colors.shape)}")
    else:
        ok = (colors.dim() == 3 and colors.shape[0] == N) or (colors.dim() == 4 and colors.shape[:2] == (C, N))
        if not ok or colors.shape[-1] != 3:
            raise AvatarError(f"SH colors must be [N, K, 3] or [C, N, K, 3]; got {list(colors.shape)}")
    if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != C):
        raise AvatarError(f"backgrounds must be [C, D] with C={C}; got {list(backgrounds.shape)}")
    if width <= 0 or height <= 0:
        raise AvatarError(f"image size must be positive, got {width}x{height}")
    devices = {t.device for t in (means, quats, scales, opacities, colors, viewmats, Ks)}
    if len(devices) != 1:
        raise AvatarError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def _rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor | None,
    near: float,
    far: float,
    sh_degree: int | None,
    render_mode: RenderMode,
    options: RasterOptions,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    try:
        import gsplat  # optional: only CUDA users need it
    except ImportError as exc:
        raise AvatarError(
            "Rendering CUDA tensors needs gsplat: `pip install gsplat` (or move the tensors to "
            "the CPU to use the built-in CPU rasterizer)."
        ) from exc
    return gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near, far_plane=far, radius_clip=options.radius_clip, eps2d=options.eps2d,
        sh_degree=sh_degree, packed=False, tile_size=options.tile_size, backgrounds=backgrounds,
        render_mode=render_mode, absgrad=options.absgrad, rasterize_mode=options.rasterize_mode,
    )  # fmt: skip


def _rasterize_ours(
    backend: str,
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor | None,
    near: float,
    far: float,
    sh_degree: int | None,
    render_mode: RenderMode,
    options: RasterOptions,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    C, N = viewmats.shape[0], means.shape[0]
    antialiased = options.rasterize_mode == "antialiased"
    n_threads = options.num_threads or torch.get_num_threads() or os.cpu_count() or 1
    if backend in ("cpu", "gpu"):
        # Both load (and on first use compile) their kernels; same signatures.
        if backend == "cpu":
            from avatar.render import _cpu as kernels
        else:
            from avatar.render import _gpu as kernels

        radii, means2d, depths, conics, comps = kernels.project(
            means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=options.eps2d,
            near=near, far=far, radius_clip=options.radius_clip, antialiased=antialiased,
            n_threads=n_threads,
        )  # fmt: skip
    else:
        radii, means2d, depths, conics, comps = _torch_impl.project(
            means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=options.eps2d,
            near=near, far=far, radius_clip=options.radius_clip, antialiased=antialiased,
        )  # fmt: skip
    opac = opacities[None].expand(C, N)
    if antialiased:
        opac = opac * comps

    if sh_degree is None:
        feats = colors if colors.dim() == 3 else colors[None].expand(C, N, colors.shape[-1])
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3] camera centres in world space
        dirs = means[None] - campos[:, None]  # [C, N, 3]
        coeffs = colors if colors.dim() == 4 else colors[None].expand(C, *colors.shape)
        feats = torch.clamp_min(spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)

    bgs = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
        if bgs is not None:
            bgs = torch.cat([bgs, torch.zeros_like(bgs[:, :1])], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        bgs = None if bgs is None else torch.zeros_like(bgs[:, :1])
    if bgs is not None and bgs.shape[-1] != feats.shape[-1]:
        raise AvatarError(f"backgrounds have {bgs.shape[-1]} channels but colors have {feats.shape[-1]}")
    if bgs is not None:
        bgs = bgs.to(feats.dtype)

    tile = options.tile_size
    if backend in ("cpu", "gpu"):
        offsets, flat_ids = kernels.bin_tiles(means2d, radii, depths, width, height, tile, n_threads)
        render, alpha = kernels.rasterize_to_pixels(
            means2d, conics, feats, opac, bgs, width, height, tile, offsets, flat_ids,
            options.absgrad, n_threads,
        )  # fmt: skip
        n_isects = int(flat_ids.numel())
    else:
        render, alpha = _torch_impl.rasterize_to_pixels(
            means2d, conics, feats, opac, radii, depths, width, height, tile, bgs
        )
        n_isects = -1  # the dense reference does not bin
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
    meta = {
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "width": width,
        "height": height,
        "tile_size": tile,
        "tile_width": math.ceil(width / tile),
        "tile_height": math.ceil(height / tile),
        "n_cameras": C,
        "n_isects": n_isects,
    }
    return render, alpha, meta
