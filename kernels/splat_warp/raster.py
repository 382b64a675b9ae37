"""Front-to-back alpha blending of binned Gaussians, and its backward pass (Warp).

Blending rules (kernels/splat_cpu/raster.cpp's, gsplat v1.5's): pixel centre p = (x + .5, y + .5),
d = mean - p, sigma = .5 (a dx^2 + c dy^2) + b dx dy, alpha = min(.999, opacity exp(-sigma)); a
sample is skipped when sigma < 0 or alpha < 1/255; a pixel stops before the Gaussian that would
bring its transmittance T to <= 1e-4. render = sum_i alpha_i T_i colour_i + T_final background,
alpha = 1 - T_final, and ``last`` = how many list entries the pixel walked through up to its last
contributor (the backward pass starts there).

One thread per pixel, threads numbered tile by tile (see ``_common.tile_pixel``). The backward
walks the same list back to front, recovering T_i from T_final by dividing by (1 - alpha), and
adds each pixel's share of the per-Gaussian gradients with atomics.

Layout: flat ids g = c N + n index means2d [C N] vec2, conics [C N] vec3, colors [C N] vecD,
opacities [C N]; pixels (c H + y) W + x index render [C H W] vecD, trans/alpha [C H W], last.
The channel count D is the length of the colour vector type (``vector_type(D)``), so
``forward_kernel(D)`` and ``backward_kernel(D)`` build (and Warp compiles at first launch) one pair
of kernels per D.
"""
from __future__ import annotations

import functools
from typing import Any

import warp as wp

from avatar_kernels.splat_warp._common import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN, tile_pixel


@wp.struct
class Sample:
    """One Gaussian at one pixel."""

    dx: float
    dy: float
    vis: float  # exp(-sigma)
    alpha: float  # min(MAX_ALPHA, opacity vis)
    valid: bool


@wp.func
def sample(m: wp.vec2, q: wp.vec3, opac: float, px: float, py: float) -> Sample:
    s = Sample()
    s.dx = m[0] - px
    s.dy = m[1] - py
    sigma = 0.5 * (q[0] * s.dx * s.dx + q[2] * s.dy * s.dy) + q[1] * s.dx * s.dy
    s.vis = wp.exp(-sigma)
    s.alpha = wp.min(MAX_ALPHA, opac * s.vis)
    s.valid = not (sigma < 0.0 or s.alpha < ALPHA_THRESHOLD)
    return s


@functools.cache  # one type per D: the kernels' annotations and the callers' arrays must agree
def vector_type(D: int) -> Any:
    return wp.types.vector(length=D, dtype=wp.float32)


@functools.cache
def forward_kernel(D: int) -> Any:
    vecD = vector_type(D)

    @wp.kernel(enable_backward=False, module="unique")
    def raster_fwd(
        means2d: wp.array(dtype=wp.vec2),
        conics: wp.array(dtype=wp.vec3),
        colors: wp.array(dtype=vecD),
        opacities: wp.array(dtype=float),
        backgrounds: wp.array(dtype=vecD),  # [C] or empty
        offsets: wp.array(dtype=wp.int64),  # [C tiles_y tiles_x + 1]
        flat_ids: wp.array(dtype=wp.int32),
        width: int,
        height: int,
        tile: int,
        tiles_x: int,
        tiles_y: int,
        render: wp.array(dtype=vecD),
        trans: wp.array(dtype=float),
        alpha: wp.array(dtype=float),
        last: wp.array(dtype=wp.int32),
    ):
        tp = tile_pixel(wp.tid(), tile, tiles_x, tiles_y, width, height)
        if not tp.inside:
            return
        pix = (tp.cam * height + tp.y) * width + tp.x
        px = float(tp.x) + 0.5
        py = float(tp.y) + 0.5
        start = int(offsets[tp.tile])
        T = float(1.0)
        acc = vecD()
        n_walked = int(0)
        for k in range(start, int(offsets[tp.tile + 1])):
            g = flat_ids[k]
            s = sample(means2d[g], conics[g], opacities[g], px, py)
            if not s.valid:
                continue
            next_T = T * (1.0 - s.alpha)
            if next_T <= TRANSMITTANCE_MIN:
                break
            acc += (s.alpha * T) * colors[g]
            T = next_T
            n_walked = k - start + 1
        if backgrounds.shape[0] > 0:
            acc += T * backgrounds[tp.cam]
        render[pix] = acc
        trans[pix] = T
        alpha[pix] = 1.0 - T
        last[pix] = n_walked

    return raster_fwd


@functools.cache
def backward_kernel(D: int) -> Any:
    vecD = vector_type(D)

    @wp.kernel(enable_backward=False, module="unique")
    def raster_bwd(
        means2d: wp.array(dtype=wp.vec2),
        conics: wp.array(dtype=wp.vec3),
        colors: wp.array(dtype=vecD),
        opacities: wp.array(dtype=float),
        backgrounds: wp.array(dtype=vecD),  # [C] or empty
        offsets: wp.array(dtype=wp.int64),
        flat_ids: wp.array(dtype=wp.int32),
        width: int,
        height: int,
        tile: int,
        tiles_x: int,
        tiles_y: int,
        trans: wp.array(dtype=float),
        last: wp.array(dtype=wp.int32),
        v_render: wp.array(dtype=vecD),
        v_alpha: wp.array(dtype=float),  # [C H W] or empty (no gradient on alpha)
        v_means2d: wp.array(dtype=wp.vec2),  # zero-initialised, accumulated
        v_conics: wp.array(dtype=wp.vec3),
        v_colors: wp.array(dtype=vecD),
        v_opacities: wp.array(dtype=float),
        v_means2d_abs: wp.array(dtype=wp.vec2),  # or empty (no absgrad)
    ):
        tp = tile_pixel(wp.tid(), tile, tiles_x, tiles_y, width, height)
        if not tp.inside:
            return
        pix = (tp.cam * height + tp.y) * width + tp.x
        px = float(tp.x) + 0.5
        py = float(tp.y) + 0.5
        T = trans[pix]
        vR = v_render[pix]
        # alpha = 1 - T_final and the background term T_final bg: d loss / d T_final, times
        # T_final (the factor d T_final / d alpha_i shares with 1 / (1 - alpha_i)).
        v_T = float(0.0)
        if v_alpha.shape[0] > 0:
            v_T = v_alpha[pix]
        if backgrounds.shape[0] > 0:
            v_T -= wp.dot(backgrounds[tp.cam], vR)
        vAe = T * v_T
        behind = vecD()  # sum of weight * colour of the contributors behind the current one
        start = int(offsets[tp.tile])
        for kk in range(last[pix] - 1, -1, -1):
            g = flat_ids[start + kk]
            m = means2d[g]
            q = conics[g]
            opac = opacities[g]
            s = sample(m, q, opac, px, py)
            if not s.valid:
                continue
            ra = 1.0 / (1.0 - s.alpha)
            T = T * ra  # transmittance in front of this Gaussian
            fac = s.alpha * T
            col = colors[g]
            va = vAe * ra
            for d in range(D):
                va += (col[d] * T - behind[d] * ra) * vR[d]
            wp.atomic_add(v_colors, g, fac * vR)
            behind += fac * col
            if opac * s.vis <= MAX_ALPHA:  # else alpha is clamped: no gradient through it
                v_sigma = -opac * s.vis * va
                gx = v_sigma * (q[0] * s.dx + q[1] * s.dy)
                gy = v_sigma * (q[1] * s.dx + q[2] * s.dy)
                wp.atomic_add(v_means2d, g, wp.vec2(gx, gy))
                dx, dy = s.dx, s.dy
                wp.atomic_add(v_conics, g, wp.vec3(0.5 * v_sigma * dx * dx, v_sigma * dx * dy, 0.5 * v_sigma * dy * dy))
                wp.atomic_add(v_opacities, g, s.vis * va)
                if v_means2d_abs.shape[0] > 0:
                    wp.atomic_add(v_means2d_abs, g, wp.vec2(wp.abs(gx), wp.abs(gy)))

    return raster_bwd
