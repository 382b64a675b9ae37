"""Terms of the tracking energy and the variables they read: camera projection, robust loss,
landmark subsets and weights, the per-frame parameters (:class:`FrameParams`) and one solve's
detections with its data, prior and temporal terms (:class:`Problem`). The energy itself is
written out in :mod:`avatar.fitting.solver`'s docstring.

Landmark indices are MediaPipe FaceMesh's (468 mesh points + 10 iris points, see
:mod:`avatar.perception.landmarks`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # the solver's knobs; only read here
    from avatar.fitting.landmark_model import LandmarkModel
    from avatar.fitting.solver import FitConfig
    from avatar.models.base import HeadModel

#: The silhouette ring of MediaPipe's mesh (face oval). These points slide along the occluding
#: contour as the head turns, so no single surface point matches them: low weight.
FACE_OVAL = np.array([
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
    148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
])
#: Points that expressions hardly move (forehead, nose bridge and tip, inner/outer eye corners,
#: upper cheekbones): the rigid pose is solved on these, and expression is kept from moving them.
STABLE = np.array([
    151, 9, 8, 107, 336, 108, 337, 69, 299, 104, 333,  # forehead
    168, 6, 197, 195, 5, 4, 1, 19, 2, 98, 327, 129, 358,  # nose bridge, tip, base
    33, 133, 362, 263,  # eye corners
    116, 345, 123, 352,  # cheekbones
])
#: The skin above each upper eyelid (MediaPipe's 2nd and 3rd ring around the eye, upper arcs: the lid
#: crease and the socket under the brow), subject's right eye then left eye. On AnnyHead these points
#: are embedded on the lid skin, which ``eyeBlink*`` pulls down with the lid margin (the 2nd ring by
#: ~9 % IOD at a full blink); FaceMesh puts them on the crease, which moves by 0..5 % IOD when the
#: eye closes (measured on hdtf_katiehill, liveportrait_d3/d10). So every blink is fought by 28
#: points that say "not closed": low weight.
UPPER_LID_SKIN = np.array([
    247, 30, 29, 27, 28, 56, 190, 113, 225, 224, 223, 222, 221, 189,
    467, 260, 259, 257, 258, 286, 414, 342, 445, 444, 443, 442, 441, 413,
])
#: Eyelid margins (MediaPipe's innermost ring around each eye, corners excluded), the mouth corners
#: and the inner lip contour: the points whose distances are the eye and mouth apertures. A few
#: dozen points among 478 at weight 1 let the expression prior and conflicting points win; with
#: more weight the fitted apertures follow the detections (avatar.fitting.apertures).
APERTURE_POINTS = np.array([
    246, 161, 160, 159, 158, 157, 173, 7, 163, 144, 145, 153, 154, 155,
    466, 388, 387, 386, 385, 384, 398, 249, 390, 373, 374, 380, 381, 382,
    61, 291, 78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 95, 88, 178, 87, 14, 317, 402, 318, 324,
])
#: Iris blocks: 468..472 the subject's right eye (centre first), 473..477 the left eye.
IRIS = np.arange(468, 478)
#: Outer eye corners (the inter-ocular distance used to normalise errors, as in bench_landmarks).
EYE_OUTER = (33, 263)
NUM_MESH = 468
#: AnnyHead expression channels held at 0: the ``eyeLook*`` blendshapes move the eyeballs that the
#: eye joints already rotate (fitting both is ambiguous), and no landmark sees ``tongueOut``.
FROZEN_ANNY = ("eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
               "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "tongueOut")
#: The blink channels, which the temporal expression term weights by ``FitConfig.blink_smooth``.
BLINKS = ("eyeBlinkLeft", "eyeBlinkRight")


def landmark_weights(contour: float = 0.3, iris: float = 1.0, n: int = 478, upper_lid_skin: float = 1.0,
                     aperture: float = 1.0) -> np.ndarray:
    """Per-landmark data weights ``[n]``: 1, the face oval ``contour``, the iris points ``iris``,
    the skin above the upper eyelids ``upper_lid_skin``, the aperture points ``aperture``."""
    w = np.ones(n, np.float32)
    w[FACE_OVAL] = contour
    w[UPPER_LID_SKIN[UPPER_LID_SKIN < n]] = upper_lid_skin
    w[APERTURE_POINTS[APERTURE_POINTS < n]] = aperture
    w[IRIS[IRIS < n]] = iris
    return w


#: Mid upper / mid lower lid of the subject's right eye, then the left eye (the eye apertures).
LIDS = ((159, 145), (386, 374))


def iris_visibility(landmarks: Tensor, closed: float = 0.025, open_: float = 0.05) -> Tensor:
    """``[M, 478, >=2]`` detections -> ``[M, 2]`` trust in each eye's iris points (subject's right,
    left): 0 when the lids are closer than ``closed`` inter-ocular distances, 1 beyond ``open_``,
    a smoothstep between. FaceMesh still places an iris on a closed eye, wherever; fitting gaze to
    it turned every blink into a jump of the eyes (hdtf_aoc: the largest gaze changes were on frames
    with the lids at 5 % IOD against 12 % elsewhere)."""
    iod = interocular_px(landmarks).clamp_min(1e-6)
    out = []
    for a, b in LIDS:
        gap = (landmarks[:, a, :2] - landmarks[:, b, :2]).norm(dim=-1) / iod
        t = ((gap - closed) / max(open_ - closed, 1e-9)).clamp(0.0, 1.0)
        out.append(t * t * (3.0 - 2.0 * t))
    return torch.stack(out, -1)


def interocular_px(landmarks: Tensor | np.ndarray):
    """``[..., 478, >=2]`` -> ``[...]`` distance between the outer eye corners (pixels)."""
    a, b = landmarks[..., EYE_OUTER[0], :2], landmarks[..., EYE_OUTER[1], :2]
    d = a - b
    return (d * d).sum(-1) ** 0.5


def _per_chunk(fn, det: Tensor, dtype: torch.dtype, chunk: int = 1024) -> Tensor:
    """``fn`` of float32 detections ``[M, ...]`` promoted to ``dtype`` a chunk of frames at a time
    (per-frame functions: the same values as on the whole, without a whole promoted copy)."""
    return torch.cat([fn(det[a : a + chunk].to(dtype)) for a in range(0, max(det.shape[0], 1), chunk)])


def _frame_weights(shape: tuple[int, int], iris_vis: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``[M, L]`` landmark weights of frames: 1, the iris points' by their eye's trust ``[M, 2]``."""
    fw = torch.ones(*shape, dtype=dtype)
    if iris_vis is not None:
        fw[:, IRIS[:5]] = iris_vis[:, :1]
        fw[:, IRIS[5:]] = iris_vis[:, 1:]
    return fw


def _mediapipe_z(det: Tensor, iod: Tensor, dtype: torch.dtype) -> Tensor:
    """``[M, 468]`` the detections' z (MediaPipe's relative depth), centred per frame, in IODs."""
    z = det[:, :NUM_MESH, 2].to(dtype)
    return (z - z.mean(1, keepdim=True)) / iod[:, None]


def project_planes(points: Tensor, focal: Tensor, cx: float, cy: float) -> tuple[Tensor, Tensor, Tensor]:
    """World points ``[N, 3, L]`` seen by the tracker's camera (at the origin, looking down world
    -Z: ``viewmat = diag(1, -1, -1, 1)``) -> ``(u [N, L], v [N, L], depth [N, L])`` pixels / metres."""
    x, y, z = points.unbind(1)
    depth = -z
    inv = focal / depth
    return x * inv + cx, cy - y * inv, depth


def camera_viewmat() -> np.ndarray:
    """The tracker's world -> camera matrix (OpenCV): camera at the origin looking down world -Z."""
    return np.diag([1.0, -1.0, -1.0, 1.0])


def intrinsics_matrix(focal: float, width: int, height: int) -> np.ndarray:
    """``K [3, 3]``: square pixels, principal point at the image centre (pixel centres at i + 0.5)."""
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def prior_focal(width: int, height: int, fov_deg: float) -> float:
    """A focal length (pixels) for a field of view ``fov_deg`` across the image's longer side."""
    return 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2.0)


def charbonnier(x2: Tensor, sigma: float) -> Tensor:
    """Pseudo-Huber on squared residuals: ``2 sigma^2 (sqrt(1 + x^2/sigma^2) - 1)`` (~x^2 near 0,
    linear tails: convex, and a landmark far off still pulls, so a start far from the answer moves)."""
    s2 = sigma * sigma
    return 2.0 * s2 * (torch.sqrt(1.0 + x2 / s2) - 1.0)


def transl(xy: Tensor, logd: Tensor) -> Tensor:
    """``[n, 3]`` translation from ``xy [n, 2]`` and the log depth ``logd [n]``: ``(x, y, -exp(logd))``
    (the head stays in front of the camera)."""
    return torch.cat([xy, -logd.exp()[:, None]], 1)


def eyes3(eyes2: Tensor) -> Tensor:
    """``[n, 2, 2]`` (pitch, yaw) -> ``[n, 2, 3]`` axis-angle with zero roll."""
    return torch.cat([eyes2, torch.zeros_like(eyes2[..., :1])], -1)


@dataclass(frozen=True)
class FrameParams:
    """The tracker's per-frame parameters of ``n`` frames (see :mod:`avatar.fitting.solver`'s
    parameterisation); ``flat`` packs them into one row per frame for Levenberg-Marquardt:
    ``[rot 3 | xy 2 | logd 1 | expression E | eyes 4 | jaw 3 (FLAME)]``."""

    rot: Tensor  # [n, 3] axis-angle global_orient
    xy: Tensor  # [n, 2] transl x, y (metres)
    logd: Tensor  # [n] log depth: transl z = -exp(logd)
    expression: Tensor  # [n, E] (the frozen channels included; Problem.expression masks them)
    eyes: Tensor  # [n, 2, 2] pitch, yaw per eye (model joint order)
    jaw: Tensor | None = None  # [n, 3] axis-angle, when the jaw joint is fitted (FLAME)

    def transl(self) -> Tensor:
        return transl(self.xy, self.logd)

    def flat(self) -> Tensor:
        """``[n, 6 + E + 4 (+ 3)]``, detached."""
        parts = [self.rot, self.xy, self.logd[:, None], self.expression, self.eyes.reshape(-1, 4)]
        return torch.cat([x.detach() for x in parts + ([self.jaw] if self.jaw is not None else [])], 1)

    @staticmethod
    def unflat(theta: Tensor, num_expressions: int, fit_jaw: bool) -> "FrameParams":
        """Views into ``theta`` (:meth:`flat`'s layout)."""
        E = num_expressions
        eyes = theta[:, 6 + E : 10 + E].reshape(-1, 2, 2)
        jaw = theta[:, 10 + E : 13 + E] if fit_jaw else None
        return FrameParams(theta[:, :3], theta[:, 3:5], theta[:, 5], theta[:, 6 : 6 + E], eyes, jaw)


def smooth(x: Tensor, gap_w: Tensor, weight: Tensor | None = None) -> Tensor:
    """Sum over consecutive solved frames of ``|x_t - x_t-1|^2 / gap`` -> scalar (divided by n);
    ``weight [D]`` scales each of the D components of ``x [n, D]``."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    d = (x[1:] - x[:-1]).reshape(x.shape[0] - 1, -1)
    d2 = d * d if weight is None else d * d * weight
    return (d2.sum(1) * gap_w).sum() / x.shape[0]


def smooth_gaze(eyes: Tensor, gap_w: Tensor, scale: float) -> Tensor:
    """Temporal term of the gaze ``[n, 2, 2]``: :func:`smooth`, but per eye and frame pair
    ``2 s^2 (sqrt(1 + |d|^2 / s^2) - 1)`` (equal to ``|d|^2`` for small changes ``d``, linear in
    ``|d|`` beyond the scale ``s``, so a saccade is not smeared); ``scale = 0`` is quadratic."""
    if scale <= 0 or eyes.shape[0] < 2:
        return smooth(eyes, gap_w)
    d2 = ((eyes[1:] - eyes[:-1]) ** 2).sum(-1)  # [n-1, 2]: per eye
    s2 = scale * scale
    rho = 2.0 * s2 * (torch.sqrt(1.0 + d2 / s2) - 1.0)
    return (rho.sum(1) * gap_w).sum() / eyes.shape[0]


class Problem:
    """One solve: the detections and their weights, the head and its landmark model, the camera,
    the config, and the terms of the energy that read them (data, priors, temporal)."""

    def __init__(self, head: "HeadModel", lmodel: "LandmarkModel", landmarks: Tensor, image_size, cfg: "FitConfig",
                 frame_index: np.ndarray | None, temporal: bool, focal: float | None) -> None:  # fmt: skip
        """``landmarks [M, 478, 3]``; ``frame_index [M]`` (default ``0..M-1``) weights the temporal
        terms by 1/gap; ``focal``: pixels when known (else its prior, ``cfg.focal_fov_deg``)."""
        self.head, self.lm, self.cfg = head, lmodel, cfg
        dtype = self.dtype = head.dtype
        self.W, self.H = image_size
        self.cx, self.cy = self.W / 2.0, self.H / 2.0
        self.temporal = temporal
        self._set_detections(landmarks, frame_index)
        w = landmark_weights(cfg.contour_weight, cfg.iris_weight, upper_lid_skin=cfg.upper_lid_skin_weight,
                             aperture=cfg.aperture_weight)  # fmt: skip
        self.w = torch.as_tensor(w, dtype=dtype)
        self.stable = torch.as_tensor(STABLE)
        self.bounded = head.name == "anny"
        E = self.num_expressions = head.num_expressions
        self.fit_jaw = lmodel.jaw_joint is not None
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
        # Camera: the focal length, known or its prior (log f is solved in the identity stage).
        self.focal_known = focal is not None
        self.f0 = prior_focal(*image_size, cfg.focal_fov_deg) if focal is None else float(focal)

    def _set_detections(self, landmarks: Tensor, frame_index: np.ndarray | None) -> None:
        """The fields that depend on the detections ``[M, 478, 3]`` and their frame numbers. Per
        frame only the detections (float32, as detected: exact in the problem's dtype, to which
        each use promotes them), the inter-ocular distance and the two eyes' iris trust are kept;
        the per-landmark weights (:attr:`frame_w`) and MediaPipe's z are made from them for the
        frames a term reads, so a long clip holds nothing more per frame."""
        self.det = landmarks.to(torch.float32)  # [M, 478, 3]
        M = self.num_frames = self.det.shape[0]
        self.iod = _per_chunk(interocular_px, self.det, self.dtype).clamp_min(1.0)  # [M]
        # Per frame: the iris points' trust, each eye's (None without iris points).
        self.iris_vis = None
        if self.det.shape[1] > IRIS[-1]:
            cfg = self.cfg
            self.iris_vis = _per_chunk(lambda d: iris_visibility(d, cfg.iris_closed, cfg.iris_open), self.det, self.dtype)
        # Time: the temporal terms (videos only) weight each consecutive pair by 1/gap.
        fidx = np.arange(M) if frame_index is None else np.asarray(frame_index, dtype=np.int64)
        gaps = np.maximum(np.diff(fidx), 1).astype(np.float32)
        self.gap_w = torch.as_tensor(1.0 / gaps, dtype=self.dtype)  # [M - 1]

    @property
    def frame_w(self) -> Tensor:
        """``[M, 478]`` per frame and landmark: 1, or the iris points scaled by their eye's
        openness. The normaliser stays w.sum(), so a blink does not re-weight the other points."""
        return _frame_weights(self.det.shape[:2], self.iris_vis, self.dtype)

    def with_detections(self, landmarks: Tensor, frame_index: np.ndarray | None = None) -> "Problem":
        """This problem (head, camera, weights, config) for other detections ``[M, 478, 3]`` of the
        same clip: what the online tracker solves per frame, without rebuilding the rest (~10 ms)."""
        other = copy.copy(self)
        other._set_detections(landmarks, frame_index)
        return other

    def rows(self, frames: slice) -> "Problem":
        """This problem restricted to the consecutive frames ``frames`` (a view: the per-frame
        terms of a long clip evaluated a chunk at a time, in bounded memory)."""
        start, stop, _ = frames.indices(self.num_frames)
        other = copy.copy(self)
        other.det, other.iod = self.det[start:stop], self.iod[start:stop]
        other.iris_vis = None if self.iris_vis is None else self.iris_vis[start:stop]
        other.gap_w = self.gap_w[start : max(start, stop - 1)]
        other.num_frames = stop - start
        return other

    def data(self, planes: Tensor, focal: Tensor, frames: Tensor | slice) -> Tensor:
        """Per-frame weighted robust 2D term (+ depth cue), ``[n]``, of the frames ``frames``."""
        u, v, depth = project_planes(planes, focal, self.cx, self.cy)
        det, iod = self.det[frames], self.iod[frames]
        fw = _frame_weights(det.shape[:2], None if self.iris_vis is None else self.iris_vis[frames], self.dtype)
        w = self.w
        r2 = ((u - det[..., 0]) ** 2 + (v - det[..., 1]) ** 2) / iod[:, None] ** 2
        rho = charbonnier(r2, self.cfg.robust_sigma)
        e = (rho * w * fw).sum(1) / w.sum()
        if self.cfg.w_depth > 0:
            d = depth[:, :NUM_MESH]
            zm = (d - d.mean(1, keepdim=True)) * focal / d.mean(1, keepdim=True) / iod[:, None]
            e = e + self.cfg.w_depth * ((zm - _mediapipe_z(det, iod, self.dtype)) ** 2).mean(1)
        return e

    def expression(self, e: Tensor) -> Tensor:
        return e * self.expr_mask

    def regularisers(self, e: Tensor, eyes: Tensor | None, jaw: Tensor | None) -> Tensor:
        """Per-frame priors ``[n]`` of the (masked) expression ``e``, the gaze and the jaw."""
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

    def temporal_terms(self, f: FrameParams, gaze: bool = True) -> Tensor:
        """The smoothness terms over all frames (a scalar, divided by the frame count); 0 for photos."""
        c = self.cfg
        if not self.temporal:
            return f.rot.sum() * 0.0
        tr = f.transl() / self.iod_m
        t = c.w_smooth_rot * smooth(f.rot, self.gap_w) + c.w_smooth_transl * smooth(tr, self.gap_w)
        t = t + c.w_smooth_expr * smooth(self.expression(f.expression), self.gap_w, self.smooth_w)
        if gaze:
            t = t + c.w_smooth_eyes * smooth_gaze(f.eyes, self.gap_w, c.smooth_eyes_scale)
        return t
