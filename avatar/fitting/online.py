"""Online tracking: one frame at a time, causally, for live driving (webcam, a video played live).

The batch tracker (:mod:`avatar.fitting.solver`) sees the whole clip; this one sees each frame as it
comes and must answer before the next. Same energy (:class:`~avatar.fitting.energy.Problem`), same
step (:func:`~avatar.fitting.solver.solve_frames`: Levenberg-Marquardt with the analytic
Gauss-Newton Hessians), another schedule:

- identity (``shape``) and focal length fixed: from an avatar's tracking
  (:meth:`OnlineTracker.from_tracking`), or fitted once by the batch solver on the first
  ``warmup_seconds`` of frames of a new person (until then the template head stands in);
- per frame: MediaPipe landmarks (:class:`avatar.perception.FaceTracker`, as the batch pipeline
  runs it), then pose, expression, gaze (and FLAME's jaw) by ``iterations`` LM steps warm-started
  from the previous frame, which is held in the temporal terms (a causal smoothness prior, weighted
  by 1/gap like the batch's). A newly found face starts from PnP (the batch's rigid stage);
- causal smoothing of the output: a One-Euro filter (:class:`OneEuroFilter`) on the head pose and
  the gaze; none on expression by default (a blink lasts 2-3 frames: any low-pass clips it);
- face lost: the last parameters are held and the detector runs again on the next frames.

Relative transfer (:class:`Calibration`, :func:`transfer`): a driver's rest face is not zero in
ARKit terms; drive an avatar with ``avatar_neutral + (driver - driver_neutral)``, clamped to [0, 1].

    >>> tracker = OnlineTracker.from_tracking(head, load_tracking("out"))   # doctest: +SKIP
    >>> for frame in frames:                                                 # doctest: +SKIP
    ...     out = tracker.process(frame)          # OnlineFrame: expression, eyes, pose, ...
"""
from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor

from avatar.fitting.energy import FrameParams, Problem, camera_viewmat, eyes3, intrinsics_matrix, prior_focal
from avatar.fitting.gauss_newton import gaze_prior_hessian, prior_hessian
from avatar.fitting.landmark_model import LandmarkModel
from avatar.fitting.solver import FitConfig, _rigid_stage, fit_landmarks, solve_frames
from avatar.fitting.tracking import Tracking
from avatar.models.base import HeadModel

__all__ = ["Calibration", "NeutralCalibrator", "OneEuroConfig", "OneEuroFilter", "OnlineConfig", "OnlineFrame",
           "OnlineTracker", "make_face_tracker", "online_tracking", "transfer"]  # fmt: skip


# --- One-Euro filter ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OneEuroConfig:
    """Knobs of :class:`OneEuroFilter` (units: Hz; ``beta`` per unit of the signal's speed)."""

    min_cutoff: float = 1.0  # cutoff at rest: lower removes more jitter from a still signal
    beta: float = 0.0  # cutoff grows by beta * |speed|: higher lags less when the signal moves
    d_cutoff: float = 1.0  # cutoff of the speed estimate


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass with ``cutoff`` (Hz) over ``dt`` seconds."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The One-Euro filter (G. Casiez, N. Roussel, D. Vogel, "1 Euro Filter: A Simple Speed-based
    Low-pass Filter for Noisy Input in Interactive Systems", CHI 2012): a first-order low-pass
    whose cutoff rises with the signal's (filtered) speed, so a still signal loses its jitter and a
    moving one follows with little lag. Per component of a vector; ``dt`` from the timestamps, so
    dropped frames are handled.

    >>> f = OneEuroFilter(OneEuroConfig(min_cutoff=1.0, beta=10.0))
    >>> f(np.zeros(3), 0.0).tolist(), f(np.ones(3), 0.04).round(2).tolist()
    ([0.0, 0.0, 0.0], [0.93, 0.93, 0.93])
    """

    def __init__(self, config: OneEuroConfig = OneEuroConfig()) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """The filtered value of ``x`` observed at time ``t`` (seconds)."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        if dt <= 0:  # the same instant again: nothing new to smooth over
            return self._x.copy()
        c = self.config
        speed = (x - self._x) / dt
        self._dx = self._dx + _alpha(c.d_cutoff, dt) * (speed - self._dx)
        a = _alpha(c.min_cutoff + c.beta * np.abs(self._dx), dt)
        self._x = self._x + a * (x - self._x)
        self._t = t
        return self._x.copy()


# --- relative transfer -------------------------------------------------------------------------
def transfer(avatar_neutral: np.ndarray, driver: np.ndarray, driver_neutral: np.ndarray,
             bounds: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:  # fmt: skip
    """Expression for an avatar driven relative to the driver's rest face:
    ``avatar_neutral + driver - driver_neutral``, clamped to ``bounds`` (ARKit's [0, 1]; ``None``
    for unbounded coefficients such as FLAME's). Broadcasts over leading frame dimensions."""
    out = np.asarray(avatar_neutral) + np.asarray(driver) - np.asarray(driver_neutral)
    return out if bounds is None else np.clip(out, bounds[0], bounds[1])


@dataclass(frozen=True)
class Calibration:
    """A rest face: the mean expression ``neutral [E]`` of frames where the person looked neutral."""

    neutral: np.ndarray  # [E]

    @staticmethod
    def from_expressions(expressions: np.ndarray) -> "Calibration":
        """The mean of ``expressions [N, E]`` (N >= 1)."""
        e = np.asarray(expressions, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] == 0:
            raise ValueError(f"expressions must be [N >= 1, E], got {list(e.shape)}")
        return Calibration(e.mean(0))


@dataclass
class NeutralCalibrator:
    """Collects a driver's expressions over the first ``seconds`` (from the first one added), then
    holds their :class:`Calibration`. ``seconds = 0`` is ready at once with no calibration."""

    seconds: float
    _rows: list = field(default_factory=list, repr=False)
    _start: float | None = field(default=None, repr=False)
    calibration: Calibration | None = None

    @property
    def ready(self) -> bool:
        return self.seconds <= 0 or self.calibration is not None

    def add(self, expression: np.ndarray, t: float) -> None:
        """One tracked frame's expression at time ``t`` (seconds); ignored once ready."""
        if self.ready:
            return
        self._start = t if self._start is None else self._start
        self._rows.append(np.asarray(expression, dtype=np.float64))
        if t - self._start >= self.seconds:
            self.calibration = Calibration.from_expressions(np.stack(self._rows))


# --- the tracker --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnlineConfig:
    """Knobs of :class:`OnlineTracker`. The energy's weights are the batch tracker's (``fit``)."""

    iterations: int = 2  # LM iterations per frame, warm-started from the previous frame
    acquire_iterations: int = 10  # on a newly found face (from PnP)
    hessian_every: int = 2  # the landmark Hessian is renewed every n iterations (solver.solve_frames)
    warmup_seconds: float = 1.0  # frames the identity of a new person is fitted on
    # Fit that identity on a thread (tracking goes on with the template meanwhile) instead of
    # stopping for it (1-2 s on a CPU): live driving does; offline comparisons want the same
    # result on every run.
    identity_in_background: bool = False
    # The previous frame stays in the temporal terms across at most this gap; a face lost for
    # longer is found again from PnP.
    max_gap_seconds: float = 0.5
    # The temporal weights of head rotation and translation in the per-frame solve (the batch's are
    # FitConfig.w_smooth_rot/transl). Held against the previous frame only, such a term pulls every
    # head turn back (set them to the batch's and bench/bench_online.py's rot column shows the lag):
    # the pose is smoothed by the One-Euro filter instead, which follows motion.
    w_smooth_rot: float = 0.0
    w_smooth_transl: float = 0.0
    # Pose filters: a filtered pose is steadier and reprojects worse (it trails the landmarks);
    # bench/bench_online.py prints both (its reproj and jitter columns).
    rotation_filter: OneEuroConfig | None = OneEuroConfig(min_cutoff=2.0, beta=30.0)  # radians
    translation_filter: OneEuroConfig | None = OneEuroConfig(min_cutoff=1.0, beta=500.0)  # metres
    gaze_filter: OneEuroConfig | None = OneEuroConfig(min_cutoff=1.0, beta=10.0)  # radians
    expression_filter: OneEuroConfig | None = None
    detector_threads: int = 1  # CPU threads of the landmark models
    fit: FitConfig = FitConfig()  # the energy; the identity warm-up uses it as the batch tracker does

    def frame_fit(self) -> FitConfig:
        """The per-frame solve's :class:`FitConfig`: ``fit`` with this schedule's pose weights."""
        return replace(self.fit, w_smooth_rot=self.w_smooth_rot, w_smooth_transl=self.w_smooth_transl)


@dataclass(frozen=True)
class OnlineFrame:
    """One processed frame: the head parameters to drive with (numpy, no batch dimension)."""

    index: int  # source frame number
    timestamp: float  # seconds
    found: bool  # a face was found and fitted; False: the parameters are held (or neutral)
    landmarks: np.ndarray  # [478, 3] detections (NaN without a face)
    expression: np.ndarray  # [E]
    jaw: np.ndarray  # [3]
    eyes: np.ndarray  # [2, 3]
    global_orient: np.ndarray  # [3]
    transl: np.ndarray  # [3]
    detect_ms: float = 0.0
    solve_ms: float = 0.0

    def head_params(self, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """``head(**params)`` keywords (``[1, ...]`` tensors), identity excluded."""
        names = ("expression", "jaw", "eyes", "global_orient", "transl")
        out = {k: torch.as_tensor(np.asarray(getattr(self, k))[None], dtype=dtype) for k in names}
        out["neck"] = torch.zeros(1, 3, dtype=dtype)
        return out


@dataclass(frozen=True)
class _Previous:
    """The last solved frame: its detections, number and raw (unfiltered) flat parameters."""

    det: Tensor  # [478, 3]
    index: int
    theta: Tensor  # [1, p]


#: Where an untracked head sits before any face was seen (metres, in front of the camera).
_REST_TRANSL = (0.0, 0.0, -0.6)


class OnlineTracker:
    """Causal tracker of one face (module doc).

    Args:
        head: the head model (with a landmark embedding).
        image_size: ``(W, H)`` of the frames.
        shape: ``[S]`` identity; ``None``: fitted on the first ``config.warmup_seconds``.
        focal: pixels; ``None``: fitted with the identity (or the prior when ``shape`` is given).
        fps: frame rate of the frame numbers (time of a frame without a timestamp; gaps).
        config: :class:`OnlineConfig`.
        landmark_model: a prebuilt :class:`LandmarkModel` of ``head``.
        face_tracker: the :class:`avatar.perception.FaceTracker` of :meth:`process` (default: one
            made at the first frame, as the batch pipeline runs it).
    """

    def __init__(self, head: HeadModel, image_size: tuple[int, int], *, shape: np.ndarray | None = None,
                 focal: float | None = None, fps: float = 30.0, config: OnlineConfig = OnlineConfig(),
                 landmark_model: LandmarkModel | None = None, face_tracker=None) -> None:  # fmt: skip
        self.head, self.config, self.fps = head, config, float(fps)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.lm = landmark_model or LandmarkModel(head)
        self._focal_given = focal
        self._warmup: list[tuple[int, np.ndarray]] | None = None if shape is not None else []
        self._identity_job: Future | None = None  # the warm-up fit running on a thread
        self._new_identity = False  # adopted since the last solve
        f = focal if focal is not None else prior_focal(*self.image_size, config.fit.focal_fov_deg)
        self._set_identity(np.zeros(head.num_shape) if shape is None else shape, f)
        self._face_tracker = face_tracker
        self.reset()

    @classmethod
    def from_tracking(cls, head: HeadModel, tracking: Tracking, image_size: tuple[int, int] | None = None,
                      **kwargs) -> "OnlineTracker":  # fmt: skip
        """A tracker with the identity and focal length of ``tracking`` (the same person, e.g. an
        avatar's own clip). Frames of another size keep the field of view: the focal scales with
        the longer side."""
        own = (int(tracking.image_size[0]), int(tracking.image_size[1]))
        size = own if image_size is None else image_size
        focal = float(tracking.K[0, 0, 0]) * max(size) / max(own)
        kwargs.setdefault("fps", tracking.fps if tracking.fps > 0 else 30.0)
        return cls(head, size, shape=tracking.shape, focal=focal, **kwargs)

    def reset(self) -> None:
        """Forget the face being followed (the identity is kept)."""
        self._index = -1
        self._previous: _Previous | None = None
        self._last: OnlineFrame | None = None
        c = self.config
        self._filters = {k: (OneEuroFilter(cfg) if cfg is not None else None) for k, cfg in
                         (("rot", c.rotation_filter), ("transl", c.translation_filter), ("eyes", c.gaze_filter),
                          ("expression", c.expression_filter))}  # fmt: skip
        if self._face_tracker is not None:
            self._face_tracker.reset()

    def close(self) -> None:
        """Wait for a warm-up identity fit still running on its thread, so that it does not go on
        using the CPU after its caller is done (e.g. in the next benchmark run)."""
        job = self._identity_job
        if job is not None:
            job.exception()  # waits; a failure there is not this caller's any more

    @property
    def shape(self) -> np.ndarray:
        """``[S]`` the identity in use (the template's until a warm-up fit is done)."""
        return self._shape[0].detach().numpy().astype(np.float32)

    @property
    def focal(self) -> float:
        return float(self._focal)

    @property
    def identity_ready(self) -> bool:
        """The identity is the person's (given, or fitted after the warm-up)."""
        return self._warmup is None

    def _set_identity(self, shape: np.ndarray, focal: float) -> None:
        dtype = self.head.dtype
        self._shape = torch.as_tensor(np.asarray(shape), dtype=dtype).reshape(1, self.head.num_shape)
        with torch.no_grad():
            tables = self.lm.identity(self._shape)
        self._tables = {n: (v.detach() if torch.is_tensor(v) else [x.detach() for x in v]) for n, v in tables.items()}
        self._focal = torch.tensor(float(focal), dtype=dtype)
        self._base: Problem | None = None  # built on the next detection (it needs one)

    # --- per frame ---------------------------------------------------------------------------
    def process(self, frame: np.ndarray, timestamp: float | None = None, index: int | None = None) -> OnlineFrame:
        """Landmarks of one HWC RGB frame, then :meth:`step`."""
        if self._face_tracker is None:
            self._face_tracker = make_face_tracker(self.config.detector_threads)
        t0 = time.perf_counter()
        face = self._face_tracker.process(frame)
        detect_ms = 1e3 * (time.perf_counter() - t0)
        out = self.step(face.landmarks if face.found else None, timestamp, index)
        self._last = out = replace(out, detect_ms=detect_ms)
        return out

    def step(self, landmarks: np.ndarray | None, timestamp: float | None = None,
             index: int | None = None) -> OnlineFrame:  # fmt: skip
        """Track one frame from its detections ``[478, 3]`` (``None``: no face). ``index``: the
        source frame number (default: one more than the last); ``timestamp``: seconds (default
        ``index / fps``)."""
        self._index = self._index + 1 if index is None else int(index)
        t = self._index / self.fps if timestamp is None else float(timestamp)
        if landmarks is None or not np.isfinite(landmarks).all():
            self._last = self._held(t)
            return self._last
        t0 = time.perf_counter()
        det = torch.as_tensor(np.asarray(landmarks, dtype=np.float32), dtype=self.head.dtype)
        theta = self._solve(det, self._index)
        self._previous = _Previous(det, self._index, theta)
        if self._warmup is not None:
            self._warm_up(np.asarray(landmarks, np.float32), t)
        raw = self._unpack(self._previous.theta)
        self._last = OnlineFrame(self._index, t, True, np.asarray(landmarks, np.float32), **self._filtered(raw, t),
                                 solve_ms=1e3 * (time.perf_counter() - t0))  # fmt: skip
        return self._last

    def _held(self, t: float) -> OnlineFrame:
        """A frame without a face: the last parameters (neutral before any face)."""
        nan = np.full((478, 3), np.nan, np.float32)
        if self._last is not None:
            return replace(self._last, index=self._index, timestamp=t, found=False, landmarks=nan, detect_ms=0.0,
                            solve_ms=0.0)  # fmt: skip
        z = np.zeros(3, np.float32)
        return OnlineFrame(self._index, t, False, nan, np.zeros(self.head.num_expressions, np.float32), z,
                           np.zeros((2, 3), np.float32), z, np.array(_REST_TRANSL, np.float32))  # fmt: skip

    def _problem(self, det: Tensor, index: np.ndarray) -> Problem:
        if self._base is None:
            f = float(self._focal)
            self._base = Problem(self.head, self.lm, det[:1], self.image_size, self.config.frame_fit(), None, True, f)
        return self._base.with_detections(det, index)

    def _solve(self, det: Tensor, index: int) -> Tensor:
        """``[1, p]``: this frame's parameters, warm-started from (and held against) the previous
        frame when it is at most ``max_gap_seconds`` back, else from PnP; just after a new identity
        was adopted, from the previous frame but not held against it (it had another identity)."""
        prev = self._previous
        recent = prev is not None and 0 < index - prev.index <= max(1, round(self.config.max_gap_seconds * self.fps))
        if recent and not self._new_identity:
            P = self._problem(torch.stack([prev.det, det]), np.array([prev.index, index]))
            start, held, iterations = prev.theta.clone(), prev.theta, self.config.iterations
        else:
            P = self._problem(det[None], np.array([index]))
            start = prev.theta.clone() if recent else self._acquire(P)
            held, iterations = None, self.config.acquire_iterations
            self._new_identity = False
            self._reset_filters()
        rows = start if held is None else torch.cat([held, start])
        Hp = prior_hessian(P, rows[:, 5], rows.shape[1])
        robust_gaze = held is not None and P.cfg.smooth_eyes_scale > 0
        prior = (lambda th: gaze_prior_hessian(P, Hp, th)) if robust_gaze else (lambda th: Hp)
        theta = solve_frames(P, self._tables, self._focal, start, prior, True, iterations, held=held,
                             hessian_every=self.config.hessian_every if held is not None else 1)
        if P.bounded:
            E = P.num_expressions
            theta[:, 6 : 6 + E] = theta[:, 6 : 6 + E].clamp(0.0, 1.0)
        return theta

    def _acquire(self, P: Problem) -> Tensor:
        """Start of a newly found face: pose by PnP; expression and gaze of the last frame (or
        the batch's identity-stage start)."""
        pose = _rigid_stage(P, self._shape)
        E, dtype = P.num_expressions, P.dtype
        if self._previous is not None:
            last = FrameParams.unflat(self._previous.theta, E, P.fit_jaw)
            expr, eyes, jaw = last.expression.clone(), last.eyes.clone(), last.jaw
        else:
            expr = torch.full((1, E), 0.05 if P.bounded else 0.0, dtype=dtype)
            eyes, jaw = torch.zeros(1, 2, 2, dtype=dtype), (torch.zeros(1, 3, dtype=dtype) if P.fit_jaw else None)
        return FrameParams(pose.rot, pose.xy, pose.logd, expr, eyes, jaw).flat()

    def _unpack(self, theta: Tensor) -> dict[str, np.ndarray]:
        P = self._base
        f = FrameParams.unflat(theta, P.num_expressions, P.fit_jaw)
        jaw = f.jaw[0] if f.jaw is not None else torch.zeros(3, dtype=theta.dtype)
        return {"expression": P.expression(f.expression)[0], "jaw": jaw, "eyes": eyes3(f.eyes)[0],
                "global_orient": f.rot[0], "transl": f.transl()[0]}  # fmt: skip

    def _filtered(self, raw: dict[str, Tensor], t: float) -> dict[str, np.ndarray]:
        """The One-Euro filters applied to the raw parameters (float32 numpy)."""
        out = {k: v.detach().numpy().astype(np.float64) for k, v in raw.items()}
        for name, key in (("rot", "global_orient"), ("transl", "transl"), ("expression", "expression")):
            if self._filters[name] is not None:
                out[key] = self._filters[name](out[key], t)
        if self._filters["eyes"] is not None:  # pitch and yaw (roll stays 0)
            out["eyes"][:, :2] = self._filters["eyes"](out["eyes"][:, :2], t)
        if self._base.bounded:
            out["expression"] = np.clip(out["expression"], 0.0, 1.0)
        return {k: v.astype(np.float32) for k, v in out.items()}

    def _reset_filters(self) -> None:
        """A face found again after a long gap: no smoothing across the jump."""
        for f in self._filters.values():
            if f is not None:
                f.reset()

    # --- identity of a new person ------------------------------------------------------------
    def _warm_up(self, landmarks: np.ndarray, t: float) -> None:
        """Collect the first ``warmup_seconds`` of detections, then fit the identity (and focal,
        unless given) on them with the batch solver: at once, going on from its last frame, or
        (``identity_in_background``) on a thread while tracking goes on with the template, adopted
        at the first frame after it is done."""
        if self._identity_job is not None:
            if self._identity_job.done():
                self._adopt_identity(self._identity_job.result(), continue_from_fit=False)
            return
        self._warmup.append((self._index, landmarks))
        first = self._warmup[0][0] / self.fps
        if self._index / self.fps - first < self.config.warmup_seconds or len(self._warmup) < 2:
            return
        index = np.array([i for i, _ in self._warmup], np.int64)
        dets = np.stack([d for _, d in self._warmup])
        fit = partial(fit_landmarks, self.head, dets, self.image_size, frame_index=index, temporal=True,
                      focal=self._focal_given, config=self.config.fit, landmark_model=self.lm)  # fmt: skip
        if self.config.identity_in_background:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatar-identity")
            self._identity_job = pool.submit(fit)
            pool.shutdown(wait=False)  # the thread ends with the job
        else:
            self._adopt_identity(fit(), continue_from_fit=True)

    def _adopt_identity(self, res, continue_from_fit: bool) -> None:
        """Track with the identity and focal of the warm-up fit ``res`` (a FitResult) from now on;
        ``continue_from_fit``: ``res``'s last frame is this frame (its parameters are taken)."""
        self._warmup, self._identity_job = None, None
        self._set_identity(res.shape, res.focal)
        self._problem(self._previous.det[None], np.array([self._index]))  # the base problem, new focal
        self._reset_filters()
        if not continue_from_fit:
            self._new_identity = True
            return
        dtype = self.head.dtype

        def last(x: np.ndarray) -> Tensor:
            return torch.as_tensor(x[-1:], dtype=dtype)

        tr = last(res.transl)
        jaw = last(res.jaw) if self.lm.jaw_joint is not None else None
        theta = FrameParams(last(res.global_orient), tr[:, :2], torch.log(-tr[:, 2]), last(res.expression),
                            last(res.eyes)[..., :2], jaw).flat()  # fmt: skip
        self._previous = _Previous(self._previous.det, self._previous.index, theta)


def make_face_tracker(threads: int = 1):
    """The landmark tracker as the batch pipeline runs it on a video (``avatar.fitting.pipeline``)."""
    from avatar.perception import FaceTracker

    return FaceTracker(num_threads=threads, detector="auto")


def online_tracking(frames: Sequence[OnlineFrame], head: HeadModel, shape: np.ndarray, focal: float,
                    image_size: tuple[int, int], fps: float, source: str) -> Tracking:  # fmt: skip
    """The processed frames as a :class:`Tracking` (``tracking.npz``'s layout: replayable by
    ``avatar view``, ``avatar render --drive`` and ``avatar export``). Frames without a face are
    neither tracked nor interpolated: they hold the last parameters."""
    n = len(frames)

    def stack(name: str, dtype=np.float32) -> np.ndarray:
        return np.stack([np.asarray(getattr(f, name)) for f in frames]).astype(dtype)

    K = intrinsics_matrix(focal, *image_size).astype(np.float32)
    return Tracking(
        frame_index=np.array([f.index for f in frames], np.int64), tracked=np.array([f.found for f in frames], bool),
        interpolated=np.zeros(n, bool), landmarks=stack("landmarks"), expression=stack("expression"),
        jaw=stack("jaw"), neck=np.zeros((n, 3), np.float32), eyes=stack("eyes"), global_orient=stack("global_orient"),
        transl=stack("transl"), K=np.repeat(K[None], n, 0), viewmat=camera_viewmat().astype(np.float32),
        shape=np.asarray(shape, np.float32).reshape(-1), model=head.name, expression_names=np.array(head.expression_names),
        image_size=np.array(image_size, np.int64), fps=float(fps), source=str(source),
    )  # fmt: skip
