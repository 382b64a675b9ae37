"""Rotated square regions of interest and the crops that feed the face models.

All coordinates here are image pixels (x right, y down). A :class:`Roi` is a square of side
``size`` centred at ``(cx, cy)`` and rotated by ``rotation`` radians (positive turns the square's
x axis towards +y, i.e. clockwise on screen), as MediaPipe's ``NormalizedRect`` is once scaled by
the image size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Roi:
    cx: float
    cy: float
    size: float  # side of the square, pixels
    rotation: float  # radians

    def corners(self) -> np.ndarray:
        """[4, 2] corners (top-left, top-right, bottom-right, bottom-left of the crop)."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        half = self.size / 2.0
        local = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        rot = np.array([[c, -s], [s, c]])
        return local @ rot.T + np.array([self.cx, self.cy])


def normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def rotation_from_points(start: np.ndarray, end: np.ndarray, target: float = 0.0) -> float:
    """The rotation that brings the ``start -> end`` vector (pixels) to ``target`` radians: the
    same convention as MediaPipe's DetectionsToRectsCalculator (y flipped to point up)."""
    return normalize_radians(target - math.atan2(-(end[1] - start[1]), end[0] - start[0]))


def roi_from_box(box: np.ndarray, rotation: float, scale: float = 1.5) -> Roi:
    """Square ROI from an axis-aligned box ``(x0, y0, x1, y1)``: centre kept, long side, times
    ``scale`` (MediaPipe: RectTransformation with ``square_long`` and 1.5x)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return Roi((x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0) * scale, rotation)


def crop_matrix(roi: Roi, out_w: int, out_h: int) -> np.ndarray:
    """2x3 affine taking image pixels to crop pixels: the ROI's corners land on the crop's corners
    (0, 0) .. (out_w, out_h), as MediaPipe's OpenCV ImageToTensor converter does."""
    c, s = math.cos(roi.rotation), math.sin(roi.rotation)
    inv_rot = np.array([[c, s], [-s, c]])
    a = np.diag([out_w / roi.size, out_h / roi.size]) @ inv_rot
    b = np.array([out_w / 2.0, out_h / 2.0]) - a @ np.array([roi.cx, roi.cy])
    return np.hstack([a, b[:, None]])


def letterbox_matrix(width: int, height: int, out_w: int, out_h: int) -> tuple[np.ndarray, Roi]:
    """Whole image fitted into an ``out_w x out_h`` tensor with its aspect ratio kept (zero
    borders): returns the 2x3 affine and the (square) padded ROI it samples."""
    if out_w != out_h:
        raise ValueError("letterbox_matrix expects a square tensor (the detectors' inputs are)")
    roi = Roi(width / 2.0, height / 2.0, float(max(width, height)), 0.0)
    return crop_matrix(roi, out_w, out_h), roi


def warp(image: np.ndarray, matrix: np.ndarray, out_w: int, out_h: int, border: str) -> np.ndarray:
    """Bilinear crop of an HWC uint8 image; ``border`` is "zero" or "replicate"."""
    mode = cv2.BORDER_CONSTANT if border == "zero" else cv2.BORDER_REPLICATE
    return cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=0)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """HWC RGB uint8 view of an image given as uint8 or float in [0, 1] (the models were trained
    on 8-bit frames, and MediaPipe crops the 8-bit image, so floats are rounded to 8 bits)."""
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)
