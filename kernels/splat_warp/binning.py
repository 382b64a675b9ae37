"""Tile binning (Warp): which Gaussians each image tile must blend, front to back.

Three kernels around a sort done by the caller (torch, on any device):

1. ``count_tiles``: per (camera, Gaussian) "flat id" g = c N + n, the number of tiles its
   screen-space box [mean - radius, mean + radius] touches (0 when culled).
2. ``fill_tiles``: with the exclusive prefix sum of the counts as write offsets, one entry per
   (Gaussian, tile): the global tile index (camera-major) and the flat id. Entries come out in
   flat-id order, so a stable sort by (tile, depth) leaves equal depths in flat-id order, as the
   C++ kernels do.
3. ``tile_ranges``: from the sorted tile indices, offsets [C * tiles + 1] so that tile t's
   entries are offsets[t]:offsets[t + 1].

The tile box is computed in float64 like kernels/splat_cpu/common.h's ``tile_rect`` so both
kernels bin the same Gaussians into the same tiles.
"""
from __future__ import annotations

import warp as wp


@wp.func
def tile_rect(m: wp.vec2, r: wp.vec2i, tile: int, tiles_x: int, tiles_y: int) -> wp.vec4i:
    """Tiles (x0, y0, x1, y1), max exclusive, touched by the box of half-size r around m."""
    ts = wp.float64(tile)
    mx = wp.float64(m[0]) / ts
    my = wp.float64(m[1]) / ts
    rx = wp.float64(r[0]) / ts
    ry = wp.float64(r[1]) / ts
    zero = wp.float64(0.0)
    tx = wp.float64(tiles_x)
    ty = wp.float64(tiles_y)
    return wp.vec4i(
        int(wp.min(wp.max(wp.floor(mx - rx), zero), tx)),
        int(wp.min(wp.max(wp.floor(my - ry), zero), ty)),
        int(wp.min(wp.max(wp.ceil(mx + rx), zero), tx)),
        int(wp.min(wp.max(wp.ceil(my + ry), zero), ty)),
    )


@wp.kernel(enable_backward=False)
def count_tiles(
    means2d: wp.array(dtype=wp.vec2),  # [C * N]
    radii: wp.array(dtype=wp.vec2i),  # [C * N]
    tile: int,
    tiles_x: int,
    tiles_y: int,
    counts: wp.array(dtype=wp.int64),  # [C * N]
):
    g = wp.tid()
    r = radii[g]
    counts[g] = wp.int64(0)
    if r[0] <= 0 or r[1] <= 0:
        return
    rect = tile_rect(means2d[g], r, tile, tiles_x, tiles_y)
    counts[g] = wp.int64((rect[2] - rect[0]) * (rect[3] - rect[1]))


@wp.kernel(enable_backward=False)
def fill_tiles(
    means2d: wp.array(dtype=wp.vec2),
    radii: wp.array(dtype=wp.vec2i),
    starts: wp.array(dtype=wp.int64),  # [C * N] exclusive prefix sum of count_tiles' counts
    n_gaussians: int,
    tile: int,
    tiles_x: int,
    tiles_y: int,
    tile_of: wp.array(dtype=wp.int64),  # [n_isect] global tile index
    flat_ids: wp.array(dtype=wp.int32),  # [n_isect]
):
    g = wp.tid()
    r = radii[g]
    if r[0] <= 0 or r[1] <= 0:
        return
    rect = tile_rect(means2d[g], r, tile, tiles_x, tiles_y)
    base = wp.int64(g // n_gaussians) * wp.int64(tiles_x * tiles_y)
    k = starts[g]
    for y in range(rect[1], rect[3]):
        for x in range(rect[0], rect[2]):
            tile_of[k] = base + wp.int64(y * tiles_x + x)
            flat_ids[k] = g
            k += wp.int64(1)


@wp.kernel(enable_backward=False)
def tile_ranges(
    sorted_tiles: wp.array(dtype=wp.int64),  # [n_isect], ascending, n_isect >= 1
    n_tiles: int,
    offsets: wp.array(dtype=wp.int64),  # [n_tiles + 1]
):
    # Entry i starts every tile in (previous entry's tile, its tile]; the last entry also ends
    # every tile after its own. Each offset is written exactly once.
    i = wp.tid()
    n = sorted_tiles.shape[0]
    t = int(sorted_tiles[i])
    prev = int(-1)
    if i > 0:
        prev = int(sorted_tiles[i - 1])
    for s in range(prev + 1, t + 1):
        offsets[s] = wp.int64(i)
    if i == n - 1:
        for s in range(t + 1, n_tiles + 1):
            offsets[s] = wp.int64(n)
