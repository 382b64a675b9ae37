"""Constants of the blending model and the thread -> pixel mapping shared by the Warp kernels."""
from __future__ import annotations

import warp as wp

# The same as gsplat's (v1.5) and kernels/splat_cpu/common.h.
ALPHA_THRESHOLD = wp.constant(1.0 / 255.0)  # contributions below this are skipped
MAX_ALPHA = wp.constant(0.999)  # alpha is clamped so 1 - alpha > 0
TRANSMITTANCE_MIN = wp.constant(1e-4)  # a pixel stops before T would fall to this
GAUSSIAN_EXTEND = wp.constant(3.33)  # max extent in standard deviations


@wp.struct
class TilePixel:
    """The pixel a raster thread owns: threads are numbered tile by tile (so the threads of one
    GPU block share a tile and walk the same list), row-major inside a tile."""

    tile: int  # global tile index (camera-major)
    cam: int
    x: int
    y: int
    inside: bool  # False for the padding of tiles that overhang the image


@wp.func
def tile_pixel(i: int, tile: int, tiles_x: int, tiles_y: int, width: int, height: int) -> TilePixel:
    p = TilePixel()
    per_tile = tile * tile
    p.tile = i // per_tile
    j = i - p.tile * per_tile
    per_cam = tiles_x * tiles_y
    p.cam = p.tile // per_cam
    r = p.tile - p.cam * per_cam
    p.x = (r % tiles_x) * tile + j % tile
    p.y = (r // tiles_x) * tile + j // tile
    p.inside = p.x < width and p.y < height
    return p
