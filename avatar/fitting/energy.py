"""Terms of the tracking energy: camera projection, robust losses, landmark subsets and weights.

Landmark indices are MediaPipe FaceMesh's (468 mesh points + 10 iris points, see
:mod:`avatar.perception.landmarks`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

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


def geman_mcclure(x2: Tensor, sigma: float) -> Tensor:
    """Geman-McClure on squared residuals: ``sigma^2 x^2 / (x^2 + sigma^2)`` (~x^2 near 0, saturates
    at sigma^2: a landmark far off costs a bounded amount)."""
    s2 = sigma * sigma
    return s2 * x2 / (x2 + s2)


def charbonnier(x2: Tensor, sigma: float) -> Tensor:
    """Pseudo-Huber on squared residuals: ``2 sigma^2 (sqrt(1 + x^2/sigma^2) - 1)`` (~x^2 near 0,
    linear tails: convex, for the first, far-from-the-answer stage)."""
    s2 = sigma * sigma
    return 2.0 * s2 * (torch.sqrt(1.0 + x2 / s2) - 1.0)
