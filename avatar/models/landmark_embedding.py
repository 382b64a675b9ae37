"""The 478 MediaPipe landmarks (468 FaceMesh points + 10 iris points) embedded on a head model's
surface: for each landmark a triangle and barycentric coordinates on the neutral head.

This module holds what a head model needs at run time: the embedding's constants, the pure
geometry it is made of (:func:`connected_components`, :func:`closest_points_on_mesh`,
:func:`eye_geometry`, :func:`iris_embedding`) and the user cache of built embeddings
(:func:`cached_landmark_embedding`). Building one renders the head and runs FaceMesh, which a
model may not do (layers point down): that is :mod:`avatar.render.landmark_embedding`, handed in
as ``builder`` by whoever may call it (``avatar track --model flame``).

Iris points (468..477) come from the eyeball geometry: the iris centre is where the eye's forward
axis (+Z at rest) leaves the eyeball, the 4 contour points are on a circle of the human iris radius
(5.85 mm) around it, seen from the front, each projected along -Z onto the eyeball. MediaPipe's iris
layout (checked on renders): 468..472 is the subject's right eye (-X), 473..477 the subject's left
eye (+X); in each block the centre comes first, then the contour points in the order listed in
:data:`IRIS_CONTOUR_DIRECTIONS`.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.models.base import HeadModel

log = logging.getLogger(__name__)

__all__ = [
    "NUM_LANDMARKS",
    "IRIS_RADIUS",
    "IRIS_CONTOUR_DIRECTIONS",
    "LandmarkBuilder",
    "cached_landmark_embedding",
    "embedding_cache_file",
    "closest_points_on_mesh",
    "eye_geometry",
    "iris_embedding",
    "connected_components",
]

NUM_LANDMARKS = 478
NUM_MESH = 468
#: Human iris radius (metres): the mean horizontal visible iris diameter is ~11.7 mm.
IRIS_RADIUS = 0.00585
#: Directions (head X = towards the subject's left, Y up, seen from the front) of the 4 iris contour
#: points after each iris centre, in MediaPipe's order. Measured on our frontal render: FaceMesh
#: gives them as image right, image top, image left, image bottom; a camera in front of the face
#: sees the head's +X on the image right, so the order is (+X, +Y, -X, -Y).
IRIS_CONTOUR_DIRECTIONS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
#: First index of the iris block of the subject's right eye (-X) and of the left eye (+X).
IRIS_RIGHT_START, IRIS_LEFT_START = 468, 473
#: Bumped when the procedure changes, so cached FLAME embeddings are rebuilt.
EMBEDDING_VERSION = 1

#: Builds a head model's embedding: ``head -> (faces [478], bary [478, 3], report)``, e.g.
#: :func:`avatar.render.landmark_embedding.build_landmark_embedding`.
LandmarkBuilder = Callable[[HeadModel], tuple[np.ndarray, np.ndarray, dict]]

#: Eye paint of the renders the embedding is built from (eyeballs are untextured).
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
    head: HeadModel, *, builder: LandmarkBuilder | None = None, attach: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """The 478-landmark embedding of ``head`` from the user cache; when there is none (or it is
    unreadable), built once by ``builder`` (e.g.
    :func:`avatar.render.landmark_embedding.build_landmark_embedding`) and cached, or ``None``
    without a builder. With ``attach``, the embedding is set on ``head``
    (:meth:`HeadModel.set_landmark_embedding`). Returns ``(faces, bary)``.
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
            log.warning("ignoring unreadable landmark cache %s (%s)", path, exc)
            faces = bary = None
    if faces is None:
        if builder is None:
            return None
        log.info("building the landmark embedding of %s (once; cached in %s)", head.name, path)
        faces, bary, report = builder(head)
        faces, bary = np.asarray(faces, dtype=np.int64), np.asarray(bary, dtype=np.float64)
        scores = np.array([v.get("score", np.nan) for v in report.get("views", [])], dtype=np.float64)
        with atomic_path(path) as tmp:
            np.savez(tmp, faces=faces, bary=bary, version=np.int64(EMBEDDING_VERSION), view_scores=scores)
    if attach:
        head.set_landmark_embedding(torch.from_numpy(faces), torch.from_numpy(bary))
    return faces, bary
