"""A synthetic tracked clip: AnnyHead with painted vertex colours, rendered by the CPU mesh
rasterizer, with its exact tracking written in the fitting stage's ``tracking.npz`` layout.
Used by tests and as a sample that needs no video."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.fitting.tracking import Tracking, save_tracking
from avatar.utils.files import atomic_path

FRONTAL_VIEWMAT = np.diag([1.0, -1.0, -1.0, 1.0])  # camera at the origin looking down world -Z


def vertex_colors(vertices: np.ndarray) -> np.ndarray:
    """A smooth, non-uniform albedo: skin tone modulated by position (so appearance is learnable)."""
    v = vertices - vertices.mean(0)
    base = np.array([0.80, 0.62, 0.52])
    mod = 0.5 + 0.5 * np.sin(np.stack([40 * v[:, 0], 30 * v[:, 1] + 1.0, 35 * v[:, 2] + 2.0], -1))
    return np.clip(0.65 * base + 0.35 * mod, 0, 1)


def make_synthetic_clip(
    out_dir: str | Path, head, num_frames: int = 12, size: int = 96, fps: float = 10.0, seed: int = 0
) -> Path:
    """Write ``out_dir/frames/*.png``, ``out_dir/mattes.npz`` and ``out_dir/tracking.npz``: the head
    opens and closes its jaw, blinks and turns a little; returns ``out_dir``."""
    from avatar.io.video import write_image
    from avatar.models.landmark_embedding import eye_geometry
    from avatar.render.mesh import rasterize_triangles, shade

    out_dir = Path(out_dir)
    frames_dir = out_dir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    E = head.num_expressions
    names = list(head.expression_names)
    t = np.linspace(0, 2 * np.pi, num_frames, endpoint=False)
    expr = np.zeros((num_frames, E), np.float32)
    if "jawOpen" in names:
        expr[:, names.index("jawOpen")] = 0.5 * (1 - np.cos(t)) * 0.7
    if "mouthSmileLeft" in names:
        expr[:, names.index("mouthSmileLeft")] = 0.4 * (1 + np.sin(t)) / 2
        expr[:, names.index("mouthSmileRight")] = 0.4 * (1 + np.sin(t)) / 2
    jaw = np.zeros((num_frames, 3), np.float32)
    neck = np.zeros((num_frames, 3), np.float32)
    eyes = np.zeros((num_frames, 2, 3), np.float32)
    eyes[:, :, 1] = (0.15 * np.sin(2 * t))[:, None]
    orient = np.stack([0.05 * np.sin(t), 0.25 * np.sin(t + 0.5), np.zeros_like(t)], -1).astype(np.float32)
    transl = np.stack([0.005 * rng.standard_normal(num_frames), np.full_like(t, -0.13), np.full_like(t, -0.62)], -1)
    transl = transl.astype(np.float32)
    shape = np.zeros(head.num_shape, np.float32)
    f = 0.5 * size / np.tan(np.radians(15.0))
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32)
    with torch.no_grad():
        out = head(shape=torch.from_numpy(shape)[None], expression=torch.from_numpy(expr), jaw=torch.from_numpy(jaw),
                   neck=torch.from_numpy(neck), eyes=torch.from_numpy(eyes),
                   global_orient=torch.from_numpy(orient), transl=torch.from_numpy(transl))  # fmt: skip
        neutral = head().vertices[0].double().numpy()
    verts = out.vertices.double().numpy()
    faces = head.faces.numpy()
    colors = vertex_colors(neutral)
    try:
        eyes_geo = eye_geometry(head, neutral)
    except AvatarError:  # a head without eyeball vertices (e.g. a small test model) gets no iris paint
        eyes_geo = {}
    for e in eyes_geo.values():
        d = neutral[e["mask"]] - e["centre"]
        iris = (d[:, 2] > 0) & (np.linalg.norm(d[:, :2], axis=1) < 0.006)
        c = np.full((e["mask"].sum(), 3), 0.93)
        c[iris] = (0.25, 0.18, 0.1)
        colors[e["mask"]] = c
    mattes = np.zeros((num_frames, size, size), np.uint8)
    landmarks = np.zeros((num_frames, 478, 3), np.float32)
    s = 2
    for i in range(num_frames):
        frags = rasterize_triangles(verts[i], faces, FRONTAL_VIEWMAT, np.diag([s, s, 1.0]) @ K, size * s, size * s)
        img = shade(frags, verts[i], faces, FRONTAL_VIEWMAT, vertex_colors=colors, background=(1.0, 1.0, 1.0))
        img = img.reshape(size, s, size, s, 3).mean((1, 3))
        mattes[i] = np.rint(frags.mask.reshape(size, s, size, s).mean((1, 3)) * 255).astype(np.uint8)
        write_image(frames_dir / f"{i:05d}.png", img)
        if out.landmarks is not None:
            cam = out.landmarks[i].double().numpy() @ FRONTAL_VIEWMAT[:3, :3].T + FRONTAL_VIEWMAT[:3, 3]
            uv = cam @ K.T.astype(np.float64)
            landmarks[i, :, :2] = uv[:, :2] / uv[:, 2:]
            landmarks[i, :, 2] = cam[:, 2]
    with atomic_path(out_dir / "mattes.npz") as tmp:
        np.savez(tmp, mattes=mattes)
    save_tracking(Tracking(
        frame_index=np.arange(num_frames, dtype=np.int64), tracked=np.ones(num_frames, bool),
        interpolated=np.zeros(num_frames, bool), landmarks=landmarks, expression=expr, jaw=jaw, neck=neck,
        eyes=eyes, global_orient=orient, transl=transl, K=np.repeat(K[None], num_frames, 0),
        viewmat=FRONTAL_VIEWMAT.astype(np.float32), shape=shape, model=head.name, expression_names=np.array(names),
        image_size=np.array([size, size]), fps=float(fps), source=str(frames_dir.resolve()),
    ), out_dir / "tracking.npz")  # fmt: skip
    return out_dir
