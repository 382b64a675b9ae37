"""Tracking against ground truth: an AnnyHead clip rendered on the CPU with known identity,
expressions, gaze, head motion and camera, encoded to H.264, then run through the whole pipeline
(``avatar.track``: decode -> FaceMesh -> fit). Compared: face-region vertex error after a similarity
alignment per frame, expression coefficient error, head rotation error.

The bounds are the figures measured on this clip (printed with ``-s``) with a margin."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar.fitting.energy import camera_viewmat, intrinsics_matrix

W = H = 320
FOCAL = 640.0
N = 16
DRIVEN = {"jawOpen": 0.55, "mouthSmileLeft": 0.7, "mouthSmileRight": 0.7, "browInnerUp": 0.8,
          "eyeBlinkLeft": 0.6, "mouthPucker": 0.6}


def ground_truth(head) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    t = torch.linspace(0.0, 1.0, N)
    shape = torch.zeros(1, head.num_shape)
    shape[0, :6] = (torch.rand(6, generator=g) - 0.5) * 0.3
    shape[0, 6:] = torch.randn(head.num_shape - 6, generator=g) * 0.2
    expr = torch.zeros(N, head.num_expressions)
    for k, (name, amp) in enumerate(DRIVEN.items()):
        phase = 2 * math.pi * (t * (0.8 + 0.25 * k) + 0.15 * k)
        expr[:, head.expression_names.index(name)] = amp * (0.5 - 0.5 * torch.cos(phase))
    rot = torch.stack([0.15 * torch.sin(2 * math.pi * t), 0.35 * torch.sin(2 * math.pi * 0.8 * t + 0.4),
                       0.08 * torch.sin(2 * math.pi * 1.2 * t)], 1)
    transl = torch.stack([0.01 * torch.sin(5 * t), -0.125 + 0.005 * t, -0.62 + 0.03 * torch.sin(3 * t)], 1)
    eyes = torch.zeros(N, 2, 3)
    eyes[:, :, 0] = (0.12 * torch.sin(4 * t))[:, None]
    eyes[:, :, 1] = (0.2 * torch.cos(3 * t))[:, None]
    return dict(shape=shape, expression=expr, global_orient=rot, transl=transl, eyes=eyes)


def _sphere(points: np.ndarray) -> np.ndarray:
    a = np.concatenate([2 * points, np.ones((len(points), 1))], 1)
    return np.linalg.lstsq(a, (points**2).sum(1), rcond=None)[0][:3]


LIP_COLOR, BROW_COLOR = np.array([0.62, 0.30, 0.30]), np.array([0.28, 0.18, 0.12])
BROWS = [70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285]


def face_paint(head, rest: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Lips and eyebrows painted on the skin (vertices near the lip / brow landmarks of the rest
    head): without them an untextured render hides smiles and brow raises from FaceMesh."""
    from avatar.perception.landmarks import LIPS

    faces = head.faces.numpy()
    lm = (rest[faces[head.landmark_faces.numpy()]] * head.landmark_bary.numpy()[..., None]).sum(1)
    for ids, color, radius in ((LIPS[:40], LIP_COLOR, 0.004), (BROWS, BROW_COLOR, 0.005)):
        d = np.linalg.norm(rest[:, None, :] - lm[ids][None], axis=-1).min(1)
        colors[d < radius] = color
    return colors


def render_clip(head, gt: dict) -> list[np.ndarray]:
    """Shaded renders with eye whites and a painted iris + pupil that follow the gaze (as in
    ``landmark_embedding.render_for_landmarks``, whose paint faces world +Z: here it faces each
    eye's posed forward axis, so the eye rotations are visible to FaceMesh)."""
    from avatar.models.landmark_embedding import _EYE_WHITE, _IRIS, _PUPIL, _PUPIL_RADIUS, IRIS_RADIUS, eye_geometry
    from avatar.models.rotations import axis_angle_to_matrix
    from avatar.render.mesh import SKIN, rasterize_triangles, shade

    with torch.no_grad():
        verts = head(**gt).vertices.double().numpy()
        rest = head(shape=gt["shape"]).vertices[0].double().numpy()
    eyes = eye_geometry(head, rest)  # masks, faces, radius (pose-independent)
    order = {head.joint_names[j]: k for k, j in enumerate(j for j, n in enumerate(head.joint_names) if "eye" in n.lower())}
    R_head = axis_angle_to_matrix(gt["global_orient"].double()).numpy()
    R_eye = axis_angle_to_matrix(gt["eyes"].double()).numpy()  # [N, 2, 3, 3]
    faces = head.faces.numpy()
    K = intrinsics_matrix(FOCAL, W, H)
    view = camera_viewmat()
    colors = face_paint(head, rest, np.tile(SKIN, (len(rest), 1)))
    for e in eyes.values():
        colors[e["mask"]] = _EYE_WHITE
    s = 2
    frames = []
    for i, v in enumerate(verts):
        frags = rasterize_triangles(v, faces, view, np.diag([s, s, 1.0]) @ K, W * s, H * s)
        img = shade(frags, v, faces, view, vertex_colors=colors).astype(np.float64)
        m = frags.mask
        pts = np.zeros(frags.bary.shape)
        pts[m] = (v[faces[frags.face_id[m]]] * frags.bary[m][..., None]).sum(1)
        for e in eyes.values():
            centre = _sphere(v[e["mask"]])
            axis = R_head[i] @ R_eye[i, order[e["joint"]]] @ np.array([0.0, 0.0, 1.0])
            on = m & np.isin(frags.face_id, e["face_ids"])
            d = pts[on] - centre
            along = d @ axis
            r = np.linalg.norm(d - along[:, None] * axis, axis=1)
            scale = np.ones((len(d), 3))
            scale[(along > 0) & (r < IRIS_RADIUS)] = _IRIS / _EYE_WHITE
            scale[(along > 0) & (r < _PUPIL_RADIUS)] = _PUPIL / _EYE_WHITE
            img[on] *= scale
        img = img.reshape(H, s, W, s, 3).mean((1, 3))
        frames.append((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return frames


def similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama: ``src`` [P, 3] mapped by the best scale * rotation + translation onto ``dst``."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, s, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.sign(np.linalg.det(u @ vt))
    S = np.diag([1.0, 1.0, d])
    R = u @ S @ vt
    scale = (s * np.diag(S)).sum() / (a**2).sum(1).mean()
    return scale * a @ R.T + md


def rotation_error_deg(aa_a: np.ndarray, aa_b: np.ndarray) -> np.ndarray:
    from avatar.models.rotations import axis_angle_to_matrix

    Ra = axis_angle_to_matrix(torch.as_tensor(aa_a, dtype=torch.float64))
    Rb = axis_angle_to_matrix(torch.as_tensor(aa_b, dtype=torch.float64))
    rel = Ra.transpose(-1, -2) @ Rb
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return np.degrees(torch.acos(cos).numpy())


@pytest.fixture(scope="module")
def synthetic_run(anny_head, tmp_path_factory):
    from avatar.fitting.pipeline import track_clip
    from avatar.io import VideoWriter

    gt = ground_truth(anny_head)
    frames = render_clip(anny_head, gt)
    folder = tmp_path_factory.mktemp("synthetic")
    video = folder / "clip.mp4"
    with VideoWriter(video, fps=25.0, crf=12) as w:
        for f in frames:
            w.write(f)
    tracking, summary = track_clip(video, folder / "out", head=anny_head, threads=1, overlay=True, progress=False)
    return gt, tracking, summary, folder / "out", frames


def test_synthetic_clip_ground_truth(anny_head, synthetic_run) -> None:
    gt, tr, summary, out, _ = synthetic_run
    assert tr.tracked.all(), f"FaceMesh lost the rendered face on frames {np.nonzero(~tr.tracked)[0]}"
    with torch.no_grad():
        v_fit = anny_head(**tr.head_params()).vertices.double().numpy()
        v_gt = anny_head(**gt).vertices.double().numpy()
    region = torch.unique(anny_head.faces[anny_head.landmark_faces[:468]]).numpy()  # the face's skin
    err = np.array([np.linalg.norm(similarity_align(f[region], g[region]) - g[region], axis=1).mean()
                    for f, g in zip(v_fit, v_gt)]) * 1000.0
    # Expression: every channel the tracker solves (eyeLook*/tongueOut are held at 0 by design).
    names = list(tr.expression_names)
    solved = [i for i, n in enumerate(names) if not n.startswith("eyeLook") and n != "tongueOut"]
    e_fit, e_gt = tr.expression[:, solved], gt["expression"].numpy()[:, solved]
    mae_all = np.abs(e_fit - e_gt).mean()
    driven = [names.index(n) for n in DRIVEN]
    mae_driven = np.abs(tr.expression[:, driven] - gt["expression"].numpy()[:, driven]).mean(0)
    rot = rotation_error_deg(tr.global_orient, gt["global_orient"].numpy())
    gaze = np.degrees(np.abs(tr.eyes - gt["eyes"].numpy())[..., :2]).mean()
    focal = float(tr.K[0, 0, 0])
    print(f"\nsynthetic clip ({N} frames {W}x{H}, true focal {FOCAL:.0f} px, estimated {focal:.0f} px):")
    print(f"  face vertex error after similarity alignment: mean {err.mean():.2f} mm, max frame {err.max():.2f} mm")
    print(f"  expression MAE: all solved channels {mae_all:.3f}; driven: "
          + ", ".join(f"{n} {m:.3f}" for n, m in zip(DRIVEN, mae_driven)))
    print(f"  rotation error: mean {rot.mean():.2f} deg, max {rot.max():.2f} deg")
    print(f"  gaze (eye pitch/yaw) error: mean {gaze:.2f} deg")
    print(f"  reprojection median {summary['reprojection_pct_iod_median']:.2f}% IOD")
    # Measured (this clip): 2.52 / 2.77 mm, MAE 0.085 (driven max 0.29, mouthSmileRight),
    # rotation 3.7 / 6.6 deg, gaze 4.2 deg (before the aperture weights and the 10x weaker expression
    # prior: 2.44 / 2.71 mm, MAE 0.068). FaceMesh on renders, not the solver, sets these: with
    # exact landmarks the solver recovers the clip (tests/test_fitting.py).
    assert err.mean() < 3.0 and err.max() < 4.0
    assert mae_all < 0.1 and mae_driven.max() < 0.45
    assert rot.mean() < 5.0 and rot.max() < 8.0
    assert gaze < 7.0
    assert (out / "tracking.npz").is_file() and (out / "tracking.json").is_file() and (out / "overlay.mp4").is_file()


def test_frames_without_a_face_are_flagged_and_interpolated(anny_head, synthetic_run, tmp_path) -> None:
    """Blank frames inside the clip: not tracked, interpolated (short gap), finite parameters,
    and the run goes on."""
    from avatar.fitting.pipeline import track_clip
    from avatar.io import VideoWriter

    _, full, _, _, frames = synthetic_run
    video = tmp_path / "gap.mp4"
    blank = {6, 7}
    with VideoWriter(video, fps=25.0, crf=12) as w:
        for i, f in enumerate(frames):
            w.write(np.full_like(f, 255) if i in blank else f)
    tr, s = track_clip(video, tmp_path / "out", head=anny_head, threads=1, overlay=False, progress=False)
    assert not tr.tracked[list(blank)].any() and tr.tracked.sum() == N - len(blank)
    assert tr.interpolated[list(blank)].all() and s["frames_interpolated"] == len(blank)
    assert np.isnan(tr.landmarks[list(blank)]).all()
    for k in ("expression", "global_orient", "transl", "eyes"):
        assert np.isfinite(getattr(tr, k)).all()
    # The interpolated pose lies between its neighbours' (linear interpolation).
    mid = tr.global_orient[6]
    assert np.allclose(mid, tr.global_orient[5] + (tr.global_orient[8] - tr.global_orient[5]) / 3, atol=1e-5)
