"""A small CPU triangle rasterizer (z-buffer, perspective-correct barycentrics) and a shaded
preview on top of it, so a person can look at a head without a GPU or an OpenGL context.

Cameras follow the project convention (gsplat's): OpenCV axes (x right, y down, z forward),
``viewmat`` = world -> camera 4x4, ``K`` = 3x3 in pixels, pixel ``(i, j)`` covers
``[i, i+1) x [j, j+1)`` with its centre at ``(i + 0.5, j + 0.5)``.

The rasterizer is vectorised over (triangle, pixel) candidate pairs from each triangle's bounding
box, processed in chunks to bound memory; the nearest candidate per pixel wins. It returns
fragments (triangle id, barycentrics, depth) so callers can shade, texture or back-project.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fragments:
    """Per-pixel rasterization result.

    Attributes:
        face_id: ``[H, W]`` int64 triangle index, -1 where no triangle covers the pixel centre.
        bary: ``[H, W, 3]`` perspective-correct barycentric coordinates (0 where empty).
        depth: ``[H, W]`` camera-space z (``inf`` where empty).
    """

    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """World -> camera ``[4, 4]`` (OpenCV axes) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)  # OpenCV: x right = forward x up ... then y down = z x x
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])  # rows: camera axes in world coordinates
    view = np.eye(4)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


def intrinsics(width: int, height: int, fov_y_deg: float = 20.0) -> np.ndarray:
    """A pinhole ``K [3, 3]`` with square pixels and the principal point at the image centre."""
    f = 0.5 * height / np.tan(np.radians(fov_y_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def orbit_viewmat(target: np.ndarray, distance: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """A camera on a sphere around ``target``: yaw about +Y (0 = in front, on +Z), pitch up."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    offset = distance * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    return look_at(np.asarray(target) + offset, target)


def rasterize_triangles(
    vertices: np.ndarray,
    faces: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    *,
    cull_backfaces: bool = True,
    near: float = 1e-3,
    chunk_pairs: int = 2_000_000,
) -> Fragments:
    """Z-buffer rasterization of a triangle mesh.

    Args:
        vertices: ``[V, 3]`` world positions.
        faces: ``[F, 3]`` vertex indices (counter-clockwise seen from outside, as glTF/OBJ).
        viewmat: ``[4, 4]`` world -> camera (OpenCV axes).
        K: ``[3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
        cull_backfaces: drop triangles seen from behind.
        near: triangles with a vertex closer than this (camera z) are dropped.
        chunk_pairs: upper bound on (triangle, pixel) candidates held in memory at once.
    Returns:
        :class:`Fragments`.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    cam = v @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    safe_z = np.where(z > near, z, 1.0)
    px = K[0, 0] * cam[:, 0] / safe_z + K[0, 1] * cam[:, 1] / safe_z + K[0, 2]
    py = K[1, 1] * cam[:, 1] / safe_z + K[1, 2]
    p = np.stack([px, py], axis=1)

    tri = p[f]  # [F, 3, 2]
    tz = z[f]
    keep = (tz > near).all(1)
    # Signed area in pixel space; with y down, a counter-clockwise (front-facing) triangle has
    # negative area here.
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    keep &= np.abs(area) > 1e-12
    if cull_backfaces:
        keep &= area < 0
    lo = np.floor(tri.min(1) - 0.5).astype(np.int64) + 1  # first pixel whose centre may be inside
    hi = np.floor(tri.max(1) - 0.5).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    keep &= (hi >= lo).all(1)
    ids = np.nonzero(keep)[0]

    best_depth = np.full(width * height, np.inf)
    best_face = np.full(width * height, -1, dtype=np.int64)
    best_bary = np.zeros((width * height, 3))
    if ids.size == 0:
        return _fragments(best_face, best_bary, best_depth, width, height)

    span = hi[ids] - lo[ids] + 1  # [n, 2]
    counts = span[:, 0] * span[:, 1]
    ends = np.cumsum(counts)
    start = 0
    while start < ids.size:
        # Take triangles until the chunk holds about chunk_pairs candidates (at least one triangle).
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + chunk_pairs, side="right")))
        sel, cnt = ids[start:stop], counts[start:stop]
        total = int(cnt.sum())
        owner = np.repeat(np.arange(sel.size), cnt)
        offset = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        w = span[start:stop, 0][owner]
        x = lo[sel, 0][owner] + offset % w
        y = lo[sel, 1][owner] + offset // w
        fid = sel[owner]
        a, b, c = tri[fid, 0], tri[fid, 1], tri[fid, 2]
        cx, cy = x + 0.5, y + 0.5
        # Edge functions -> screen-space barycentrics.
        inv_area = 1.0 / area[fid]
        l0 = ((b[:, 0] - cx) * (c[:, 1] - cy) - (b[:, 1] - cy) * (c[:, 0] - cx)) * inv_area
        l1 = ((c[:, 0] - cx) * (a[:, 1] - cy) - (c[:, 1] - cy) * (a[:, 0] - cx)) * inv_area
        l2 = 1.0 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        l = np.stack([l0, l1, l2], 1)[inside]
        fid, x, y = fid[inside], x[inside], y[inside]
        # Perspective-correct: interpolate 1/z linearly in screen space.
        inv_z = l / tz[fid]
        depth = 1.0 / inv_z.sum(1)
        bary = inv_z * depth[:, None]
        pix = y * width + x
        # Nearest candidate per pixel in this chunk, then merge with the running z-buffer.
        order = np.lexsort((depth, pix))
        pix, depth, bary, fid = pix[order], depth[order], bary[order], fid[order]
        first = np.ones(pix.size, dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, depth, bary, fid = pix[first], depth[first], bary[first], fid[first]
        closer = depth < best_depth[pix]
        pix = pix[closer]
        best_depth[pix] = depth[closer]
        best_face[pix] = fid[closer]
        best_bary[pix] = bary[closer]
        start = stop
    return _fragments(best_face, best_bary, best_depth, width, height)


def _fragments(face: np.ndarray, bary: np.ndarray, depth: np.ndarray, width: int, height: int) -> Fragments:
    return Fragments(face.reshape(height, width), bary.reshape(height, width, 3), depth.reshape(height, width))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``[V, 3]`` (outward for counter-clockwise faces)."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


SKIN = np.array([0.80, 0.62, 0.52])


def shade(
    frags: Fragments,
    vertices: np.ndarray,
    faces: np.ndarray,
    viewmat: np.ndarray,
    *,
    vertex_colors: np.ndarray | None = None,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Smooth-shaded image ``[H, W, 3]`` float32 in [0, 1] from fragments: interpolated vertex
    normals lit by a camera headlight and a key light from the upper left, plus ambient."""
    h, w = frags.face_id.shape
    image = np.empty((h, w, 3))
    image[:] = background
    m = frags.mask
    if not m.any():
        return image.astype(np.float32)
    normals = vertex_normals(vertices, faces) @ viewmat[:3, :3].T  # camera space
    corners = faces[frags.face_id[m]]  # [P, 3]
    bary = frags.bary[m][..., None]
    n = (normals[corners] * bary).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    albedo = SKIN if vertex_colors is None else (np.asarray(vertex_colors, dtype=np.float64)[corners] * bary).sum(1)
    head_light = np.clip(-n[:, 2], 0.0, 1.0)  # toward the camera (camera looks along +z)
    key = np.array([-0.5, -0.6, -0.62])
    key /= np.linalg.norm(key)
    key_light = np.clip(n @ key, 0.0, 1.0)
    light = 0.25 + 0.55 * head_light + 0.35 * key_light
    image[m] = np.clip(albedo * light[:, None], 0.0, 1.0)
    return image.astype(np.float32)


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    *,
    vertex_colors: np.ndarray | None = None,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    supersample: int = 2,
) -> np.ndarray:
    """Shaded preview ``[H, W, 3]`` float32 of a mesh, anti-aliased by supersampling.

    >>> img = render_mesh(v, f, orbit_viewmat(v.mean(0), 0.8), intrinsics(256, 256), 256, 256)  # doctest: +SKIP
    """
    s = max(1, int(supersample))
    Ks = np.diag([s, s, 1.0]) @ K
    frags = rasterize_triangles(vertices, faces, viewmat, Ks, width * s, height * s)
    img = shade(frags, vertices, faces, viewmat, vertex_colors=vertex_colors, background=background)
    return img.reshape(height, s, width, s, 3).mean((1, 3)).astype(np.float32)
