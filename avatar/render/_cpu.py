"""Autograd wrappers around the CPU splat kernels (projection, binning, blending) and the
per-primitive blendshape mix the Gaussian avatar evaluates every step.

Each op is a torch.autograd.Function whose forward and backward call the C++ kernels through
ctypes (see _cpu_backend). Tensors are made contiguous and must share one floating dtype
(float32 for speed; float64 is supported so gradcheck can verify the backward passes).
The kernels release the GIL (ctypes does) and spread work over ``n_threads`` threads.
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor

from avatar.render._cpu_backend import load_cpu_kernels


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _sfx(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"CPU splat kernels take float32 or float64 tensors, got {dtype}")


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
        n_threads: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        lib = load_cpu_kernels()
        means, quats, scales, opacities, viewmats, Ks = (
            t.contiguous() for t in (means, quats, scales, opacities, viewmats, Ks)
        )
        C, N, dt = viewmats.shape[0], means.shape[0], means.dtype
        radii = torch.empty(C, N, 2, dtype=torch.int32)
        means2d = torch.empty(C, N, 2, dtype=dt)
        depths = torch.empty(C, N, dtype=dt)
        conics = torch.empty(C, N, 3, dtype=dt)
        comps = torch.empty(C, N, dtype=dt)
        getattr(lib, f"splat_project_fwd_{_sfx(dt)}")(
            C, N, _ptr(means), _ptr(quats), _ptr(scales), _ptr(opacities), _ptr(viewmats), _ptr(Ks),
            width, height, eps2d, near, far, radius_clip, int(antialiased),
            _ptr(radii), _ptr(means2d), _ptr(depths), _ptr(conics), _ptr(comps), n_threads,
        )  # fmt: skip
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii, conics, comps)
        ctx.args = (width, height, eps2d, antialiased, n_threads)
        ctx.mark_non_differentiable(radii)
        return radii, means2d, depths, conics, comps

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, _v_radii: Tensor, v_means2d: Tensor, v_depths: Tensor, v_conics: Tensor, v_comps: Tensor
    ) -> tuple[Tensor | None, ...]:
        means, quats, scales, viewmats, Ks, radii, conics, comps = ctx.saved_tensors
        width, height, eps2d, antialiased, n_threads = ctx.args
        C, N, dt = viewmats.shape[0], means.shape[0], means.dtype

        def grad_or_zeros(g: Tensor | None, shape: tuple[int, ...]) -> Tensor:
            return torch.zeros(shape, dtype=dt) if g is None else g.contiguous()

        v_means2d = grad_or_zeros(v_means2d, (C, N, 2))
        v_depths = grad_or_zeros(v_depths, (C, N))
        v_conics = grad_or_zeros(v_conics, (C, N, 3))
        use_comp = antialiased and v_comps is not None
        v_comps_c = v_comps.contiguous() if use_comp else None
        # Uninitialised: the kernel writes every row (torch's zero-fill would wake its thread pool,
        # whose spinning threads then compete with the kernel's).
        v_means = torch.empty_like(means)
        v_quats = torch.empty_like(quats)
        v_scales = torch.empty_like(scales)
        v_viewmats = torch.zeros_like(viewmats) if ctx.needs_input_grad[4] else None
        load_cpu_kernels_fn = getattr(load_cpu_kernels(), f"splat_project_bwd_{_sfx(dt)}")
        load_cpu_kernels_fn(
            C, N, _ptr(means), _ptr(quats), _ptr(scales), _ptr(viewmats), _ptr(Ks), width, height, eps2d,
            _ptr(radii), _ptr(conics), _ptr(comps) if use_comp else None,
            _ptr(v_means2d), _ptr(v_depths), _ptr(v_conics), _ptr(v_comps_c),
            _ptr(v_means), _ptr(v_quats), _ptr(v_scales), _ptr(v_viewmats), n_threads,
        )  # fmt: skip
        return v_means, v_quats, v_scales, None, v_viewmats, None, None, None, None, None, None, None, None, None


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
    n_threads: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Kernel twin of :func:`avatar.render._torch_impl.project` (same outputs)."""
    return _Project.apply(
        means, quats, scales, opacities.detach(), viewmats, Ks, width, height,
        eps2d, near, far, radius_clip, antialiased, n_threads,
    )  # fmt: skip


def bin_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int, n_threads: int
) -> tuple[Tensor, Tensor]:
    """Tile lists: offsets [C*tiles_y*tiles_x + 1] int64 into flat ids [n_isect] int32 (c*N + n),
    each tile's list sorted front to back."""
    lib = load_cpu_kernels()
    C, N = radii.shape[:2]
    if C * N >= 2**31:
        raise ValueError(f"too many (camera, Gaussian) pairs for the CPU kernels: {C} x {N}")
    means2d, radii, depths = means2d.detach().contiguous(), radii.contiguous(), depths.detach().contiguous()
    sfx = _sfx(means2d.dtype)
    n_tiles = C * math.ceil(width / tile_size) * math.ceil(height / tile_size)
    offsets = torch.empty(n_tiles + 1, dtype=torch.int64)
    n_isect = getattr(lib, f"splat_bin_count_{sfx}")(
        C, N, _ptr(means2d), _ptr(radii), _ptr(depths), width, height, tile_size, _ptr(offsets), n_threads
    )
    flat_ids = torch.empty(n_isect, dtype=torch.int32)
    getattr(lib, f"splat_bin_fill_{sfx}")(
        C, N, _ptr(means2d), _ptr(radii), _ptr(depths), width, height, tile_size,
        _ptr(offsets), _ptr(flat_ids), n_threads,
    )  # fmt: skip
    return offsets, flat_ids


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
        n_threads: int,
    ) -> tuple[Tensor, Tensor]:
        lib = load_cpu_kernels()
        # absgrad is attached to the caller's means2d tensor (meta["means2d"]); a weak reference
        # so the graph does not keep it alive on its own.
        ctx.means2d_ref = weakref.ref(means2d) if absgrad else None
        means2d, conics, colors, opacities = (t.contiguous() for t in (means2d, conics, colors, opacities))
        bg = backgrounds.contiguous() if backgrounds is not None else None
        C, N, D = colors.shape
        dt = colors.dtype
        render = torch.empty(C, height, width, D, dtype=dt)
        trans = torch.empty(C, height, width, dtype=dt)
        alpha = torch.empty(C, height, width, 1, dtype=dt)  # 1 - trans, written by the kernel
        last = torch.empty(C, height, width, dtype=torch.int32)
        getattr(lib, f"splat_raster_fwd_{_sfx(dt)}")(
            C, N, D, width, height, tile_size, _ptr(means2d), _ptr(conics), _ptr(colors), _ptr(opacities),
            _ptr(bg), _ptr(offsets), _ptr(flat_ids), _ptr(render), _ptr(trans), _ptr(alpha), _ptr(last),
            n_threads,
        )  # fmt: skip
        ctx.save_for_backward(means2d, conics, colors, opacities, bg, offsets, flat_ids, trans, last)
        ctx.args = (width, height, tile_size, absgrad, n_threads)
        return render, alpha

    @staticmethod
    def backward(ctx: Any, v_render: Tensor, v_alpha: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        means2d, conics, colors, opacities, bg, offsets, flat_ids, trans, last = ctx.saved_tensors
        width, height, tile_size, absgrad, n_threads = ctx.args
        C, N, D = colors.shape
        dt = colors.dtype
        v_render = torch.zeros_like(colors[:, :1, :1].expand(C, height, width, D)) if v_render is None else v_render
        v_render = v_render.contiguous()
        v_alpha = None if v_alpha is None else v_alpha.contiguous()  # None: the kernel reads zeros
        # Uninitialised: the kernel zeroes them (see _Project.backward).
        v_means2d = torch.empty_like(means2d)
        v_conics = torch.empty_like(conics)
        v_colors = torch.empty_like(colors)
        v_opac = torch.empty_like(opacities)
        v_abs = torch.empty_like(means2d) if absgrad else None
        getattr(load_cpu_kernels(), f"splat_raster_bwd_{_sfx(dt)}")(
            C, N, D, width, height, tile_size, _ptr(means2d), _ptr(conics), _ptr(colors), _ptr(opacities),
            _ptr(bg), _ptr(offsets), _ptr(flat_ids), _ptr(trans), _ptr(last), _ptr(v_render), _ptr(v_alpha),
            _ptr(v_means2d), _ptr(v_conics), _ptr(v_colors), _ptr(v_opac), _ptr(v_abs), n_threads,
        )  # fmt: skip
        if absgrad:
            # Same hook as gsplat: the summed |per-pixel gradient| rides on the means2d tensor.
            target = ctx.means2d_ref()
            if target is not None:
                target.absgrad = v_abs
        v_bg = None
        if bg is not None and ctx.needs_input_grad[4]:
            v_bg = (v_render * trans.unsqueeze(-1)).sum(dim=(1, 2))
        return v_means2d, v_conics, v_colors, v_opac, v_bg, None, None, None, None, None, None, None


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
    n_threads: int,
) -> tuple[Tensor, Tensor]:
    """Kernel twin of :func:`avatar.render._torch_impl.rasterize_to_pixels`."""
    return _RasterizeToPixels.apply(
        means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flat_ids,
        absgrad, n_threads,
    )  # fmt: skip


class _Mix(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weights: Tensor, shapes: Tensor, n_threads: int) -> Tensor:  # type: ignore[override]
        weights, shapes = weights.contiguous(), shapes.contiguous()
        B, N, R = weights.shape
        C = shapes.shape[-1]
        out = torch.empty(B, N, C, dtype=shapes.dtype)
        getattr(load_cpu_kernels(), f"splat_mix_fwd_{_sfx(shapes.dtype)}")(
            B, N, R, C, _ptr(weights), _ptr(shapes), _ptr(out), n_threads
        )
        ctx.save_for_backward(weights, shapes)
        ctx.n_threads = n_threads
        return out

    @staticmethod
    def backward(ctx: Any, v_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        weights, shapes = ctx.saved_tensors
        B, N, R = weights.shape
        C = shapes.shape[-1]
        v_w = torch.empty_like(weights) if ctx.needs_input_grad[0] else None
        v_s = torch.empty_like(shapes) if ctx.needs_input_grad[1] else None
        # Bound to a name: a contiguous copy made inside the call's arguments would be freed as
        # soon as its address is taken, before the kernel reads it.
        v_out = v_out.contiguous()
        getattr(load_cpu_kernels(), f"splat_mix_bwd_{_sfx(shapes.dtype)}")(
            B, N, R, C, _ptr(weights), _ptr(shapes), _ptr(v_out), _ptr(v_w), _ptr(v_s), ctx.n_threads
        )
        return v_w, v_s, None


def mix(weights: Tensor, shapes: Tensor, n_threads: int = 1) -> Tensor:
    """``weights [B, N, R]`` x ``shapes [N, R, C]`` -> ``[B, N, C]``: each row's own R blendshapes
    weighted by that row's weights (kernel twin of ``(weights[..., None] * shapes[None]).sum(-2)``).
    Both tensors float32 or both float64, on the CPU."""
    if weights.dtype != shapes.dtype:
        raise TypeError(f"weights and shapes must share a dtype, got {weights.dtype} and {shapes.dtype}")
    if weights.dim() != 3 or shapes.dim() != 3 or weights.shape[1:] != shapes.shape[:2]:
        raise ValueError(f"weights must be [B, N, R] and shapes [N, R, C], got {list(weights.shape)} and {list(shapes.shape)}")
    return _Mix.apply(weights, shapes, n_threads)


def mesh_pose(vertices: Tensor, faces: Tensor, face_id: Tensor, offset: Tensor, quat: Tensor, scale: Tensor,
              surface: Tensor | None = None, n_threads: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """Gaussians on a mesh, posed (forward only, no gradient): the kernel twin of
    :meth:`avatar.representations.MeshGaussians.forward`'s geometry.

    Args:
        vertices: ``[B, V, 3]``.  faces: ``[F, 3]``.  face_id: ``[N]`` each Gaussian's triangle.
        offset: ``[B, N, 3]`` or ``[N, 3]`` (or ``[1, N, 3]``) position in its triangle's frame,
            in triangle units.  quat: ``[N, 4]`` wxyz rotation in that frame.  scale: ``[N, 3]``
            in triangle units.  surface: ``[N]`` factor of each normal (None: no normals).
    Returns:
        ``(means [B, N, 3], quats [B, N, 4], scales [B, N, 3], normals [B, N, 3] or None)`` in world.
    """
    dtype = vertices.dtype
    B, V, _ = vertices.shape
    F, N = int(faces.shape[0]), int(face_id.shape[0])
    if offset.dim() == 3 and offset.shape[0] == 1:
        offset = offset[0]
    batched = offset.dim() == 3
    if (offset.shape[-2:] != (N, 3) or (batched and offset.shape[0] != B) or quat.shape != (N, 4)
            or scale.shape != (N, 3) or (surface is not None and surface.shape != (N,))):  # fmt: skip
        raise ValueError(f"mesh_pose: offset {list(offset.shape)}, quat {list(quat.shape)}, scale {list(scale.shape)} "
                         f"do not fit {N} Gaussians and {B} frames")  # fmt: skip
    with torch.no_grad():
        verts = vertices.detach().contiguous()
        fc, fid = faces.to(torch.int64).contiguous(), face_id.to(torch.int64).contiguous()
        off, q, s = (t.detach().to(dtype).contiguous() for t in (offset, quat, scale))
        surf = None if surface is None else surface.detach().to(dtype).contiguous()
        frames = torch.empty(B, F, 17, dtype=dtype)
        means, scales = torch.empty(B, N, 3, dtype=dtype), torch.empty(B, N, 3, dtype=dtype)
        quats = torch.empty(B, N, 4, dtype=dtype)
        normals = None if surf is None else torch.empty(B, N, 3, dtype=dtype)
        getattr(load_cpu_kernels(), f"splat_mesh_pose_{_sfx(dtype)}")(
            B, V, F, N, _ptr(verts), _ptr(fc), _ptr(fid), _ptr(off), int(batched), _ptr(q), _ptr(s), _ptr(surf),
            _ptr(frames), _ptr(means), _ptr(quats), _ptr(scales), _ptr(normals), n_threads,
        )  # fmt: skip
    return means, quats, scales, normals
