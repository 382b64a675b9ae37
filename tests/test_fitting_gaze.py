"""Gaze through saccades and blinks (issue #6 follow-up: on liveportrait_d10 the tracked gaze sat at
8 deg while the iris was at the eye corner, ~23 deg, so the avatar looked ahead; the quadratic
smoothness term dragged every saccade, and FaceMesh's guessed iris on closed eyes made blinks jump).

Synthetic video: the model's own projected landmarks with seeded pixel noise, identity and focal
given, so the only question is how the per-frame solver and its temporal terms treat gaze."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar.fitting.energy import IRIS, LIDS, iris_visibility, project_planes
from avatar.fitting.landmark_model import LandmarkModel
from avatar.fitting.solver import FitConfig, fit_landmarks

N, SIZE, FOCAL = 40, 512, 900.0
JUMP = 20  # first frame after the saccade
YAW0, YAW1 = 0.0, 0.35  # radians: a 20 deg saccade


@pytest.fixture(scope="module")
def lmodel(anny_head) -> LandmarkModel:
    return LandmarkModel(anny_head)


def _video(head, eyes: torch.Tensor, blink: torch.Tensor | None = None, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Ground truth and noisy detections ``[N, 478, 3]`` of a slowly turning head with gaze ``eyes``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, N)
    rot = torch.stack([0.1 * torch.sin(2 * math.pi * t), 0.2 * torch.sin(2 * math.pi * 0.5 * t), 0.0 * t], 1)
    transl = torch.stack([0.01 * t, -0.12 + 0.0 * t, -0.7 + 0.02 * t], 1)
    expr = torch.zeros(N, head.num_expressions)
    if blink is not None:
        for name in ("eyeBlinkLeft", "eyeBlinkRight"):
            expr[:, head.expression_names.index(name)] = blink
    shape = torch.zeros(1, head.num_shape)
    gt = dict(shape=shape, expression=expr, global_orient=rot, transl=transl, eyes=eyes)
    with torch.no_grad():
        pts = head(**gt).landmarks.transpose(1, 2)
    u, v, d = project_planes(pts, torch.tensor(FOCAL), SIZE / 2, SIZE / 2)
    z = (d - d.mean(1, keepdim=True)) * FOCAL / d.mean(1, keepdim=True)
    det = torch.stack([u, v, z], -1)
    det[..., :2] += 0.3 * torch.randn(det.shape[:-1] + (2,), generator=g)  # FaceMesh-like jitter (px)
    return gt, det.numpy()


def _fit(head, lmodel, det, gt, **cfg) -> np.ndarray:
    res = fit_landmarks(head, det, (SIZE, SIZE), focal=FOCAL, shape=gt["shape"][0].numpy(), landmark_model=lmodel,
                        temporal=True, config=FitConfig(**cfg))
    return res.eyes


def _saccade() -> torch.Tensor:
    eyes = torch.zeros(N, 2, 3)
    eyes[:, :, 1] = YAW0
    eyes[JUMP:, :, 1] = YAW1
    return eyes


@pytest.mark.parametrize("robust", [True, False])
def test_saccade_is_followed_at_once(anny_head, lmodel, robust: bool) -> None:
    """The fitted gaze is at the new fixation from the first frame after a 20 deg jump, and still
    on the fixations (no jitter added). The quadratic term of old (scale 0, no warm start) lags
    by degrees for frames: that is the failure this test is there to catch."""
    eyes = _saccade()
    gt, det = _video(anny_head, eyes)
    fit = _fit(anny_head, lmodel, det, gt, smooth_eyes_scale=0.02 if robust else 0.0)
    err = np.degrees(np.abs(fit[..., 1] - eyes[..., 1].numpy()))  # [N, 2] yaw error per eye
    after = err[JUMP : JUMP + 3].max()
    print(f"\nrobust={robust}: yaw error in the 3 frames after the saccade {after:.2f} deg, "
          f"on the fixations (median) {np.median(err):.2f} deg")
    if robust:
        assert after < 2.0  # measured 1.3 (0.3 px detection noise alone gives ~0.4 on fixations)
        assert np.median(err) < 0.6
    else:
        assert after > 3.0  # measured 4.7


def test_blink_keeps_the_gaze(anny_head, lmodel) -> None:
    """On closed eyes FaceMesh still places an iris, anywhere: the fitted gaze holds its value
    through the blink instead of following it; without the openness weight it jumps."""
    eyes = torch.zeros(N, 2, 3)
    eyes[:, :, 1] = 0.15
    blink = torch.zeros(N)
    blink[18:22] = 1.0
    gt, det = _video(anny_head, eyes, blink)
    for top, bottom in LIDS:  # FaceMesh draws a closed eye's lids together
        det[18:22, bottom, :2] = det[18:22, top, :2] + 0.5
    vis = iris_visibility(torch.as_tensor(det))
    assert (vis[18:22] < 0.01).all() and (vis[:15] > 0.99).all(), "the synthetic blink must close the lids"
    det[18:22, IRIS, 0] += 25.0  # the guessed iris: 25 px to the side
    weighted = np.degrees(np.abs(_fit(anny_head, lmodel, det, gt)[..., 1] - 0.15))
    unweighted = np.degrees(np.abs(_fit(anny_head, lmodel, det, gt, iris_closed=0.0, iris_open=1e-6)[..., 1] - 0.15))
    print(f"\nyaw error during the blink: weighted {weighted[18:22].max():.2f} deg, unweighted {unweighted[18:22].max():.2f} deg")
    assert weighted[18:22].max() < 2.5  # measured 1.5
    assert unweighted[18:22].max() > 5.0  # measured 54


def test_iris_visibility() -> None:
    """0 at closed lids, 1 at open ones, the smoothstep midpoint halfway; per eye."""
    lm = torch.zeros(3, 478, 2)
    lm[:, 33, 0], lm[:, 263, 0] = 0.0, 100.0  # inter-ocular distance 100 px
    (r_top, r_bot), (l_top, l_bot) = LIDS
    for i, gap in enumerate([1.0, 3.75, 9.0]):  # px = % IOD
        lm[i, r_bot, 1] = gap
        lm[i, l_bot, 1] = 9.0
    vis = iris_visibility(lm, closed=0.025, open_=0.05)
    assert torch.allclose(vis[:, 0], torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)
    assert torch.allclose(vis[:, 1], torch.ones(3))


def test_iris_report_counts_open_eyes_only() -> None:
    from avatar.fitting.apertures import IRIS_CENTRES, iris_report

    det = np.zeros((3, 478, 2))
    det[:, 33, 0], det[:, 263, 0] = 0.0, 100.0
    for top, bottom in LIDS:
        det[:, bottom, 1] = 10.0  # 10 % IOD open
    det[2, LIDS[0][1], 1] = 1.0  # frame 2: right eye closed
    fit = det.copy()
    fit[0, IRIS_CENTRES, 0] += 2.0  # 2 % IOD off
    fit[2, IRIS_CENTRES, 0] += 50.0  # ignored: an eye is closed
    r = iris_report(det, fit)
    assert r["frames"] == 2
    assert r["max_pct_iod"] == pytest.approx(2.0) and r["mean_pct_iod"] == pytest.approx(1.0)
