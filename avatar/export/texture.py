"""Textures in the head model's UV atlas: a default (painted) texture, vertex colours -> texture,
and baking photographs (tracked frames) onto the atlas.

Image convention: ``[S, S, 3]`` float32 RGB in [0, 1], row 0 at the top. The model's UVs have
their origin bottom-left (OBJ-style), so texel row = ``(1 - v) * S``; glTF's texture coordinates
(origin top-left) are therefore ``(u, 1 - v)`` for the same image.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.models.base import HeadModel
from avatar.render.mesh import SKIN, Fragments, rasterize_triangles

__all__ = [
    "TextureBake", "uv_rasterize", "texture_from_vertex_colors", "default_vertex_colors", "default_texture",
    "fill_holes", "bake_texture_from_frames", "encode_image",
]


def uv_rasterize(uvs: np.ndarray, uv_faces: np.ndarray, size: int) -> Fragments:
    """Rasterize the UV layout at ``size x size``: per texel the covering triangle (the model's
    face index) and linear barycentrics. Uses the mesh rasterizer with every vertex at depth 1
    and identity camera, so its perspective-correct barycentrics are the affine ones."""
    uvs = np.asarray(uvs, dtype=np.float64)
    pts = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size, np.ones(len(uvs))], axis=1)
    return rasterize_triangles(pts, np.asarray(uv_faces), np.eye(4), np.eye(3), size, size, cull_backfaces=False)


def _require_uvs(head: HeadModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if head.uvs.numel() == 0:
        raise AvatarError(f"the {head.name} head model has no UVs, so it cannot carry a texture "
                          "(for FLAME, pass its texture-space file: --uv-path FILE, an .npz with vt and ft or an .obj with vt)")
    return (head.uvs.double().cpu().numpy(), head.uv_faces.cpu().numpy().astype(np.int64),
            head.faces.cpu().numpy().astype(np.int64))


def fill_holes(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill texels where ``known`` is False by pull-push: average the known texels down a
    pyramid of 2x2 blocks, then fill each level's unknown texels from the next coarser level.
    Holes get a smooth continuation of their surroundings, and the gutters between UV islands
    get the islands' colours (so mip-mapping does not bleed background into the skin)."""
    h, w, c = image.shape
    m = known.astype(np.float64)
    if not m.any():
        return image.copy()
    levels_c, levels_m = [image.astype(np.float64) * m[..., None]], [m]
    while max(levels_m[-1].shape) > 1:
        cc, mm = levels_c[-1], levels_m[-1]
        ph, pw = cc.shape[0] % 2, cc.shape[1] % 2
        cc = np.pad(cc, ((0, ph), (0, pw), (0, 0)))
        mm = np.pad(mm, ((0, ph), (0, pw)))
        levels_c.append(cc.reshape(cc.shape[0] // 2, 2, cc.shape[1] // 2, 2, c).sum((1, 3)))
        levels_m.append(mm.reshape(mm.shape[0] // 2, 2, mm.shape[1] // 2, 2).sum((1, 3)))
    filled = levels_c[-1] / np.maximum(levels_m[-1], 1e-12)[..., None]
    for cc, mm in zip(reversed(levels_c[:-1]), reversed(levels_m[:-1])):
        up = np.repeat(np.repeat(filled, 2, axis=0), 2, axis=1)[: cc.shape[0], : cc.shape[1]]
        own = cc / np.maximum(mm, 1e-12)[..., None]
        filled = np.where(mm[..., None] > 0, own, up)
    out = image.astype(np.float64).copy()
    out[~known] = filled[~known]
    return out.astype(image.dtype)


def texture_from_vertex_colors(head: HeadModel, colors: np.ndarray, size: int) -> np.ndarray:
    """``[V, 3]`` per-vertex colours -> ``[S, S, 3]`` float32 texture (barycentric interpolation
    inside UV triangles, gutters filled)."""
    uvs, uv_faces, faces = _require_uvs(head)
    frags = uv_rasterize(uvs, uv_faces, size)
    colors = np.asarray(colors, dtype=np.float64)
    tex = np.zeros((size, size, 3))
    m = frags.mask
    tex[m] = (colors[faces[frags.face_id[m]]] * frags.bary[m][..., None]).sum(1)
    return fill_holes(tex, m).astype(np.float32)


def default_vertex_colors(head: HeadModel, parts: np.ndarray | None = None) -> np.ndarray:
    """Plain colours per vertex: skin, eyeballs with a brown iris and dark pupil facing +Z, a pink
    tongue. ``parts`` is the per-face part id (:func:`avatar.export.meshdata.face_parts`)."""
    from avatar.export.meshdata import face_parts

    if parts is None:
        parts = face_parts(head)
    faces = head.faces.cpu().numpy().astype(np.int64)
    with torch.no_grad():
        rest = head(shape=None).vertices[0].double().cpu().numpy()
    colors = np.tile(SKIN, (head.num_vertices, 1))
    colors[faces[parts == 2].ravel()] = (0.72, 0.36, 0.38)
    eye_faces = faces[parts == 1]
    if len(eye_faces):
        eye_v = np.unique(eye_faces.ravel())
        colors[eye_v] = (0.93, 0.93, 0.90)
        # Each eyeball: vertices skinned most to the same eye joint; the iris is the cap around
        # the eyeball's most forward (+Z) direction.
        owner = head.skin_weights.double().cpu().numpy()[eye_v].argmax(1)
        for j in np.unique(owner):
            vs = eye_v[owner == j]
            centre = rest[vs].mean(0)
            d = rest[vs] - centre
            cos = d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-12)
            colors[vs[cos > 0.80]] = (0.30, 0.20, 0.12)
            colors[vs[cos > 0.95]] = (0.05, 0.05, 0.05)
    return colors


def default_texture(head: HeadModel, size: int, parts: np.ndarray | None = None) -> np.ndarray:
    """A plain painted texture (see :func:`default_vertex_colors`) for a head with no baked one."""
    return texture_from_vertex_colors(head, default_vertex_colors(head, parts), size)


@dataclass(frozen=True)
class TextureBake:
    """A baked texture.

    Attributes:
        image: ``[S, S, 3]`` float32 texture, holes filled.
        weight: ``[S, S]`` summed blending weight per texel (0 = never seen, filled).
        frames_used: indices of the frames that were projected.
    """

    image: np.ndarray
    weight: np.ndarray
    frames_used: list[int]


def _select_frames(view_dirs: np.ndarray, max_frames: int, min_angle_deg: float = 5.0) -> list[int]:
    """Most frontal frame first, then farthest-point sampling of the view directions (in head
    coordinates) so side views are included; stops when the next view adds < ``min_angle_deg``."""
    first = int(np.argmax(view_dirs[:, 2]))
    chosen = [first]
    best = view_dirs @ view_dirs[first]
    while len(chosen) < max_frames:
        k = int(np.argmin(best))
        if np.degrees(np.arccos(np.clip(best[k], -1.0, 1.0))) < min_angle_deg:
            break
        chosen.append(k)
        best = np.maximum(best, view_dirs @ view_dirs[k])
    return chosen


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a (2r+1)^2 square (r passes of a 3x3 min; edges count as outside)."""
    out = mask.copy()
    for _ in range(max(0, r)):
        p = np.pad(out, 1, constant_values=False)
        out = p[1:-1, 1:-1].copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out &= p[dy : dy + out.shape[0], dx : dx + out.shape[1]]
    return out


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``[H, W, C]`` at continuous pixel coordinates (pixel centres at i + 0.5)."""
    h, w = image.shape[:2]
    x = np.clip(x - 0.5, 0, w - 1)
    y = np.clip(y - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    return ((image[y0, x0] * (1 - fx) + image[y0, x1] * fx) * (1 - fy)
            + (image[y1, x0] * (1 - fx) + image[y1, x1] * fx) * fy)


def bake_texture_from_frames(
    head: HeadModel,
    frames: Sequence[np.ndarray] | np.ndarray,
    viewmats: np.ndarray,
    Ks: np.ndarray,
    params: dict[str, torch.Tensor | np.ndarray],
    size: int = 1024,
    *,
    shape: torch.Tensor | np.ndarray | None = None,
    max_frames: int = 8,
    angle_power: float = 4.0,
    silhouette_margin: int = 2,
    progress: bool = True,
) -> TextureBake:
    """Project photographs onto the UV atlas.

    Args:
        head: the head model.
        frames: ``N`` images ``[H, W, 3]`` (float in [0, 1] or uint8).
        viewmats: ``[N, 4, 4]`` world -> camera (OpenCV), ``Ks``: ``[N, 3, 3]``.
        params: per-frame model parameters ``[N, ...]`` (``expression``, ``jaw``, ``neck``, ``eyes``,
            ``global_orient``, ``transl``; missing ones are zero).
        size: texture width and height.
        shape: ``[1, num_shape]`` identity (zeros when ``None``).
        max_frames: at most this many frames are projected: the most frontal, then the views that
            differ most from those already chosen (sides).
        angle_power: a texel's weight in a frame is ``cos(view angle) ** angle_power`` where it is
            visible (z-buffer: the pixel shows its triangle or a neighbour), 0 where hidden; higher
            prefers head-on views (sharper).
        silhouette_margin: pixels next to the head's outline (in each frame) are not used.
    Returns:
        :class:`TextureBake` (image with holes filled by :func:`fill_holes`).
    """
    from tqdm import tqdm

    uvs, uv_faces, faces = _require_uvs(head)
    n = len(frames)
    viewmats = np.asarray(viewmats, dtype=np.float64).reshape(-1, 4, 4)
    Ks = np.asarray(Ks, dtype=np.float64).reshape(-1, 3, 3)
    if n == 0 or len(viewmats) != n or len(Ks) != n:
        raise AvatarError(f"need one camera per frame: {n} frames, {len(viewmats)} viewmats, {len(Ks)} Ks")
    tparams = {k: torch.as_tensor(np.asarray(v), dtype=head.dtype, device=head.device) for k, v in params.items()}
    for k, v in tparams.items():
        if v.shape[0] != n:
            raise AvatarError(f"parameter {k!r} has {v.shape[0]} frames, expected {n}")
    tshape = None if shape is None else torch.as_tensor(np.asarray(shape), dtype=head.dtype, device=head.device)

    with torch.no_grad():
        out = head(shape=tshape, **tparams)
    verts = out.vertices.double().cpu().numpy()  # [N, V, 3]
    T = out.joint_transforms.double().cpu().numpy()
    j = head.joint_names.index("head") if "head" in head.joint_names else 0
    # Camera centre in the head's rest frame: where the camera looked from, relative to the face.
    centres = -np.einsum("nji,nj->ni", viewmats[:, :3, :3], viewmats[:, :3, 3])
    local = np.einsum("nji,nj->ni", T[:, j, :3, :3], centres - T[:, j, :3, 3])
    dirs = local / np.maximum(np.linalg.norm(local, axis=1, keepdims=True), 1e-12)
    chosen = _select_frames(dirs, max_frames)

    frags = uv_rasterize(uvs, uv_faces, size)
    texel = frags.mask
    tf = frags.face_id[texel]  # [M] face per covered texel
    tb = frags.bary[texel]  # [M, 3]
    acc = np.zeros((len(tf), 3))
    wsum = np.zeros(len(tf))
    for i in tqdm(chosen, desc="baking texture", unit="frame", disable=not progress):
        img = np.asarray(frames[i])
        img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
        h, w = img.shape[:2]
        v = verts[i]
        visible_face = rasterize_triangles(v, faces, viewmats[i], Ks[i], w, h).face_id
        p = (v[faces[tf]] * tb[..., None]).sum(1)  # texel surface points [M, 3]
        tri = v[faces[tf]]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-20)
        cam = p @ viewmats[i, :3, :3].T + viewmats[i, :3, 3]
        z = cam[:, 2]
        ok = z > 1e-3
        zs = np.where(ok, z, 1.0)
        x = Ks[i, 0, 0] * cam[:, 0] / zs + Ks[i, 0, 1] * cam[:, 1] / zs + Ks[i, 0, 2]
        y = Ks[i, 1, 1] * cam[:, 1] / zs + Ks[i, 1, 2]
        ok &= (x >= 0) & (x < w) & (y >= 0) & (y < h)
        xi = np.clip(x.astype(np.int64), 0, w - 1)
        yi = np.clip(y.astype(np.int64), 0, h - 1)
        # Visible: the pixel shows the texel's own triangle or one sharing a vertex with it (the
        # texel may sit just across an edge from the pixel centre). A depth tolerance instead
        # would let an eyeball texel under the eyelid, millimetres behind it, take the lid's colour.
        vf = visible_face[yi, xi]
        # Stay `silhouette_margin` pixels inside the head's outline: there the bilinear taps and
        # any misfit between mesh and photo would mix in background.
        ok &= _erode(visible_face >= 0, silhouette_margin)[yi, xi]
        ok &= (faces[np.maximum(vf, 0)][:, :, None] == faces[tf][:, None, :]).any((1, 2))
        to_cam = centres[i] - p
        cos = (fn * to_cam).sum(1) / np.maximum(np.linalg.norm(to_cam, axis=1), 1e-12)
        wt = np.where(ok, np.clip(cos, 0.0, 1.0) ** angle_power, 0.0)
        sel = wt > 0
        acc[sel] += wt[sel, None] * _bilinear(img, x[sel], y[sel])
        wsum += wt
    image = np.zeros((size, size, 3))
    weight = np.zeros((size, size))
    seen = wsum > 0
    image[texel] = np.where(seen[:, None], acc / np.maximum(wsum, 1e-12)[:, None], 0.0)
    weight[texel] = wsum
    image = fill_holes(image, weight > 0)
    return TextureBake(image=np.clip(image, 0.0, 1.0).astype(np.float32), weight=weight.astype(np.float32), frames_used=chosen)


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """``[H, W, 3]`` float in [0, 1] or uint8 -> PNG or JPEG bytes."""
    from PIL import Image

    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise AvatarError(f"texture must be [H, W, 3], got {img.shape}")
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt in ("jpeg", "jpg"):
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
    else:
        raise AvatarError(f"unknown texture format {fmt!r} (png or jpeg)")
    return buf.getvalue()
