"""The 478 MediaPipe landmarks (468 FaceMesh points + 10 iris points) embedded on a head model's
surface: for each landmark a triangle and barycentric coordinates on the neutral head.

How it is made (:func:`build_landmark_embedding`), for any :class:`HeadModel`:

1. Render the neutral head on CPU from several views (yaw x pitch grid), with light eyeballs and a
   painted iris + pupil (the meshes have no eye texture; the paint is computed per pixel from the
   eyeball geometry, so it is sharp even on a coarse eyeball).
2. Run our FaceMesh (:class:`avatar.perception.landmarks.FaceTracker`) on each render.
3. Back-project each of the 468 mesh landmarks through the rasterizer's fragments (the surface
   point under the landmark's pixel) in every view where that surface faces the camera.
4. Fuse per landmark: median of the 3D points, then the mean of the inliers near the median, then
   snap to the closest point of the face skin (the mesh's largest connected component, so no point
   lands on an eyeball or the tongue) -> triangle + barycentrics.
5. Iris points (468..477) come from the eyeball geometry: the iris centre is where the eye's forward
   axis (+Z at rest) leaves the eyeball, the 4 contour points are on a circle of the human iris
   radius (5.85 mm) around it, seen from the front, each projected along -Z onto the eyeball.

MediaPipe's iris layout (checked on renders with :func:`iris_layout_check`): 468..472 is the
subject's right eye (-X), 473..477 the subject's left eye (+X); in each block the centre comes first,
then the contour points in the order listed in :data:`IRIS_CONTOUR_DIRECTIONS`.

A user's FLAME model gets the same embedding at first use, cached in the user cache folder
(:func:`cached_landmark_embedding`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.models.base import HeadModel

log = logging.getLogger(__name__)

__all__ = [
    "NUM_LANDMARKS",
    "IRIS_RADIUS",
    "IRIS_CONTOUR_DIRECTIONS",
    "DEFAULT_VIEWS",
    "build_landmark_embedding",
    "cached_landmark_embedding",
    "embedding_cache_file",
    "closest_points_on_mesh",
    "eye_geometry",
]

NUM_LANDMARKS = 478
NUM_MESH = 468
#: Human iris radius (metres): the mean horizontal visible iris diameter is ~11.7 mm.
IRIS_RADIUS = 0.00585
#: (yaw, pitch) in degrees of the views rendered to build an embedding.
DEFAULT_VIEWS: tuple[tuple[float, float], ...] = tuple(
    (float(y), float(p)) for p in (-10, 0, 10) for y in (-30, -15, 0, 15, 30)
)
#: Directions (head X = towards the subject's left, Y up, seen from the front) of the 4 iris contour
#: points after each iris centre, in MediaPipe's order. Measured on our frontal render: FaceMesh
#: gives them as image right, image top, image left, image bottom; a camera in front of the face
#: sees the head's +X on the image right, so the order is (+X, +Y, -X, -Y).
IRIS_CONTOUR_DIRECTIONS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
#: First index of the iris block of the subject's right eye (-X) and of the left eye (+X).
IRIS_RIGHT_START, IRIS_LEFT_START = 468, 473
#: Bumped when the procedure changes, so cached FLAME embeddings are rebuilt.
EMBEDDING_VERSION = 1

_EYE_WHITE = np.array([0.93, 0.93, 0.90])
_IRIS = np.array([0.32, 0.22, 0.14])
_PUPIL = np.array([0.04, 0.04, 0.04])
_PUPIL_RADIUS = 0.002


# --- mesh helpers ---------------------------------------------------------------------------------
def connected_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """``[V]`` component label per vertex (0 = the largest component)."""
    lab = np.arange(num_vertices)
    f = np.asarray(faces, dtype=np.int64)
    while True:
        low = lab[f].min(1)
        new = lab.copy()
        np.minimum.at(new, f.ravel(), np.repeat(low, 3))
        new = new[new]
        if np.array_equal(new, lab):
            break
        lab = new
    _, inv, counts = np.unique(lab, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv]


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentrics ``[N, 3]`` of the closest point to ``p`` on triangles ``(a, b, c)`` (all ``[N, 3]``)."""
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    n = p.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v, w = vb / denom, vc / denom
        out = np.stack([1 - v - w, v, w], 1)
        # Voronoi regions, lowest priority first (later assignments win).
        e = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        m = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
        out[m] = np.stack([np.zeros(n), 1 - e, e], 1)[m]
        e = d2 / (d2 - d6)
        m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        out[m] = np.stack([1 - e, np.zeros(n), e], 1)[m]
        m = (d6 >= 0) & (d5 <= d6)
        out[m] = (0.0, 0.0, 1.0)
        e = d1 / (d1 - d3)
        m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        out[m] = np.stack([1 - e, e, np.zeros(n)], 1)[m]
        m = (d3 >= 0) & (d4 <= d3)
        out[m] = (0.0, 1.0, 0.0)
        m = (d1 <= 0) & (d2 <= 0)
        out[m] = (1.0, 0.0, 0.0)
    bad = ~np.isfinite(out).all(1)
    out[bad] = 1.0 / 3.0  # degenerate triangle: its centroid
    return np.clip(out, 0.0, 1.0) / np.clip(out, 0.0, 1.0).sum(1, keepdims=True)


def closest_points_on_mesh(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, face_ids: np.ndarray | None = None, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface point for each of ``points [P, 3]`` among ``faces[face_ids]`` (all faces
    by default). Returns ``(face index [P] into faces, bary [P, 3], distance [P])``."""
    pts = np.asarray(points, dtype=np.float64)
    v = np.asarray(vertices, dtype=np.float64)
    ids = np.arange(len(faces)) if face_ids is None else np.asarray(face_ids, dtype=np.int64)
    tri = v[np.asarray(faces)[ids]]  # [T, 3, 3]
    t = tri.shape[0]
    best_f = np.zeros(len(pts), dtype=np.int64)
    best_b = np.zeros((len(pts), 3))
    best_d = np.zeros(len(pts))
    for s in range(0, len(pts), chunk):
        p = pts[s : s + chunk]
        k = p.shape[0]
        pp = np.repeat(p, t, 0)
        a, b, c = (np.tile(tri[:, i], (k, 1)) for i in range(3))
        bary = _closest_on_triangles(pp, a, b, c)
        q = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
        d = np.linalg.norm(q - pp, axis=1).reshape(k, t)
        j = d.argmin(1)
        best_f[s : s + k] = ids[j]
        best_b[s : s + k] = bary.reshape(k, t, 3)[np.arange(k), j]
        best_d[s : s + k] = d[np.arange(k), j]
    return best_f, best_b, best_d


def _ray_hits(origin: np.ndarray, direction: np.ndarray, tri: np.ndarray) -> tuple[int, np.ndarray, float] | None:
    """First hit of a ray on triangles ``[T, 3, 3]`` (both sides): (triangle, bary, t) or None."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    pvec = np.cross(direction, e2)
    det = (e1 * pvec).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        tvec = origin - tri[:, 0]
        u = (tvec * pvec).sum(1) * inv
        qvec = np.cross(tvec, e1)
        w = (qvec * direction).sum(1) * inv
        t = (e2 * qvec).sum(1) * inv
    ok = (np.abs(det) > 1e-18) & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
    if not ok.any():
        return None
    i = int(np.argmin(np.where(ok, t, np.inf)))
    return i, np.array([1 - u[i] - w[i], u[i], w[i]]), float(t[i])


def eye_geometry(head: HeadModel, vertices: np.ndarray) -> dict[str, dict]:
    """Per eye (``"left"`` = the subject's left, +X; ``"right"``): eyeball vertex mask, face ids,
    centre and radius (least-squares sphere fit of the eyeball vertices)."""
    names = [n.lower() for n in head.joint_names]
    eye_joints = [i for i, n in enumerate(names) if "eye" in n]
    if len(eye_joints) != 2:
        raise AvatarError(f"{head.name}: expected two eye joints, found {[head.joint_names[i] for i in eye_joints]}")
    w = head.skin_weights.detach().double().cpu().numpy()
    faces = head.faces.cpu().numpy()
    out = {}
    for j in eye_joints:
        mask = w[:, j] > 0.5
        if mask.sum() < 8:
            raise AvatarError(f"{head.name}: eye joint {head.joint_names[j]} drives no eyeball vertices")
        p = vertices[mask]
        # Sphere fit: |p|^2 = 2 c.p + (r^2 - |c|^2), linear in (c, k).
        a = np.concatenate([2 * p, np.ones((len(p), 1))], 1)
        sol = np.linalg.lstsq(a, (p**2).sum(1), rcond=None)[0]
        centre = sol[:3]
        radius = float(np.sqrt(sol[3] + centre @ centre))
        fmask = mask[faces].all(1)
        out["left" if centre[0] > 0 else "right"] = dict(
            joint=head.joint_names[j], mask=mask, face_ids=np.nonzero(fmask)[0], centre=centre, radius=radius
        )
    if set(out) != {"left", "right"}:
        raise AvatarError(f"{head.name}: both eyeballs are on the same side of x = 0")
    return out


def iris_embedding(vertices: np.ndarray, faces: np.ndarray, eyes: dict[str, dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 10 iris landmarks from the eyeball geometry: ``(faces [10], bary [10, 3], points [10, 3])``."""
    fid = np.zeros(10, dtype=np.int64)
    bary = np.zeros((10, 3))
    pts = np.zeros((10, 3))
    z = np.array([0.0, 0.0, 1.0])
    for side, start in (("right", 0), ("left", 5)):
        e = eyes[side]
        tri = vertices[faces[e["face_ids"]]]
        # Centre: the eye's forward axis leaves the eyeball.
        hit = _ray_hits(e["centre"] + 2 * e["radius"] * z, -z, tri)
        if hit is None:
            raise AvatarError(f"the {side} eye's forward axis misses its eyeball")
        i, b, _ = hit
        front = e["centre"] + 2 * e["radius"] * z
        for k, offset in enumerate([np.zeros(2)] + list(IRIS_CONTOUR_DIRECTIONS * IRIS_RADIUS)):
            origin = front + np.array([offset[0], offset[1], 0.0])
            hit = _ray_hits(origin, -z, tri)
            if hit is None:
                raise AvatarError(f"the {side} iris contour misses its eyeball (eyeball radius {e['radius']:.4f} m)")
            i, b, _ = hit
            fid[start + k] = e["face_ids"][i]
            bary[start + k] = b
            pts[start + k] = (vertices[faces[fid[start + k]]] * b[:, None]).sum(0)
    return fid, bary, pts


# --- rendering ------------------------------------------------------------------------------------
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
    from avatar.render.mesh import SKIN, rasterize_triangles, shade

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
    from avatar.perception.landmarks import FaceTracker
    from avatar.render.mesh import intrinsics, orbit_viewmat

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
    from avatar.perception.landmarks import LEFT_EYE, RIGHT_EYE

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


# --- FLAME / user models: build once, cache ------------------------------------------------------
def _model_hash(head: HeadModel) -> str:
    with torch.no_grad():
        rest = head(**head.zero_params(1)).rest_vertices[0]
    h = hashlib.sha256()
    h.update(f"v{EMBEDDING_VERSION}".encode())
    h.update(np.ascontiguousarray(rest.detach().cpu().numpy().astype(np.float32)).tobytes())
    h.update(np.ascontiguousarray(head.faces.cpu().numpy().astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def embedding_cache_file(head: HeadModel) -> Path:
    """Where the embedding of ``head`` is cached: ``cache_dir()/landmarks/<name>-<hash>.npz``; the
    hash covers the neutral vertices, the faces and the procedure's version."""
    from avatar.utils.files import cache_dir

    return cache_dir() / "landmarks" / f"{head.name}-{_model_hash(head)}.npz"


def cached_landmark_embedding(
    head: HeadModel, *, builder: Callable[..., tuple[np.ndarray, np.ndarray, dict]] | None = None, attach: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The 478-landmark embedding of ``head``, read from the user cache or built (once) and cached.

    ``builder`` defaults to :func:`build_landmark_embedding`. With ``attach``, the embedding is
    set on ``head`` (:meth:`HeadModel.set_landmark_embedding`). Returns ``(faces, bary)``.
    """
    from avatar.utils.files import atomic_path

    path = embedding_cache_file(head)
    faces = bary = None
    if path.is_file():
        try:
            with np.load(path) as data:
                faces, bary = data["faces"].astype(np.int64), data["bary"].astype(np.float64)
            if faces.shape != (NUM_LANDMARKS,) or bary.shape != (NUM_LANDMARKS, 3):
                raise ValueError(f"shapes {faces.shape}, {bary.shape}")
        except Exception as exc:  # a broken cache file is rebuilt, never trusted
            log.warning("ignoring unreadable landmark cache %s (%s); rebuilding", path, exc)
            faces = bary = None
    if faces is None:
        log.info("building the landmark embedding of %s (once; cached in %s)", head.name, path)
        build = builder or build_landmark_embedding
        faces, bary, report = build(head)
        faces, bary = np.asarray(faces, dtype=np.int64), np.asarray(bary, dtype=np.float64)
        scores = np.array([v.get("score", np.nan) for v in report.get("views", [])], dtype=np.float64)
        with atomic_path(path) as tmp:
            np.savez(tmp, faces=faces, bary=bary, version=np.int64(EMBEDDING_VERSION), view_scores=scores)
    if attach:
        head.set_landmark_embedding(torch.from_numpy(faces), torch.from_numpy(bary))
    return faces, bary
