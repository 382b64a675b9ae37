"""478 face landmarks (468-point FaceMesh + 10 iris points) per image or video frame.

Model: MediaPipe's ``face_landmark_with_attention.tflite`` -- the model MediaPipe itself runs for
``refine_landmarks=True``. One pass gives the mesh, refined lips and eyes, and both irises, so there
is no second (iris) model to crop for and run twice per frame, and our output matches what
MediaPipe users get. Its three custom ops run in NumPy (see :mod:`avatar.perception._tflite`).

Pipeline (as MediaPipe's face_landmark_front graph): detect (BlazeFace) -> square ROI rotated so
the eyes are level, 1.5x the box -> 192x192 crop -> landmarks + face-presence score -> on the next
frame, the ROI comes from the previous landmarks (eye corners 33/263), and detection runs again
only when the presence score drops below ``min_presence``.

Coordinates: pixels of the input image; ``z`` is MediaPipe's relative depth (smaller = nearer
the camera, origin near the head's centre) multiplied by the image width, i.e. in the same pixel
units as x.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from avatar.perception._tflite import SplitTfliteModel
from avatar.perception.assets import asset_path
from avatar.perception.detection import FaceDetection, FaceDetector
from avatar.perception.roi import Roi, crop_matrix, roi_from_box, rotation_from_points, to_uint8_rgb, warp

log = logging.getLogger(__name__)

NUM_LANDMARKS = 478
_INPUT = 192

# Index maps from the model's refinement heads into the 468-point mesh (MediaPipe's
# tensors_to_face_landmarks_with_attention graph): lips (80), left eye (71), right eye (71).
LIPS = np.array([
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
    76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408,
    62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407,
])
LEFT_EYE = np.array([
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
    130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
    226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
    35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
    156, 70, 63, 105, 66, 107, 55, 193,
])
RIGHT_EYE = np.array([
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
    359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
    446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
    265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
    383, 300, 293, 334, 296, 336, 285, 417,
])
# Iris depth: the mean depth of the eye's 16 contour points (the first 16 of each eye map).
_LEFT_EYE_CONTOUR, _RIGHT_EYE_CONTOUR = LEFT_EYE[:16], RIGHT_EYE[:16]
#: Eye-corner landmarks used for the tracking ROI's rotation (outer corner of each eye).
EYE_CORNERS = (33, 263)


@dataclass(frozen=True)
class FaceResult:
    """One face in one frame. When ``found`` is False, ``landmarks`` and ``box`` are NaN."""

    found: bool
    landmarks: np.ndarray  # [478, 3] x, y pixels; z relative depth in pixel units
    box: np.ndarray  # [4] x0, y0, x1, y1 pixels: bounds of the 478 landmarks
    score: float  # face-presence score of the landmark model (0 when not found)
    roi: Roi | None = None  # the crop the landmarks came from
    detected: bool = False  # True when the detector ran for this frame (not tracking)

    @staticmethod
    def missing(score: float = 0.0, detected: bool = False) -> "FaceResult":
        nan = np.full((NUM_LANDMARKS, 3), np.nan, np.float32)
        return FaceResult(False, nan, np.full(4, np.nan, np.float32), float(score), None, detected)


@dataclass(frozen=True)
class LandmarkTrack:
    """Stacked per-frame results: ``N`` frames."""

    found: np.ndarray  # [N] bool
    landmarks: np.ndarray  # [N, 478, 3] float32 (NaN where not found)
    boxes: np.ndarray  # [N, 4] float32
    scores: np.ndarray  # [N] float32
    detected: np.ndarray  # [N] bool: the detector ran on this frame

    @staticmethod
    def stack(results: list[FaceResult]) -> "LandmarkTrack":
        n = len(results)
        if n == 0:
            return LandmarkTrack(np.zeros(0, bool), np.zeros((0, NUM_LANDMARKS, 3), np.float32),
                                 np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, bool))
        return LandmarkTrack(
            found=np.array([r.found for r in results], bool),
            landmarks=np.stack([r.landmarks for r in results]).astype(np.float32),
            boxes=np.stack([r.box for r in results]).astype(np.float32),
            scores=np.array([r.score for r in results], np.float32),
            detected=np.array([r.detected for r in results], bool),
        )


def roi_from_detection(det: FaceDetection) -> Roi:
    """Crop for the landmark model from a BlazeFace box: eyes level, long side x1.5."""
    return roi_from_box(det.box, rotation_from_points(det.keypoints[0], det.keypoints[1]))


def roi_from_landmarks(landmarks: np.ndarray) -> Roi:
    """Crop for the next frame from this frame's landmarks: bounds of all points, outer eye
    corners level, long side x1.5."""
    xy = landmarks[:, :2]
    box = np.concatenate([xy.min(0), xy.max(0)])
    return roi_from_box(box, rotation_from_points(xy[EYE_CORNERS[0]], xy[EYE_CORNERS[1]]))


class FaceLandmarker:
    """The landmark model alone: ``landmarker(image, roi) -> (landmarks [478, 3] px, score)``."""

    def __init__(self, num_threads: int = 1) -> None:
        self._model = SplitTfliteModel(asset_path("face_landmark_with_attention.tflite"), num_threads)

    def __call__(self, image: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        img = to_uint8_rgb(image)
        crop = warp(img, crop_matrix(roi, _INPUT, _INPUT), _INPUT, _INPUT, "replicate")
        mesh, lips, leye, reye, liris, riris, flag = self._model(crop[None].astype(np.float32) * (1.0 / 255.0))
        score = float(1.0 / (1.0 + np.exp(-float(flag.reshape(-1)[0]))))
        pts = np.empty((NUM_LANDMARKS, 3), np.float64)
        pts[:468] = mesh.reshape(468, 3)
        pts[LIPS, :2] = lips.reshape(-1, 2)
        pts[LEFT_EYE, :2] = leye.reshape(-1, 2)
        pts[RIGHT_EYE, :2] = reye.reshape(-1, 2)
        pts[468:473, :2] = liris.reshape(5, 2)
        pts[473:478, :2] = riris.reshape(5, 2)
        pts[468:473, 2] = pts[_LEFT_EYE_CONTOUR, 2].mean()
        pts[473:478, 2] = pts[_RIGHT_EYE_CONTOUR, 2].mean()
        # crop pixels -> ROI-relative [-0.5, 0.5] -> rotate -> image pixels
        uv = pts[:, :2] / _INPUT - 0.5
        c, s = np.cos(roi.rotation), np.sin(roi.rotation)
        out = np.empty_like(pts)
        out[:, 0] = (c * uv[:, 0] - s * uv[:, 1]) * roi.size + roi.cx
        out[:, 1] = (s * uv[:, 0] + c * uv[:, 1]) * roi.size + roi.cy
        out[:, 2] = pts[:, 2] / _INPUT * roi.size
        return out.astype(np.float32), score


def _box_of(landmarks: np.ndarray) -> np.ndarray:
    xy = landmarks[:, :2]
    return np.concatenate([xy.min(0), xy.max(0)]).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class FaceTracker:
    """Detection + 478 landmarks for one face through a video (or one image).

    ``process(frame)`` tracks the ROI from the previous frame's landmarks and runs the detector
    only when there is no face yet or the presence score falls below ``min_presence``; in that
    case it re-detects on the same frame (MediaPipe waits for the next frame; re-detecting at once
    keeps a face on every frame where one is visible).

    Several faces: the tracker follows one. On (re)detection it picks the detection overlapping the
    last tracked face (IoU > 0.3) if there is one, else the largest box; it logs a warning once per
    tracker when it sees more than one face.

    >>> tracker = FaceTracker()               # doctest: +SKIP
    >>> for frame in frames:                  # doctest: +SKIP
    ...     face = tracker.process(frame)
    """

    num_threads: int = 1
    detector: str = "short"  # "short", "full", or "auto" (short, then full range if nothing found)
    min_detection_score: float | None = None  # None: the detector's own threshold
    min_presence: float = 0.5  # landmark-model face-presence threshold (MediaPipe's default)
    static_images: bool = False  # True: detect on every call (unrelated images)
    _last_box: np.ndarray | None = field(default=None, init=False, repr=False)
    _roi: Roi | None = field(default=None, init=False, repr=False)
    _warned_multi: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.detector not in ("short", "full", "auto"):
            raise ValueError(f"detector must be 'short', 'full' or 'auto', got {self.detector!r}")
        self._landmarker = FaceLandmarker(self.num_threads)
        self._short = FaceDetector("short", self.num_threads, self.min_detection_score) if self.detector != "full" else None
        self._full = FaceDetector("full", self.num_threads, self.min_detection_score) if self.detector != "short" else None

    def reset(self) -> None:
        """Forget the tracked face (call between unrelated clips)."""
        self._roi, self._last_box = None, None

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """All faces BlazeFace finds (short range first; full range when ``detector`` allows)."""
        dets = self._short(image) if self._short is not None else []
        if not dets and self._full is not None:
            dets = self._full(image)
        return dets

    def _choose(self, dets: list[FaceDetection]) -> FaceDetection:
        if len(dets) > 1 and not self._warned_multi:
            self._warned_multi = True
            log.warning("%d faces in view; following one (the tracked face, else the largest).", len(dets))
        if self._last_box is not None:
            overlaps = [_iou(d.box, self._last_box) for d in dets]
            best = int(np.argmax(overlaps))
            if overlaps[best] > 0.3:
                return dets[best]
        return max(dets, key=lambda d: d.area)

    def process(self, image: np.ndarray) -> FaceResult:
        """Landmarks for one HWC RGB frame (uint8, or float in [0, 1])."""
        img = to_uint8_rgb(image)
        if self.static_images:
            self._roi, self._last_box = None, None
        if self._roi is not None:
            landmarks, score = self._landmarker(img, self._roi)
            if score >= self.min_presence:
                return self._accept(landmarks, score, self._roi, detected=False)
            self._roi = None
        dets = self.detect(img)
        if not dets:
            self._last_box = None
            return FaceResult.missing(detected=True)
        roi = roi_from_detection(self._choose(dets))
        landmarks, score = self._landmarker(img, roi)
        if score < self.min_presence:
            return FaceResult.missing(score, detected=True)
        return self._accept(landmarks, score, roi, detected=True)

    def _accept(self, landmarks: np.ndarray, score: float, roi: Roi, detected: bool) -> FaceResult:
        box = _box_of(landmarks)
        self._last_box = box
        self._roi = roi_from_landmarks(landmarks)
        return FaceResult(True, landmarks, box, score, roi, detected)

    def track(self, frames: Iterable[np.ndarray]) -> LandmarkTrack:
        """Run :meth:`process` over frames and stack the results."""
        return LandmarkTrack.stack(list(self.iter(frames)))

    def iter(self, frames: Iterable[np.ndarray]) -> Iterator[FaceResult]:
        for frame in frames:
            yield self.process(frame)


def detect_faces(image: np.ndarray, detector: str = "auto", num_threads: int = 1) -> list[FaceDetection]:
    """All faces in one image (BlazeFace), sorted by score, in pixels."""
    return FaceTracker(num_threads=num_threads, detector=detector, static_images=True).detect(image)


def landmarks_for_image(image: np.ndarray, detector: str = "auto", num_threads: int = 1) -> FaceResult:
    """Detect + 478 landmarks on a single image (e.g. a render); the largest face if several.

    For many images, build one ``FaceTracker(static_images=True)`` and call ``process`` on each
    (loading the models once)."""
    return FaceTracker(num_threads=num_threads, detector=detector, static_images=True).process(image)
