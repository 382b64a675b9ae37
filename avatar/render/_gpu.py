"""Autograd wrappers around the Warp splat kernels (``kernels/splat_warp``): projection, binning,
blending. Same signatures and outputs as :mod:`avatar.render._cpu`, so the rasterizer dispatches
between the two by module.

The kernels run on the tensors' device: "cpu" (Warp's LLVM backend: how CI checks them) or
"cuda:N" (NVRTC, on torch's current stream). Tensors are shared with Warp without copies
(``wp.from_torch``) and must be float32, as gsplat's. ``n_threads`` is accepted for the
signature's sake and ignored (Warp runs CPU kernels on one thread). Warp is imported and
initialised at the first call; kernels compile at their first launch and are cached by Warp.
"""
from __future__ import annotations

import functools
import math
import weakref
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from avatar.errors import AvatarError


@functools.cache  # one import + init per process
def _warp() -> ModuleType:
    try:
        import warp as wp
    except ImportError as exc:
        raise AvatarError(
            "The 'gpu' rasterizer backend needs NVIDIA Warp: `pip install warp-lang` (or use "
            "backend='cpu' on the CPU)."
        ) from exc
    wp.config.log_level = wp.LOG_WARNING  # no greeting, no per-module compile messages
    wp.init()
    return wp


def _kernels() -> tuple[ModuleType, ModuleType, ModuleType]:
    _warp()
    from avatar_kernels.splat_warp import binning, project, raster

    return project, binning, raster


def _arr(t: Tensor | None, dtype: Any = None) -> Any:
    """A Warp view of a contiguous tensor (None -> an empty array: "not given" to the kernels)."""
    if t is None:
        return None
    return _warp().from_torch(t, dtype=dtype, requires_grad=False)


def _launch(kernel: Any, dim: int | tuple[int, ...], inputs: list, device: torch.device) -> None:
    wp = _warp()
    if math.prod(dim if isinstance(dim, tuple) else (dim,)) == 0:
        return
    if device.type == "cuda":
        wp.launch(kernel, dim=dim, inputs=inputs, stream=wp.stream_from_torch(device))
    else:
        wp.launch(kernel, dim=dim, inputs=inputs, device="cpu")


def _check_f32(*tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.dtype != torch.float32:
            raise AvatarError(
                f"the 'gpu' rasterizer backend takes float32 tensors, got {t.dtype}: convert with "
                ".float(), or use backend='cpu' (float64 on the CPU)"
            )


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        eps2d: float,
        near: float,
        far: float,
        radius_clip: float,
        antialiased: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        wp = _warp()
        kern, _, _ = _kernels()
        means, quats, scales, opacities, viewmats, Ks = (
            t.contiguous() for t in (means, quats, scales, opacities, viewmats, Ks)
        )
        _check_f32(means, quats, scales, opacities, viewmats, Ks)
        C, N, dev = viewmats.shape[0], means.shape[0], means.device
        radii = torch.empty(C, N, 2, dtype=torch.int32, device=dev)
        means2d = torch.empty(C, N, 2, dtype=torch.float32, device=dev)
        depths = torch.empty(C, N, dtype=torch.float32, device=dev)
        conics = torch.empty(C, N, 3, dtype=torch.float32, device=dev)
        comps = torch.empty(C, N, dtype=torch.float32, device=dev)
        # fmt: off
        _launch(kern.project_fwd, (C, N), [
            _arr(means, wp.vec3), _arr(quats, wp.vec4), _arr(scales, wp.vec3), _arr(opacities),
            _arr(viewmats, wp.mat44), _arr(Ks, wp.mat33), width, height, eps2d, near, far, radius_clip,
            antialiased, _arr(radii, wp.vec2i), _arr(means2d, wp.vec2), _arr(depths), _arr(conics, wp.vec3),
            _arr(comps),
        ], dev)
        # fmt: on
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii, conics, comps)
        ctx.args = (width, height, eps2d, antialiased)
        ctx.mark_non_differentiable(radii)
        return radii, means2d, depths, conics, comps

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, _v_radii: Tensor, v_means2d: Tensor, v_depths: Tensor, v_conics: Tensor, v_comps: Tensor
    ) -> tuple[Tensor | None, ...]:
        wp = _warp()
        kern, _, _ = _kernels()
        means, quats, scales, viewmats, Ks, radii, conics, comps = ctx.saved_tensors
        width, height, eps2d, antialiased = ctx.args
        C, N, dev = viewmats.shape[0], means.shape[0], means.device

        def grad_or_zeros(g: Tensor | None, shape: tuple[int, ...]) -> Tensor:
            return torch.zeros(shape, dtype=torch.float32, device=dev) if g is None else g.contiguous()

        v_means2d = grad_or_zeros(v_means2d, (C, N, 2))
        v_depths = grad_or_zeros(v_depths, (C, N))
        v_conics = grad_or_zeros(v_conics, (C, N, 3))
        use_comp = antialiased and v_comps is not None
        v_comps = v_comps.contiguous() if use_comp else None
        # Written whole by the kernel (one thread per Gaussian).
        v_means, v_quats, v_scales = torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales)
        # Per (Gaussian, camera) parts, summed here: deterministic, and no atomics on 16 floats.
        v_vm_parts = torch.empty(N, C, 4, 4, dtype=torch.float32, device=dev) if ctx.needs_input_grad[4] else None
        # fmt: off
        _launch(kern.project_bwd, N, [
            _arr(means, wp.vec3), _arr(quats, wp.vec4), _arr(scales, wp.vec3), _arr(viewmats, wp.mat44),
            _arr(Ks, wp.mat33), width, height, eps2d, _arr(radii, wp.vec2i), _arr(conics, wp.vec3),
            _arr(comps if use_comp else None), _arr(v_means2d, wp.vec2), _arr(v_depths), _arr(v_conics, wp.vec3),
            _arr(v_comps), _arr(v_means, wp.vec3), _arr(v_quats, wp.vec4), _arr(v_scales, wp.vec3),
            _arr(v_vm_parts, wp.mat44),
        ], dev)
        # fmt: on
        v_viewmats = None if v_vm_parts is None else v_vm_parts.sum(dim=0)
        return v_means, v_quats, v_scales, None, v_viewmats, None, None, None, None, None, None, None, None


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    eps2d: float,
    near: float,
    far: float,
    radius_clip: float,
    antialiased: bool,
    n_threads: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Warp twin of :func:`avatar.render._cpu.project` (same outputs; ``n_threads`` is ignored)."""
    return _Project.apply(
        means, quats, scales, opacities.detach(), viewmats, Ks, width, height,
        eps2d, near, far, radius_clip, antialiased,
    )  # fmt: skip


def _depth_keys(depths: Tensor) -> Tensor:
    """int64 keys in [0, 2^32) ordered like the float32 depths (negatives too; -0 ties with +0)."""
    bits = torch.where(depths == 0, torch.zeros_like(depths), depths).view(torch.int32).to(torch.int64)
    bits = bits & 0xFFFFFFFF
    return torch.where(bits >= 2**31, bits ^ 0xFFFFFFFF, bits | 2**31)


def bin_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int, n_threads: int = 1
) -> tuple[Tensor, Tensor]:
    """Tile lists: offsets [C*tiles_y*tiles_x + 1] int64 into flat ids [n_isect] int32 (c*N + n),
    each tile's list sorted front to back (ties in flat-id order), the same lists as
    :func:`avatar.render._cpu.bin_tiles`."""
    wp = _warp()
    _, kern, _ = _kernels()
    C, N = radii.shape[:2]
    if C * N >= 2**31:
        raise AvatarError(f"too many (camera, Gaussian) pairs for the Warp kernels: {C} x {N}")
    dev = means2d.device
    means2d = means2d.detach().contiguous().reshape(C * N, 2)
    radii = radii.contiguous().reshape(C * N, 2)
    _check_f32(means2d, depths)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = C * tiles_x * tiles_y
    m2, r2 = _arr(means2d, wp.vec2), _arr(radii, wp.vec2i)
    counts = torch.empty(C * N, dtype=torch.int64, device=dev)
    _launch(kern.count_tiles, C * N, [m2, r2, tile_size, tiles_x, tiles_y, _arr(counts)], dev)
    ends = torch.cumsum(counts, 0)
    n_isect = int(ends[-1]) if C * N else 0  # the one host sync: the list length
    if n_isect >= 2**31:
        raise AvatarError(f"too many tile intersections for the Warp kernels: {n_isect}")
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=dev)
    flat_ids = torch.empty(n_isect, dtype=torch.int32, device=dev)
    if n_isect == 0:
        return offsets, flat_ids
    tile_of = torch.empty(n_isect, dtype=torch.int64, device=dev)
    # fmt: off
    _launch(kern.fill_tiles, C * N, [
        m2, r2, _arr(ends - counts), N, tile_size, tiles_x, tiles_y, _arr(tile_of), _arr(flat_ids),
    ], dev)
    # fmt: on
    keys = (tile_of << 32) | _depth_keys(depths.detach().reshape(-1))[flat_ids.long()]
    keys, order = torch.sort(keys, stable=True)  # stable: equal depths stay in flat-id order
    flat_ids = flat_ids[order].contiguous()
    _launch(kern.tile_ranges, n_isect, [_arr((keys >> 32).contiguous()), n_tiles, _arr(offsets)], dev)
    return offsets, flat_ids


def _raster_inputs(
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, backgrounds: Tensor | None,
    offsets: Tensor, flat_ids: Tensor, width: int, height: int, tile_size: int,
) -> tuple[Any, list]:  # fmt: skip
    """(vector type, the leading kernel arguments shared by the forward and the backward)."""
    wp = _warp()
    C, N, D = colors.shape
    vecD = _kernels()[2].vector_type(D)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    # fmt: off
    args = [
        _arr(means2d.reshape(C * N, 2), wp.vec2), _arr(conics.reshape(C * N, 3), wp.vec3),
        _arr(colors.reshape(C * N, D), vecD), _arr(opacities.reshape(C * N)), _arr(backgrounds, vecD),
        _arr(offsets), _arr(flat_ids), width, height, tile_size, tiles_x, tiles_y,
    ]
    # fmt: on
    return vecD, args


class _RasterizeToPixels(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        means2d: Tensor,
        conics: Tensor,
        colors: Tensor,
        opacities: Tensor,
        backgrounds: Tensor | None,
        width: int,
        height: int,
        tile_size: int,
        offsets: Tensor,
        flat_ids: Tensor,
        absgrad: bool,
    ) -> tuple[Tensor, Tensor]:
        # absgrad rides on the caller's means2d tensor (meta["means2d"]); weakly referenced so the
        # graph does not keep it alive on its own.
        ctx.means2d_ref = weakref.ref(means2d) if absgrad else None
        means2d, conics, colors, opacities = (t.contiguous() for t in (means2d, conics, colors, opacities))
        bg = backgrounds.contiguous() if backgrounds is not None else None
        _check_f32(means2d, conics, colors, opacities, bg)
        C, N, D = colors.shape
        dev = colors.device
        vecD, args = _raster_inputs(means2d, conics, colors, opacities, bg, offsets, flat_ids, width, height, tile_size)
        f32 = {"dtype": torch.float32, "device": dev}
        render = torch.empty(C, height, width, D, **f32)
        trans = torch.empty(C, height, width, **f32)
        alpha = torch.empty(C, height, width, 1, **f32)  # 1 - trans, written by the kernel
        last = torch.empty(C, height, width, dtype=torch.int32, device=dev)
        fwd = _kernels()[2].forward_kernel(D)
        # fmt: off
        _launch(fwd, (offsets.numel() - 1) * tile_size * tile_size, args + [  # a thread per pixel of every tile
            _arr(render.reshape(-1, D), vecD), _arr(trans.reshape(-1)), _arr(alpha.reshape(-1)),
            _arr(last.reshape(-1)),
        ], dev)
        # fmt: on
        ctx.save_for_backward(means2d, conics, colors, opacities, bg, offsets, flat_ids, trans, last)
        ctx.args = (width, height, tile_size, absgrad)
        return render, alpha

    @staticmethod
    def backward(ctx: Any, v_render: Tensor, v_alpha: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        wp = _warp()
        means2d, conics, colors, opacities, bg, offsets, flat_ids, trans, last = ctx.saved_tensors
        width, height, tile_size, absgrad = ctx.args
        C, N, D = colors.shape
        dev = colors.device
        if v_render is None:
            v_render = torch.zeros(C, height, width, D, dtype=torch.float32, device=dev)
        v_render = v_render.contiguous()
        v_alpha = None if v_alpha is None else v_alpha.contiguous().reshape(-1)  # None: the kernel reads 0
        # Accumulated by the kernel's atomics.
        v_means2d, v_conics = torch.zeros_like(means2d), torch.zeros_like(conics)
        v_colors, v_opac = torch.zeros_like(colors), torch.zeros_like(opacities)
        v_abs = torch.zeros_like(means2d) if absgrad else None
        vecD, args = _raster_inputs(means2d, conics, colors, opacities, bg, offsets, flat_ids, width, height, tile_size)
        bwd = _kernels()[2].backward_kernel(D)
        # fmt: off
        _launch(bwd, (offsets.numel() - 1) * tile_size * tile_size, args + [
            _arr(trans.reshape(-1)), _arr(last.reshape(-1)), _arr(v_render.reshape(-1, D), vecD), _arr(v_alpha),
            _arr(v_means2d.reshape(-1, 2), wp.vec2), _arr(v_conics.reshape(-1, 3), wp.vec3),
            _arr(v_colors.reshape(-1, D), vecD), _arr(v_opac.reshape(-1)),
            _arr(None if v_abs is None else v_abs.reshape(-1, 2), wp.vec2),
        ], dev)
        # fmt: on
        if absgrad:
            # Same hook as gsplat: the summed |per-pixel gradient| rides on the means2d tensor.
            target = ctx.means2d_ref()
            if target is not None:
                target.absgrad = v_abs
        v_bg = None
        if bg is not None and ctx.needs_input_grad[4]:
            v_bg = (v_render * trans.unsqueeze(-1)).sum(dim=(1, 2))
        return v_means2d, v_conics, v_colors, v_opac, v_bg, None, None, None, None, None, None


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    backgrounds: Tensor | None,  # [C, D]
    width: int,
    height: int,
    tile_size: int,
    offsets: Tensor,
    flat_ids: Tensor,
    absgrad: bool,
    n_threads: int = 1,
) -> tuple[Tensor, Tensor]:
    """Warp twin of :func:`avatar.render._cpu.rasterize_to_pixels` (``n_threads`` is ignored)."""
    return _RasterizeToPixels.apply(
        means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flat_ids, absgrad
    )
