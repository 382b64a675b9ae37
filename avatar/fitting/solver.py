"""The staged, batched landmark solver: identity, expression, eyes, pose and focal length from
478 MediaPipe landmarks per frame.

Energy (residuals in units of each frame's inter-ocular distance, outer eye corners):

    E = mean_frames [ sum_l w_l rho(|pi(x_l) - y_l| / iod) / sum_l w_l ]     2D landmarks, robust rho
        (w_l: lid margins, inner lips and mouth corners x4, the face oval x0.3, the skin above the
        upper lids x0.2 -- see FitConfig.aperture_weight and energy.UPPER_LID_SKIN)
      + w_depth  * mean (z_mp - z_model)^2 (both centred, / iod)              MediaPipe z: weak depth cue
      + w_rigid * |rigid part of the expression's displacement|^2 / IOD_m^2   no rigid-like expression
      + w_expr_l1 * sum e + w_expr_l2 * sum e^2                               sparse, small expression
      + w_eyes * |eyes|^2 + w_vergence * |eye_L - eye_R|^2                    gaze prior, conjugate eyes
      + w_shape * |shape|^2 (once per clip)                                   identity near the real-size template
      + w_focal * (log f - log f0)^2                                          focal prior
      + temporal: w_smooth_* * |theta_t - theta_t-1|^2 / gap                  (videos only; for the
        gaze a Charbonnier of the change instead of its square, so saccades are not smeared)

Stages (all frames at once, vectorised; no per-frame Python loop except OpenCV's PnP in stage 1):

1. rigid: ``global_orient``, ``transl`` per frame by PnP (OpenCV SQPnP) of the template's STABLE
   points (forehead, nose, eye corners, cheekbones) with a neutral face, the focal at its prior.
   A nod is explained here, by pose.
2. identity: one ``shape`` for the clip (and the focal when not given), jointly with pose,
   expression and gaze of ``identity_frames`` keyframes spread over the clip: ``identity_steps``
   batched Adam steps (:class:`avatar.utils.optim.Adam`, cosine learning rate; expression projected
   onto [0, 1] after each step).
   The identity enters through piecewise-linear tables (``LandmarkModel.identity_tables``).
3. frames: identity and focal fixed; every frame's pose, expression, gaze (and FLAME's jaw) by a
   batched Levenberg-Marquardt (:func:`avatar.utils.optim.levenberg_marquardt`: exact gradient,
   the analytic Gauss-Newton Hessian per frame of :mod:`avatar.fitting.gauss_newton`, active-set
   bounds for [0, 1] expressions), with the temporal terms: :func:`solve_frames`, which the online
   tracker (:mod:`avatar.fitting.online`) runs on one frame at a time.

Each stage is a function with a small typed result (``_Pose``, ``_Identity``, then the frames'
:class:`~avatar.fitting.energy.FrameParams`); the detections, weights, camera and config they all
read travel together as one :class:`~avatar.fitting.energy.Problem`.

Parameterisation: axis-angle ``global_orient``; ``transl = (x, y, -exp(s))`` (log depth, so the
head stays in front of the camera); expression in [0, 1] by projection (AnnyHead; FLAME unbounded
with an L2 prior); gaze = eye pitch and yaw (roll 0); focal as log f.

Metric scale: the identity prior keeps ``shape`` near the template, a real-size head (anny's
default adult, ~0.25 m tall incl. the neck base), so depth, not head size, explains image size.
The focal length is only weakly observable from landmarks: on the clips we measured, the estimate
stays within a few % of its prior (``focal_fov_deg``); pass ``focal=`` when it is known.

Decisions:
- AnnyHead's jaw: the ARKit ``jawOpen``/``jawLeft``/``jawRight``/``jawForward`` blendshapes already
  move the jaw, so the ``jaw`` joint stays 0 (fitting both is ambiguous). FLAME has no jaw
  blendshapes: its ``jaw`` joint is fitted (prior ``w_jaw``).
- Gaze: the eye joints (``eyes``, pitch and yaw per eye; roll fixed at 0) from the iris points. The
  iris landmarks sit on the eyeball, which the eye joints rotate rigidly; the same parameter works
  for FLAME. AnnyHead's ARKit ``eyeLook*`` blendshapes also move the eyeballs, so they are held at 0
  (fitting both is ambiguous); ``tongueOut`` is held at 0 too (no landmark sees the tongue):
  :data:`~avatar.fitting.energy.FROZEN_ANNY`.
  Each eye's iris points are weighted by how open the detected lids are (0 on a blink, where
  FaceMesh guesses an iris), and the LM first solves the gaze without its smoothness term (blinks
  then interpolated) before the robust smoothing: see ``FitConfig.smooth_eyes_scale``.
- ``neck`` stays 0: from the face alone a neck bend is a head rotation plus a translation, so all
  head motion goes to ``global_orient``/``transl``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from avatar.errors import AvatarError
from avatar.fitting.energy import FROZEN_ANNY  # noqa: F401 - re-exported from its former home
from avatar.fitting.energy import IRIS, STABLE, FrameParams, Problem, eyes3, project_planes
from avatar.fitting.gauss_newton import PriorHessian, data_hessian, expression_bounds, gaze_prior_hessian, prior_hessian
from avatar.fitting.landmark_model import LandmarkModel
from avatar.models.base import HeadModel
from avatar.utils.optim import Adam, LMOptions, cosine_schedule, levenberg_marquardt

__all__ = ["FitConfig", "FitResult", "fit_landmarks", "solve_frames"]


@dataclass(frozen=True)
class FitConfig:
    """Knobs of the landmark solver (weights are relative to the 2D term, whose residuals are in
    inter-ocular distances)."""

    identity_steps: int = 120  # Adam steps of the identity stage (stage 2)
    frame_iterations: int = 6  # Levenberg-Marquardt iterations of the frames stage (stage 3)
    hessian_stride: int = 4  # the LM Hessian uses every n-th landmark (+ iris); the gradient uses all
    identity_frames: int = 16  # keyframes used to solve the identity
    focal_fov_deg: float = 40.0  # prior field of view across the longer image side
    w_focal: float = 1e-4  # on (log f - log f0)^2
    robust_sigma: float = 0.05  # IODs: the Charbonnier loss of a landmark is quadratic below, linear above
    contour_weight: float = 0.3  # the face oval (its points slide along the silhouette)
    iris_weight: float = 1.0
    # An eye's iris points count fully when its lids are iris_open apart (IODs), not at all below
    # iris_closed (a blink: FaceMesh's iris is a guess there), so gaze carries through blinks.
    iris_closed: float = 0.025
    iris_open: float = 0.05
    aperture_weight: float = 4.0  # lid margins, inner lips, mouth corners (energy.APERTURE_POINTS)
    upper_lid_skin_weight: float = 0.2  # the skin above the upper lids (energy.UPPER_LID_SKIN)
    w_depth: float = 0.02
    w_rigid: float = 0.1
    w_expr_l1: float = 1e-5
    w_expr_l2: float = 1e-5
    w_eyes: float = 1e-5
    w_vergence: float = 1e-4
    w_jaw: float = 1e-3
    w_shape: float = 2e-4
    w_smooth_rot: float = 0.05
    w_smooth_transl: float = 0.05  # on translation / model IOD
    w_smooth_expr: float = 3e-4
    # Factor on w_smooth_expr for eyeBlinkLeft/Right: a blink shuts and reopens within 2-3 frames,
    # and any smoothing of it clips its peak.
    blink_smooth: float = 0.0
    w_smooth_eyes: float = 1e-3
    # The gaze's temporal term is Charbonnier in the per-frame change of each eye's (pitch, yaw):
    # quadratic below this scale (FaceMesh's iris jitter is smoothed), linear above it (a saccade
    # passes instead of being dragged over many frames). 0 = quadratic.
    smooth_eyes_scale: float = 0.02  # radians
    lr_rot: float = 0.02
    lr_transl: float = 0.004  # metres (x, y); depth is log-parameterised with lr_depth
    lr_depth: float = 0.02
    lr_expr: float = 0.04
    lr_eyes: float = 0.04
    lr_shape: float = 0.03
    lr_focal: float = 0.02
    threads: int | None = 1  # torch CPU threads while solving (None: leave as is)


@dataclass(frozen=True)
class FitResult:
    """Per solved frame (``M`` frames with landmarks) and per clip."""

    expression: np.ndarray  # [M, E]
    jaw: np.ndarray  # [M, 3]
    neck: np.ndarray  # [M, 3]
    eyes: np.ndarray  # [M, 2, 3]
    global_orient: np.ndarray  # [M, 3]
    transl: np.ndarray  # [M, 3]
    shape: np.ndarray  # [S]
    focal: float
    residual_px: np.ndarray  # [M, 478] reprojection error per landmark (pixels)
    iod_px: np.ndarray  # [M] detected inter-ocular distance (outer eye corners)
    timings: dict = field(default_factory=dict)  # seconds per stage


@dataclass(frozen=True)
class _Pose:
    """Stage 1's result: every frame's rigid pose (neutral face)."""

    rot: Tensor  # [M, 3] axis-angle
    xy: Tensor  # [M, 2] metres
    logd: Tensor  # [M] log depth


@dataclass(frozen=True)
class _Identity:
    """Stage 2's result: the clip's identity and focal length, and the keyframes solved with them."""

    shape: Tensor  # [1, S]
    focal: Tensor  # [] pixels
    tables: dict  # LandmarkModel.identity(shape), detached
    keyframes: Tensor  # [K] frame rows
    frames: FrameParams  # of the keyframes


#: Stage 3's damping: lambda from 1e-3, /3 (at least 1e-7) on an accepted step, x10 on a rejected one.
# Frames whose per-frame terms, gradient and Hessian are evaluated together: the autograd graph
# costs ~0.3 MB a frame, so a 5-minute clip solved at once would hold gigabytes.
FRAME_CHUNK = 256
_FRAMES_LM = LMOptions(damping=1e-3, decrease=3.0, increase=10.0, min_damping=1e-7, jitter=1e-10)


def fit_landmarks(
    head: HeadModel,
    landmarks: np.ndarray | Tensor,
    image_size: tuple[int, int],
    *,
    frame_index: np.ndarray | None = None,
    temporal: bool = True,
    focal: float | None = None,
    shape: np.ndarray | None = None,
    config: FitConfig = FitConfig(),
    landmark_model: LandmarkModel | None = None,
) -> FitResult:
    """Fit ``head`` to detected landmarks.

    Args:
        head: the head model (with a landmark embedding).
        landmarks: ``[M, 478, 3]`` detections (x, y pixels; z MediaPipe's relative depth), only
            frames where a face was found.
        image_size: ``(W, H)`` pixels.
        frame_index: ``[M]`` source frame numbers (temporal terms are weighted by 1/gap); default
            ``0..M-1``.
        temporal: smoothness between consecutive frames (a video); ``False`` for unrelated photos.
        focal: focal length in pixels when known (then it is not estimated).
        shape: ``[S]`` identity when known (e.g. from another clip of the person): then it is
            kept fixed (stage 2 still refines the focal length when that is free).
        config: weights, steps and learning rates.
        landmark_model: a prebuilt :class:`LandmarkModel` for ``head`` (building one takes ~0.3 s).
    Returns:
        :class:`FitResult` (numpy arrays; ``neck`` is 0, and ``jaw`` is 0 for AnnyHead).
    """
    cfg = config
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(head, landmarks, image_size, frame_index, temporal, focal, shape, cfg, landmark_model)
    finally:
        torch.set_num_threads(old_threads)


def _fit(head, landmarks, image_size, frame_index, temporal, focal, known_shape, cfg, landmark_model) -> FitResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    det = _landmark_tensor(landmarks)
    lm = landmark_model or LandmarkModel(head)
    P = Problem(head, lm, det, image_size, cfg, frame_index, temporal, focal)
    shape = None
    if known_shape is not None:
        shape = torch.as_tensor(np.asarray(known_shape), dtype=head.dtype).reshape(1, head.num_shape).clone()
    timings["setup"] = time.perf_counter() - t0

    pose = _timed(timings, "rigid", _rigid_stage, P, shape)
    identity = _timed(timings, "identity", _identity_stage, P, pose, shape)
    frames = _timed(timings, "frames", _frames_stage, P, pose, identity)
    return _result(P, identity, frames, timings)


def _timed(timings: dict[str, float], name: str, stage: Callable, *args):
    """``stage(*args)``, its wall time stored as ``timings[name]``."""
    t0 = time.perf_counter()
    out = stage(*args)
    timings[name] = time.perf_counter() - t0
    return out


def _landmark_tensor(landmarks: np.ndarray | Tensor) -> Tensor:
    """The detections as a float32 ``[M, 478, 3]`` tensor; bad input raises."""
    det = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
    if det.ndim != 3 or det.shape[1:] != (478, 3):
        raise ValueError(f"landmarks must be [M, 478, 3], got {tuple(det.shape)}")
    if det.shape[0] == 0:
        raise AvatarError("no frame with a face to fit")
    if not torch.isfinite(det).all():
        raise ValueError("landmarks hold NaN/inf: pass only the frames where a face was found")
    return det


def _rigid_stage(P: Problem, shape: Tensor | None) -> _Pose:
    """Stage 1: every frame's rigid pose from the stable points with a neutral face, by PnP
    (OpenCV's SQPnP, the focal at its prior); where PnP fails, the pose that puts the stable
    points' centroid under the detected one at the depth of the inter-ocular distance."""
    if shape is None:
        shape = torch.zeros(1, P.head.num_shape, dtype=P.dtype)
    with torch.no_grad():
        rest_stable = P.lm.identity(shape)["rest"][:, P.stable]  # [3, S]
        c_model = rest_stable.mean(1)  # centroid of the stable points (model frame)
        c_img = P.det[:, STABLE, :2].to(P.dtype).mean(1)  # [M, 2]
        d0 = P.f0 * P.iod_m / P.iod  # [M] depth from the inter-ocular distance
        xc = (c_img[:, 0] - P.cx) * d0 / P.f0
        yc = -(c_img[:, 1] - P.cy) * d0 / P.f0
        # The stable centroid sits at (xc, yc, -d0): solve the root translation for that.
        xy = torch.stack([xc - c_model[0], yc - c_model[1]], 1)
        logd = torch.log(d0 + c_model[2])
    rot = torch.zeros(P.num_frames, 3, dtype=P.dtype)
    pnp = _pnp(rest_stable.T.numpy(), P.det[:, STABLE, :2].numpy(), P.f0, P.cx, P.cy)
    if pnp is not None:
        ok = torch.as_tensor(pnp[2])
        rot[ok] = torch.as_tensor(pnp[0], dtype=P.dtype)[ok]
        xy[ok] = torch.as_tensor(pnp[1][:, :2], dtype=P.dtype)[ok]
        logd[ok] = torch.log(torch.as_tensor(-pnp[1][:, 2], dtype=P.dtype)[ok])
    return _Pose(rot, xy.to(P.dtype), logd.to(P.dtype))


def _pnp(model_pts: np.ndarray, image_pts: np.ndarray, focal: float, cx: float, cy: float):
    """Per-frame rigid pose of ``model_pts [S, 3]`` (model frame) from ``image_pts [M, S, 2]``:
    ``(global_orient [M, 3], transl [M, 3], ok [M])`` in the tracker's world frame, or ``None``
    without OpenCV. The camera maps world -> camera by F = diag(1, -1, -1), so a camera-frame pose
    (R_c, t_c) is G = F R_c, t = F t_c."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency (perception)
        return None
    K = np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float64)
    F = np.diag([1.0, -1.0, -1.0])
    obj = np.ascontiguousarray(model_pts, np.float64)
    M = image_pts.shape[0]
    rots, trans, ok = np.zeros((M, 3)), np.zeros((M, 3)), np.zeros(M, bool)
    for i in range(M):
        good, rvec, tvec = cv2.solvePnP(obj, np.ascontiguousarray(image_pts[i], np.float64), K, None,
                                        flags=cv2.SOLVEPNP_SQPNP)
        if not good or tvec[2, 0] <= 0:
            continue
        Rc, _ = cv2.Rodrigues(rvec)
        aa, _ = cv2.Rodrigues(F @ Rc)
        rots[i], trans[i], ok[i] = aa[:, 0], F @ tvec[:, 0], True
    return rots, trans, ok


def _keyframes(m: int, k: int) -> np.ndarray:
    if m <= k:
        return np.arange(m)
    return np.unique(np.round(np.linspace(0, m - 1, k)).astype(np.int64))


def _identity_stage(P: Problem, pose: _Pose, known_shape: Tensor | None) -> _Identity:
    """Stage 2: the clip's identity (unless known) and focal length (unless known), jointly with
    the pose, expression and gaze of keyframes spread over the clip, by Adam."""
    cfg, dtype, E = P.cfg, P.dtype, P.num_expressions
    kf = torch.as_tensor(_keyframes(P.num_frames, cfg.identity_frames))
    K = len(kf)
    shape = torch.zeros(1, P.head.num_shape, dtype=dtype, requires_grad=True) if known_shape is None else known_shape
    log_f = torch.tensor(math.log(P.f0), dtype=dtype, requires_grad=not P.focal_known)
    log_f0 = math.log(P.f0)
    k = FrameParams(
        rot=pose.rot[kf].clone().requires_grad_(True),
        xy=pose.xy[kf].clone().requires_grad_(True),
        logd=pose.logd[kf].clone().requires_grad_(True),
        expression=torch.full((K, E), 0.05 if P.bounded else 0.0, dtype=dtype, requires_grad=True),
        eyes=torch.zeros(K, 2, 2, dtype=dtype, requires_grad=True),
        jaw=torch.zeros(K, 3, dtype=dtype, requires_grad=True) if P.fit_jaw else None,
    )
    params = {"rot": (k.rot, cfg.lr_rot), "xy": (k.xy, cfg.lr_transl), "logd": (k.logd, cfg.lr_depth),
              "expr": (k.expression, cfg.lr_expr), "eyes": (k.eyes, cfg.lr_eyes)}  # fmt: skip
    if known_shape is None:
        params["shape"] = (shape, cfg.lr_shape)
    if P.fit_jaw:
        params["jaw"] = (k.jaw, cfg.lr_eyes)
    if not P.focal_known:
        params["focal"] = (log_f, cfg.lr_focal)
    opt = Adam({n: t for n, (t, _) in params.items()}, {n: lr for n, (_, lr) in params.items()}, betas=(0.9, 0.99),
               eps=1e-8, schedule=cosine_schedule(cfg.identity_steps))  # fmt: skip
    for _ in range(cfg.identity_steps):
        ident = P.lm.identity_fast(shape)
        e = P.expression(k.expression)
        planes = P.lm.planes(ident, e, k.rot, k.transl(), eyes=eyes3(k.eyes), jaw=k.jaw)
        loss = (P.data(planes, log_f.exp(), kf) + P.regularisers(e, k.eyes, k.jaw)).mean()
        loss = loss + cfg.w_shape * (shape * shape).sum() + cfg.w_focal * (log_f - log_f0) ** 2
        loss.backward()
        opt.step()
        if P.bounded:
            with torch.no_grad():
                k.expression.clamp_(0.0, 1.0)
    with torch.no_grad():
        tables = P.lm.identity(shape)
    tables = {n: (v.detach() if torch.is_tensor(v) else [x.detach() for x in v]) for n, v in tables.items()}
    frames = FrameParams(*(None if t is None else t.detach() for t in (k.rot, k.xy, k.logd, k.expression, k.eyes, k.jaw)))
    return _Identity(shape.detach(), log_f.detach().exp(), tables, kf, frames)


def _frames_stage(P: Problem, pose: _Pose, identity: _Identity) -> FrameParams:
    """Stage 3: every frame's pose, expression, gaze (and jaw), identity and focal fixed, by
    batched Levenberg-Marquardt with the temporal terms."""
    E, fit_jaw, tables, fk = P.num_expressions, P.fit_jaw, identity.tables, identity.focal
    start = _frames_start(P, pose, identity)
    theta = start.flat()
    n, p = theta.shape
    Hp = prior_hessian(P, start.logd, p)

    def solve(theta: Tensor, prior: Callable[[Tensor], PriorHessian], gaze: bool) -> Tensor:
        return solve_frames(P, tables, fk, theta, prior, gaze, P.cfg.frame_iterations)

    if P.temporal and n > 1 and P.cfg.smooth_eyes_scale > 0:
        # Warm start: the gaze of every frame from its own iris points first. From stage 2's start
        # (each frame takes its nearest keyframe's gaze) the smoothness term, strongest where
        # neighbours agree, holds whole fixations back, and the block-diagonal step moves them
        # slowly: 6 iterations left d10's iris points 5 % IOD off at p95, 20 still 2 %.
        theta = solve(theta, lambda th: Hp, gaze=False)
        if P.iris_vis is not None:
            eye_cols = torch.arange(6 + E, 10 + E)
            theta[:, eye_cols] = _gaze_through_blinks(theta[:, eye_cols], P.iris_vis.amin(1))
        theta = solve(theta, lambda th: gaze_prior_hessian(P, Hp, th), gaze=True)
    else:
        theta = solve(theta, lambda th: Hp, gaze=True)
    frames = FrameParams.unflat(theta, E, fit_jaw)
    if P.bounded:
        frames.expression.clamp_(0.0, 1.0)
    return frames


def solve_frames(P: Problem, tables: dict, focal: Tensor, theta: Tensor, prior: Callable[[Tensor], PriorHessian], gaze: bool,
                 iterations: int, held: Tensor | None = None, hessian_every: int = 1) -> Tensor:  # fmt: skip
    """Levenberg-Marquardt over the frames ``theta [n, p]`` (:meth:`FrameParams.flat` rows) of
    ``P``, identity (``tables``) and ``focal`` fixed: exact gradient of the whole objective (the
    temporal terms included), Gauss-Newton Hessian per frame plus ``prior(rows) ->`` :class:`PriorHessian`,
    [0, 1] expressions by an active set. Stage 3 solves every frame of a clip with it; the online
    tracker one frame, with the frames before it as ``held [k, p]``: ``P``'s first ``k`` rows, which
    enter the temporal terms but do not move. ``hessian_every``: the landmark term's Hessian is
    recomputed every that many iterations and reused in between (the online tracker's warm start
    moves little). Returns the solved ``[n, p]``."""
    E, fit_jaw = P.num_expressions, P.fit_jaw
    n, p = theta.shape
    k = 0 if held is None else held.shape[0]

    def rows(th: Tensor) -> Tensor:  # every row of P: the held ones, then th
        return th if held is None else torch.cat([held, th])

    def of_p(sl: slice) -> slice:  # moving rows sl as rows of P (after the held ones)
        return slice(k + sl.start, k + sl.stop)

    def frame_terms(th: Tensor, sl: slice) -> Tensor:  # [len(sl)]: the data term and priors of rows sl of th
        f = FrameParams.unflat(th, E, fit_jaw)
        ex = P.expression(f.expression)
        planes = P.lm.planes(tables, ex, f.rot, f.transl(), eyes=eyes3(f.eyes), jaw=f.jaw)
        return P.rows(of_p(sl)).data(planes, focal, slice(None)) + P.regularisers(ex, f.eyes, f.jaw)

    def per_frame(th: Tensor) -> Tensor:  # [n]
        return torch.cat([frame_terms(th[sl], sl) for sl in _chunks(n)])

    cache: dict = {"calls": 0}  # the landmark term's last Hessian, reused between renewals

    def model(x: Tensor, at_trial: Tensor) -> tuple[Tensor, Callable[[slice], Tensor]]:
        def temporal(th: Tensor) -> Tensor:
            return P.temporal_terms(FrameParams.unflat(rows(th), E, fit_jaw), gaze) * (k + n)

        th = x.clone().requires_grad_(True)
        if n <= FRAME_CHUNK:  # one graph, one backward pass (the online tracker's every frame)
            (g,) = torch.autograd.grad(frame_terms(th, slice(0, n)).sum() + temporal(th), th)
        else:
            (g,) = torch.autograd.grad(temporal(th), th)
            for sl in _chunks(n):  # the per-frame terms are independent: each chunk's graph is freed in turn
                tc = x[sl].clone().requires_grad_(True)
                (gc,) = torch.autograd.grad(frame_terms(tc, sl).sum(), tc)
                g[sl] += gc
        with torch.no_grad():
            priors = prior(rows(x))
        renew = cache["calls"] % hessian_every == 0
        cache["calls"] += 1

        def hessian(sl: slice) -> Tensor:  # [m, p, p] of the moving rows sl, built when the step needs them
            if renew or sl.start not in cache:
                H = torch.cat([data_hessian(P.rows(of_p(c)), tables, focal, x[c]) for c in _chunks(sl.stop, sl.start)])
                if hessian_every > 1:
                    cache[sl.start] = H
            else:
                H = cache[sl.start]
            return H + priors.rows(of_p(sl))

        return g, hessian

    active = torch.ones(p, dtype=torch.bool)
    active[6 : 6 + E] = P.expr_mask > 0
    lower, upper = expression_bounds(P, p, theta.dtype)
    return levenberg_marquardt(theta, per_frame, model, iterations, _FRAMES_LM, active=active, lower=lower,
                               upper=upper)  # fmt: skip


def _frames_start(P: Problem, pose: _Pose, identity: _Identity) -> FrameParams:
    """Stage 3's start: stage 1's pose shifted by how the nearest keyframe moved in stage 2, and
    that keyframe's expression and gaze."""
    kf, k = identity.keyframes, identity.frames
    near = torch.as_tensor(np.abs(np.arange(P.num_frames)[:, None] - kf.numpy()[None, :]).argmin(1))
    return FrameParams(
        rot=pose.rot + (k.rot - pose.rot[kf])[near],
        xy=pose.xy + (k.xy - pose.xy[kf])[near],
        logd=pose.logd + (k.logd - pose.logd[kf])[near],
        expression=k.expression[near].clone(),
        eyes=k.eyes[near].clone(),
        jaw=k.jaw[near].clone() if k.jaw is not None else None,
    )


def _gaze_through_blinks(gaze: Tensor, visible: Tensor) -> Tensor:
    """``gaze [n, 4]`` with the frames whose iris is hidden (``visible [n] < 0.5``, a blink) set by
    linear interpolation between the nearest frames that see it (held at the ends). Without iris
    points only the prior acts there, which pulls the gaze to 0; and a step that the smoothness term
    alone asks for is refused by the per-frame acceptance test of the LM, so we start them here."""
    seen = (visible >= 0.5).numpy()
    if seen.all() or not seen.any():
        return gaze
    rows = np.arange(gaze.shape[0])
    out = gaze.clone()
    for c in range(gaze.shape[1]):
        out[:, c] = torch.as_tensor(np.interp(rows, rows[seen], gaze[seen, c].numpy()), dtype=gaze.dtype)
    return out


def _chunks(stop: int, start: int = 0) -> list[slice]:
    """``start..stop`` in slices of ``FRAME_CHUNK`` frames: per-frame work on a long clip in bounded memory."""
    return [slice(a, min(a + FRAME_CHUNK, stop)) for a in range(start, stop, FRAME_CHUNK)]


def _residual_px(P: Problem, identity: _Identity, e: Tensor, rot: Tensor, tr: Tensor, eyes: Tensor,
                 jaw: Tensor | None) -> Tensor:  # fmt: skip
    """``[n, 478]`` each landmark's reprojection error (pixels) in the frames of ``P``."""
    planes = P.lm.planes(identity.tables, e, rot, tr, eyes=eyes, jaw=jaw)
    u, v, _ = project_planes(planes, identity.focal, P.cx, P.cy)
    return torch.sqrt((u - P.det[..., 0]) ** 2 + (v - P.det[..., 1]) ** 2)


def _result(P: Problem, identity: _Identity, frames: FrameParams, timings: dict[str, float]) -> FitResult:
    """The solved parameters as numpy arrays, with every landmark's reprojection error."""
    M = P.num_frames
    with torch.no_grad():
        e = P.expression(frames.expression)
        tr = frames.transl()
        eyes = eyes3(frames.eyes)
        jaw = frames.jaw if frames.jaw is not None else torch.zeros(M, 3, dtype=P.dtype)
        res = torch.cat([_residual_px(P.rows(sl), identity, e[sl], frames.rot[sl], tr[sl], eyes[sl],
                                      None if frames.jaw is None else frames.jaw[sl])
                         for sl in _chunks(M)])  # fmt: skip

    def out(t: Tensor) -> np.ndarray:
        return t.detach().numpy().astype(np.float32)

    return FitResult(expression=out(e), jaw=out(jaw), neck=np.zeros((M, 3), np.float32), eyes=out(eyes),
                     global_orient=out(frames.rot), transl=out(tr), shape=out(identity.shape[0]),
                     focal=float(identity.focal), residual_px=out(res), iod_px=out(P.iod), timings=timings)  # fmt: skip
