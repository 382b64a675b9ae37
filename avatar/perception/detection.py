"""BlazeFace face detection (MediaPipe's short- and full-range models) on CPU with LiteRT.

The model outputs, per SSD anchor, a box and 6 keypoints (right eye, left eye, nose tip, mouth,
right ear, left ear; "right" is the person's right, image left) relative to the anchor, and a
logit. We rebuild the anchors, decode, threshold, merge overlapping boxes by score-weighted
averaging (MediaPipe's "weighted" NMS), and map the letterboxed tensor back to image pixels.
Numbers (anchor layout, scales, thresholds) are those of MediaPipe's face_detection graphs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from avatar.perception._tflite import TfliteModel
from avatar.perception.assets import asset_path
from avatar.perception.roi import letterbox_matrix, to_uint8_rgb, warp


@dataclass(frozen=True)
class DetectorConfig:
    """One BlazeFace variant: model file, input size, anchor layout, decoding scale, threshold."""

    model: str
    size: int
    strides: tuple[int, ...]
    anchors_per_layer: int  # 2 with MediaPipe's interpolated anchor, else 1
    min_score: float
    nms_iou: float = 0.3


SHORT_RANGE = DetectorConfig("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5)
FULL_RANGE = DetectorConfig("face_detection_full_range_sparse.tflite", 192, (4,), 1, 0.6)


@dataclass(frozen=True)
class FaceDetection:
    """One detected face, in image pixels."""

    box: np.ndarray  # [4] x0, y0, x1, y1
    keypoints: np.ndarray  # [6, 2] right eye, left eye, nose, mouth, right ear, left ear
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def ssd_anchors(size: int, strides: tuple[int, ...], anchors_per_layer: int) -> np.ndarray:
    """[N, 2] anchor centres in [0, 1] (width = height = 1: MediaPipe's fixed_anchor_size).

    Consecutive layers with the same stride share a grid, so each cell there holds
    ``anchors_per_layer x layers`` anchors, ordered row by row."""
    centres = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = anchors_per_layer * (j - i)
        grid = math.ceil(size / strides[i])
        ys, xs = np.mgrid[0:grid, 0:grid]
        cell = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], -1).reshape(-1, 2)
        centres.append(np.repeat(cell, per_cell, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float):
    """Greedy by score: every box overlapping the best one by more than ``iou`` is merged into it
    (coordinates averaged with score weights; the best score kept). Returns lists."""
    order = np.argsort(-scores, kind="stable")
    out = []
    while order.size:
        top = order[0]
        overlap = _iou(boxes[top], boxes[order])
        members = order[overlap > iou]
        if members.size == 0:  # degenerate box (zero area): keep it alone
            members = order[:1]
        w = scores[members][:, None]
        box = (boxes[members] * w).sum(0) / w.sum()
        kps = (keypoints[members].reshape(members.size, -1) * w).sum(0) / w.sum()
        out.append((box, kps.reshape(-1, 2), float(scores[top])))
        order = order[(overlap <= iou) & (order != top)]
    return out


@dataclass
class FaceDetector:
    """BlazeFace on CPU. ``detector(image)`` -> detections sorted by score, in pixels.

    >>> det = FaceDetector("short")            # doctest: +SKIP
    >>> faces = det(frame_uint8_rgb)           # doctest: +SKIP
    """

    variant: str = "short"  # "short" (faces within ~2 m, selfie video) or "full" (up to ~5 m)
    num_threads: int = 1
    min_score: float | None = None  # None: the model's own threshold (0.5 short, 0.6 full)
    _cfg: DetectorConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.variant not in ("short", "full"):
            raise ValueError(f"variant must be 'short' or 'full', got {self.variant!r}")
        self._cfg = SHORT_RANGE if self.variant == "short" else FULL_RANGE
        self._model = TfliteModel(asset_path(self._cfg.model), self.num_threads)
        self._anchors = ssd_anchors(self._cfg.size, self._cfg.strides, self._cfg.anchors_per_layer)

    def __call__(self, image: np.ndarray) -> list[FaceDetection]:
        """``image``: HWC RGB, uint8 or float in [0, 1]."""
        img = to_uint8_rgb(image)
        h, w = img.shape[:2]
        n = self._cfg.size
        matrix, roi = letterbox_matrix(w, h, n, n)
        tensor = warp(img, matrix, n, n, "zero").astype(np.float32) * (2.0 / 255.0) - 1.0
        raw_boxes, raw_scores = self._model(tensor[None])
        raw_boxes = raw_boxes.reshape(-1, 16)
        logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -100.0, 100.0)
        scores = 1.0 / (1.0 + np.exp(-logits))
        thr = self._cfg.min_score if self.min_score is None else self.min_score
        keep = np.nonzero(scores >= thr)[0]
        if keep.size == 0:
            return []
        a = self._anchors[keep]
        r = raw_boxes[keep] / n  # offsets in tensor units -> [0, 1]
        cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
        bw, bh = r[:, 2], r[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
        merged = weighted_nms(boxes, kps, scores[keep], self._cfg.nms_iou)
        # tensor [0, 1] -> image pixels through the square letterbox ROI
        offset = np.array([roi.cx - roi.size / 2, roi.cy - roi.size / 2])
        dets = [
            FaceDetection(
                box=(b.reshape(2, 2) * roi.size + offset).reshape(4).astype(np.float32),
                keypoints=(k * roi.size + offset).astype(np.float32),
                score=s,
            )
            for b, k, s in merged
        ]
        return sorted(dets, key=lambda d: -d.score)
