"""Building the 478-landmark embedding of a head model (the procedure that renders the head and
runs FaceMesh; the embedding itself, its geometry helpers and its cache are
:mod:`avatar.models.landmark_embedding`).

:func:`build_landmark_embedding`, for any :class:`HeadModel`:

1. Render the neutral head on CPU from several views (yaw x pitch grid), with light eyeballs and a
   painted iris + pupil (the meshes have no eye texture; the paint is computed per pixel from the
   eyeball geometry, so it is sharp even on a coarse eyeball).
2. Run our FaceMesh (:class:`avatar.perception.landmarks.FaceTracker`) on each render.
3. Back-project each of the 468 mesh landmarks through the rasterizer's fragments (the surface
   point under the landmark's pixel) in every view where that surface faces the camera.
4. Fuse per landmark: median of the 3D points, then the mean of the inliers near the median, then
   the skin point (the mesh's largest connected component, so no point lands on an eyeball or the
   tongue) whose projections best match the detections -> triangle + barycentrics.
5. Iris points (468..477) come from the eyeball geometry
   (:func:`avatar.models.landmark_embedding.iris_embedding`).

It runs where a model gets its embedding: ``assets/landmarks/make_anny_head_478.py`` (AnnyHead's
shipped file) and, for a user's FLAME model, the first ``avatar track --model flame``, which hands
it to ``load_head_model(..., landmark_builder=build_landmark_embedding)`` to be cached.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.models.base import HeadModel
from avatar.models.landmark_embedding import (
    _EYE_WHITE,
    _IRIS,
    _PUPIL,
    _PUPIL_RADIUS,
    IRIS_LEFT_START,
    IRIS_RADIUS,
    IRIS_RIGHT_START,
    NUM_MESH,
    closest_points_on_mesh,
    connected_components,
    eye_geometry,
    iris_embedding,
)
from avatar.perception.landmarks import LEFT_EYE, RIGHT_EYE, FaceTracker
from avatar.render.mesh import SKIN, intrinsics, orbit_viewmat, rasterize_triangles, shade

__all__ = ["DEFAULT_VIEWS", "build_landmark_embedding", "framing", "render_for_landmarks", "symmetry_error", "symmetry_pairs"]

#: (yaw, pitch) in degrees of the views rendered to build an embedding.
DEFAULT_VIEWS: tuple[tuple[float, float], ...] = tuple(
    (float(y), float(p)) for p in (-10, 0, 10) for y in (-30, -15, 0, 15, 30)
)


def framing(head: HeadModel, vertices: np.ndarray, eyes: dict[str, dict], fov_y_deg: float) -> tuple[np.ndarray, float]:
    """Camera target (a little below the eyes) and distance so the face fills ~2/3 of the image."""
    left, right = eyes["left"]["centre"], eyes["right"]["centre"]
    iod = float(np.linalg.norm(left - right))
    target = 0.5 * (left + right) + np.array([0.0, -0.6 * iod, 0.0])
    visible = 5.0 * iod  # image height in metres at the target
    distance = 0.5 * visible / np.tan(np.radians(fov_y_deg) / 2.0)
    return target, distance


def render_for_landmarks(
    vertices: np.ndarray,
    faces: np.ndarray,
    eyes: dict[str, dict],
    viewmat: np.ndarray,
    K: np.ndarray,
    size: int,
    supersample: int = 2,
):
    """Shaded render with eye whites, iris and pupil. Returns ``(image [S, S, 3] float32,
    hi-res fragments, world points [sS, sS, 3])``."""
    s = supersample
    colors = np.tile(SKIN, (len(vertices), 1))
    for e in eyes.values():
        colors[e["mask"]] = _EYE_WHITE
    frags = rasterize_triangles(vertices, faces, viewmat, np.diag([s, s, 1.0]) @ K, size * s, size * s)
    img = shade(frags, vertices, faces, viewmat, vertex_colors=colors).astype(np.float64)
    m = frags.mask
    pts = np.zeros(frags.bary.shape)
    pts[m] = (vertices[faces[frags.face_id[m]]] * frags.bary[m][..., None]).sum(1)
    for e in eyes.values():
        on = m & np.isin(frags.face_id, e["face_ids"])
        d = pts[on] - e["centre"]
        r = np.linalg.norm(d[:, :2], axis=1)
        front = d[:, 2] > 0
        scale = np.ones((len(d), 3))
        scale[front & (r < IRIS_RADIUS)] = _IRIS / _EYE_WHITE
        scale[front & (r < _PUPIL_RADIUS)] = _PUPIL / _EYE_WHITE
        img[on] *= scale
    img = img.reshape(size, s, size, s, 3).mean((1, 3))
    return np.clip(img, 0, 1).astype(np.float32), frags, pts


def _backproject(xy: np.ndarray, frags, pts: np.ndarray, s: int, search: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """World point and triangle id under each 2D landmark (image pixels); nearest covered hi-res
    pixel within ``search`` hi-res pixels, else NaN / -1."""
    h, w = frags.face_id.shape
    out = np.full((len(xy), 3), np.nan)
    fid = np.full(len(xy), -1, dtype=np.int64)
    mask = frags.mask
    for k, (x, y) in enumerate(xy):
        cx, cy = x * s - 0.5, y * s - 0.5  # hi-res pixel-centre coordinates
        ix, iy = int(round(cx)), int(round(cy))
        x0, x1 = max(ix - search, 0), min(ix + search + 1, w)
        y0, y1 = max(iy - search, 0), min(iy + search + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        sub = mask[y0:y1, x0:x1]
        if not sub.any():
            continue
        yy, xx = np.nonzero(sub)
        d = (xx + x0 - cx) ** 2 + (yy + y0 - cy) ** 2
        j = int(np.argmin(d))
        py, px = yy[j] + y0, xx[j] + x0
        out[k] = pts[py, px]
        fid[k] = frags.face_id[py, px]
    return out, fid


def _project(points: np.ndarray, viewmat: np.ndarray, K: np.ndarray) -> np.ndarray:
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:]


# --- the embedding --------------------------------------------------------------------------------
def build_landmark_embedding(
    head: HeadModel,
    *,
    size: int = 512,
    views: Sequence[tuple[float, float]] = DEFAULT_VIEWS,
    fov_y_deg: float = 20.0,
    min_cos: float = 0.3,
    supersample: int = 2,
    debug_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Build the 478-landmark embedding of ``head`` (see the module docstring).

    Args:
        head: any head model; its neutral head (all-zero parameters) is used.
        size: render size in pixels (square).
        views: ``(yaw, pitch)`` degrees of the camera around the face (0, 0 = in front).
        fov_y_deg: vertical field of view of the renders.
        min_cos: a landmark's back-projection counts in a view only where the surface normal
            faces the camera by at least this cosine.
        supersample: render/back-projection resolution factor.
        debug_dir: when given, write each render with the detected landmarks drawn (PNG).
    Returns:
        ``(faces [478] int64, bary [478, 3] float64, report)``; ``report`` has per-view detection
        scores and reprojection residuals (px), the number of views per landmark, the snap
        distances and the fused points' spread.
    Raises:
        AvatarError: when FaceMesh finds no face in the frontal view or in too few views.
    """
    with torch.no_grad():
        out = head(**head.zero_params(1))
    v = out.vertices[0].detach().double().cpu().numpy()
    f = head.faces.cpu().numpy()
    eyes = eye_geometry(head, v)
    target, distance = framing(head, v, eyes, fov_y_deg)
    K = intrinsics(size, size, fov_y_deg)
    normals_f = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normals_f /= np.maximum(np.linalg.norm(normals_f, axis=1, keepdims=True), 1e-20)

    tracker = FaceTracker(static_images=True)
    per_view = []
    samples = []  # per view: [468, 3] points (NaN where unused)
    debug = Path(debug_dir) if debug_dir is not None else None
    for yaw, pitch in views:
        view = orbit_viewmat(target, distance, yaw, pitch)
        img, frags, pts = render_for_landmarks(v, f, eyes, view, K, size, supersample)
        res = tracker.process(img)
        info = dict(yaw=float(yaw), pitch=float(pitch), found=bool(res.found), score=float(res.score))
        per_view.append(info)
        if debug is not None:
            _write_debug(debug / f"view_{yaw:+.0f}_{pitch:+.0f}.png", img, res.landmarks if res.found else None)
        if not res.found:
            samples.append(np.full((NUM_MESH, 3), np.nan))
            continue
        xy = res.landmarks[:NUM_MESH, :2].astype(np.float64)
        p, fid = _backproject(xy, frags, pts, supersample)
        cam_pos = -view[:3, :3].T @ view[:3, 3]
        ok = fid >= 0
        cos = np.full(NUM_MESH, -1.0)
        to_cam = cam_pos - p[ok]
        to_cam /= np.linalg.norm(to_cam, axis=1, keepdims=True)
        cos[ok] = (normals_f[fid[ok]] * to_cam).sum(1)
        p[cos < min_cos] = np.nan
        info["detections"] = res.landmarks.astype(np.float64)
        info["viewmat"] = view
        samples.append(p)
    found = [i for i, pv in enumerate(per_view) if pv["found"]]
    frontal = [i for i, (y, p) in enumerate(views) if y == 0 and p == 0]
    if frontal and not per_view[frontal[0]]["found"]:
        raise AvatarError(f"{head.name}: FaceMesh found no face in the frontal render of the neutral head")
    if len(found) < max(2, len(views) // 2):
        raise AvatarError(f"{head.name}: FaceMesh found the rendered face in only {len(found)} of {len(views)} views")

    stack = np.stack(samples)  # [N, 468, 3]
    n_views = np.isfinite(stack[..., 0]).sum(0)
    if (n_views == 0).any():
        missing = np.nonzero(n_views == 0)[0]
        raise AvatarError(f"{head.name}: landmarks {missing[:10].tolist()}... seen in no view")
    med = np.nanmedian(stack, axis=0)
    dist = np.linalg.norm(stack - med[None], axis=-1)  # NaN where unused
    mad = np.nanmedian(dist, axis=0)
    thresh = np.maximum(2.5 * mad, 0.002)
    inlier = np.isfinite(dist) & (dist <= thresh[None])
    fused = np.where(inlier[..., None], np.nan_to_num(stack), 0.0).sum(0) / np.maximum(inlier.sum(0), 1)[:, None]
    spread = np.sqrt(np.where(inlier, np.nan_to_num(dist) ** 2, 0.0).sum(0) / np.maximum(inlier.sum(0), 1))

    labels = connected_components(f, len(v))
    skin = np.nonzero((labels[f] == 0).all(1))[0]
    snap_f, snap_b, snap = closest_points_on_mesh(fused, v, f, skin)
    backprojected = (v[f[snap_f]] * snap_b[..., None]).sum(1)
    dets = [(pv["viewmat"], pv["detections"][:NUM_MESH, :2]) for pv in per_view if "detections" in pv]
    mesh_f, mesh_b, cost = _fit_by_reprojection(v, f, skin, dets, K, backprojected)
    iris_f, iris_b, _ = iris_embedding(v, f, eyes)
    faces_out = np.concatenate([mesh_f, iris_f]).astype(np.int64)
    bary_out = np.concatenate([mesh_b, iris_b])

    # Reprojection residuals of the final embedding in each view where FaceMesh found the face.
    lm3d = (v[f[faces_out]] * bary_out[..., None]).sum(1)
    for info in per_view:
        det = info.pop("detections", None)
        view = info.pop("viewmat", None)
        if det is None:
            continue
        r = np.linalg.norm(_project(lm3d, view, K) - det[:, :2], axis=1)
        info["residual_mesh_px"] = float(r[:NUM_MESH].mean())
        info["residual_iris_px"] = float(r[NUM_MESH:].mean())
        info["residual_max_px"] = float(r.max())
    iod = float(np.linalg.norm(eyes["left"]["centre"] - eyes["right"]["centre"]))
    report = dict(
        model=head.name,
        size=size,
        fov_y_deg=fov_y_deg,
        camera_distance=float(distance),
        interocular_m=iod,
        pixels_per_iod_frontal=float(K[0, 0] * iod / distance),
        views=per_view,
        views_per_landmark=n_views,
        inliers_per_landmark=inlier.sum(0),
        spread_m=spread,
        snap_distance_m=snap,
        reprojection_cost_px=cost,
        moved_from_backprojection_m=np.linalg.norm(lm3d[:NUM_MESH] - backprojected, axis=1),
        symmetry_m=symmetry_error(lm3d),
    )
    return faces_out, bary_out, report


def _fit_by_reprojection(
    v: np.ndarray, f: np.ndarray, skin: np.ndarray, dets: list, K: np.ndarray, start: np.ndarray,
    radius: float = 0.008, grid: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per mesh landmark, the skin surface point whose projections best match FaceMesh's detections
    over all views (mean 2D distance, px). Candidates: a barycentric grid on the skin triangles
    near the back-projected point ``start`` and near the best skin vertex overall (silhouette
    landmarks slide with the view, so the surface point under them is not the best compromise)."""
    used = np.unique(f[skin])
    vproj = [(_project(v[used], view, K), det) for view, det in dets]
    # Coarse: the best skin vertex per landmark.
    vcost = sum(np.linalg.norm(p[None, :, :] - d[:, None, :], axis=-1) for p, d in vproj) / len(vproj)  # [L, Vs]
    best_v = v[used[vcost.argmin(1)]]
    # Barycentric grid (including vertices and edges).
    ij = np.array([(i, j) for i in range(grid + 1) for j in range(grid + 1 - i)], dtype=np.float64) / grid
    gb = np.stack([1 - ij.sum(1), ij[:, 0], ij[:, 1]], 1)  # [G, 3]
    tri = v[f[skin]]  # [T, 3, 3]
    centroid = tri.mean(1)
    size = np.linalg.norm(tri - centroid[:, None], axis=-1).max(1)
    out_f = np.zeros(len(start), dtype=np.int64)
    out_b = np.zeros((len(start), 3))
    out_c = np.zeros(len(start))
    for k in range(len(start)):
        near = np.zeros(len(skin), dtype=bool)
        for c in (start[k], best_v[k]):
            near |= np.linalg.norm(centroid - c, axis=1) < radius + size
        ids = np.nonzero(near)[0]
        pts = np.einsum("gc,tcd->tgd", gb, tri[ids]).reshape(-1, 3)
        cost = np.zeros(len(pts))
        for view, det in dets:
            cost += np.linalg.norm(_project(pts, view, K) - det[k], axis=1)
        j = int(np.argmin(cost))
        out_f[k] = skin[ids[j // len(gb)]]
        out_b[k] = gb[j % len(gb)]
        out_c[k] = cost[j] / len(dets)
    return out_f, out_b, out_c


def symmetry_pairs() -> np.ndarray:
    """``[P, 2]`` left/right landmark pairs: FaceMesh's eye-region maps (71 pairs, from
    :mod:`avatar.perception.landmarks`) plus the two iris blocks."""
    iris = np.stack([np.arange(IRIS_RIGHT_START, IRIS_RIGHT_START + 5), np.arange(IRIS_LEFT_START, IRIS_LEFT_START + 5)], 1)
    # Mirroring swaps the horizontal iris contour points (-X <-> +X) and keeps top/bottom.
    iris[1:, 1] = iris[1:, 1][[2, 1, 0, 3]]
    return np.concatenate([np.stack([LEFT_EYE, RIGHT_EYE], 1), iris])


def symmetry_error(points: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
    """Per pair, distance between a point and its partner mirrored in x (metres)."""
    pairs = symmetry_pairs() if pairs is None else pairs
    a, b = points[pairs[:, 0]], points[pairs[:, 1]] * np.array([-1.0, 1.0, 1.0])
    return np.linalg.norm(a - b, axis=1)


def _write_debug(path: Path, img: np.ndarray, landmarks: np.ndarray | None) -> None:
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    if landmarks is not None:
        draw = ImageDraw.Draw(im)
        for k, (x, y) in enumerate(landmarks[:, :2]):
            color = (0, 90, 255) if k < NUM_MESH else ((255, 0, 0) if k < IRIS_LEFT_START else (0, 200, 0))
            draw.point((float(x), float(y)), fill=color)
    im.save(path)
