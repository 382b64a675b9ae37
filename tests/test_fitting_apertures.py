"""Eye and mouth apertures: the fitted head closes its eyes and shapes its mouth where the landmarks do
(issue: blinks were tracked at a third of their closure, so avatars rendered open eyes on blinks).

The synthetic test feeds the solver the model's own landmarks, except for the skin above the upper
lids, which stays where it is with the eyes open: that is what FaceMesh does on real faces (its 2nd
ring above the lid moves by 0..5 % IOD when the eye closes; AnnyHead's embedded points move with the
lid by ~9 %), and what made the solver stop blinks short. A render through FaceMesh cannot test this:
FaceMesh does not see AnnyHead's untextured lids close (it reports ~10 % IOD apertures on renders
whose true aperture is ~2 %)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.fitting.apertures import APERTURES, aperture_report, apertures, format_report
from avatar.fitting.energy import project_planes
from avatar.fitting.solver import fit_landmarks
from test_fitting import _project  # FaceMesh-like detections (x, y px, relative z) of the model's landmarks

#: MediaPipe's 2nd and 3rd rings above each upper lid (crease and socket), listed here rather than
#: imported so the test describes FaceMesh, not the solver's weighting of these points.
LID_SKIN = [247, 30, 29, 27, 28, 56, 190, 113, 225, 224, 223, 222, 221, 189,
            467, 260, 259, 257, 258, 286, 414, 342, 445, 444, 443, 442, 441, 413]
BLINKS = ("eyeBlinkLeft", "eyeBlinkRight")


def test_apertures_helper() -> None:
    lm = np.zeros((2, 478, 2))
    lm[:, 33], lm[:, 263] = (0.0, 0.0), (100.0, 0.0)  # IOD 100 px
    lm[:, 159], lm[:, 145] = (20.0, 0.0), (20.0, 10.0)
    lm[1, 145] = (20.0, 2.0)
    a = apertures(lm)
    assert set(a) == set(APERTURES) and np.allclose(a["eye_right"], [10.0, 2.0])
    fit = lm.copy()
    fit[:, 145] = (20.0, 6.0)
    fit[:, 263] = (200.0, 0.0)  # a wrong fitted IOD does not scale the fitted aperture
    r = aperture_report(lm, fit)["eye_right"]
    assert r["mae_pct_iod"] == pytest.approx(4.0) and r["frames"] == 2
    assert "eye_right MAE 4.00%" in format_report(aperture_report(lm, fit))


def _blink_clip(head, n: int) -> dict[str, torch.Tensor]:
    t = torch.linspace(0, 1, n)
    expr = torch.zeros(n, head.num_expressions)
    blink = torch.zeros(n)
    blink[[3, 4, 9, 10, 15]] = 0.9  # blinks last 2 frames; one is a single frame
    blink[[2, 5, 8, 11]] = 0.4
    for name in BLINKS:
        expr[:, head.expression_names.index(name)] = blink
    expr[:, head.expression_names.index("jawOpen")] = 0.5 * (0.5 - 0.5 * torch.cos(2 * math.pi * 1.5 * t))
    expr[:, head.expression_names.index("mouthFunnel")] = 0.5 * (0.5 - 0.5 * torch.cos(2 * math.pi * t))
    rot = torch.stack([0.15 * torch.sin(2 * math.pi * t), 0.3 * torch.sin(2 * math.pi * 0.7 * t), torch.zeros(n)], 1)
    transl = torch.stack([0.01 * torch.sin(6 * t), -0.12 + 0.0 * t, -0.7 + 0.03 * torch.sin(4 * t)], 1)
    return dict(expression=expr, global_orient=rot, transl=transl)


def test_blinks_reach_their_closure(anny_head) -> None:
    """Strong blinks (0.9) with the upper-lid skin landmarks left open, plus detector-like noise:
    the fitted blinks reach near 0.9 and the fitted eye/mouth apertures follow the landmarks.
    Measured: blinks 0.82-0.85 on the 0.9 frames (0.68 on one with the blink channels smoothed like
    the others, FitConfig.blink_smooth = 1); before the first fix (every landmark weight 1,
    expression prior 1e-4, smoothing 1e-3) 0.16-0.22, eye apertures MAE 2.8 % IOD."""
    n, size, focal = 18, 512, 900.0
    gt = _blink_clip(anny_head, n)
    det = _project(anny_head, gt, focal, size)
    open_eyes = dict(gt, expression=gt["expression"].clone())
    for name in BLINKS:
        open_eyes["expression"][:, anny_head.expression_names.index(name)] = 0.0
    det[:, LID_SKIN] = _project(anny_head, open_eyes, focal, size)[:, LID_SKIN]
    iod = np.linalg.norm(det[:, 33, :2] - det[:, 263, :2], axis=1)
    det[..., :2] += np.random.default_rng(0).normal(size=det[..., :2].shape) * 0.005 * iod[:, None, None]
    res = fit_landmarks(anny_head, det, (size, size), focal=focal)
    names = anny_head.expression_names
    blink_fit = res.expression[:, [names.index(b) for b in BLINKS]]
    blink_gt = gt["expression"][:, [names.index(b) for b in BLINKS]].numpy()
    strong = blink_gt[:, 0] > 0.8
    fit2d = det.copy()
    with torch.no_grad():
        out = anny_head(shape=torch.as_tensor(res.shape)[None], expression=torch.as_tensor(res.expression),
                        eyes=torch.as_tensor(res.eyes), global_orient=torch.as_tensor(res.global_orient),
                        transl=torch.as_tensor(res.transl))
    u, v, _ = project_planes(out.landmarks.transpose(1, 2), torch.tensor(res.focal), size / 2, size / 2)
    fit2d[..., 0], fit2d[..., 1] = u.numpy(), v.numpy()
    rep = aperture_report(_project(anny_head, gt, focal, size), fit2d)
    jaw_err = np.abs(res.expression[:, names.index("jawOpen")] - gt["expression"][:, names.index("jawOpen")].numpy())
    print(f"\nblinks (true 0.9): fitted {np.round(blink_fit[strong].min(1), 2)}; "
          f"blink MAE {np.abs(blink_fit - blink_gt).mean():.3f}; jawOpen MAE {jaw_err.mean():.3f}\n  {format_report(rep)}")
    assert blink_fit[strong].min() >= 0.78, "blinks stop short of their closure"
    assert np.abs(blink_fit - blink_gt).mean() < 0.1
    assert rep["eye_right"]["mae_pct_iod"] < 1.0 and rep["eye_left"]["mae_pct_iod"] < 1.0
    assert rep["mouth_open"]["mae_pct_iod"] < 1.5 and rep["mouth_width"]["mae_pct_iod"] < 1.5
    assert jaw_err.mean() < 0.08


def test_real_blink_is_tracked(shared_data, anny_head) -> None:
    """hdtf_katiehill: the lids nearly meet around frame 170 (FaceMesh: 5-6 % IOD apertures, ~11 %
    open). Before the fix the fitted eyeBlink there was 0.21/0.26 and the fitted eye aperture never
    went below 8.4 % IOD (MAE 2.3/1.9 % IOD on these 180 frames)."""
    from avatar.fitting.apertures import tracked_landmarks
    from avatar.fitting.pipeline import track_clip

    path = Path(shared_data) / "video" / "hdtf_katiehill.mp4"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    tr, s = track_clip(path, None, head=anny_head, limit=180, threads=1, overlay=False, progress=False)
    det, fit = tracked_landmarks(tr, anny_head)
    rep = aperture_report(det, fit)
    names = list(tr.expression_names)
    blink = tr.expression[165:176][:, [names.index(b) for b in BLINKS]].max(0)
    print(f"\nkatiehill 180 frames: blink max near frame 170 {np.round(blink, 2)}; median "
          f"{s['reprojection_pct_iod_median']:.2f}% IOD\n  {format_report(rep)}")
    assert blink.min() >= 0.45
    assert rep["eye_right"]["mae_pct_iod"] < 1.3 and rep["eye_left"]["mae_pct_iod"] < 1.3
    assert rep["eye_right"]["corr"] > 0.8
    assert s["reprojection_pct_iod_median"] <= 3.0
