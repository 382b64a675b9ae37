"""Overlays so a person can check landmarks by eye."""
from __future__ import annotations

import cv2
import numpy as np

from avatar.perception.landmarks import FaceResult
from avatar.perception.roi import to_uint8_rgb


def draw_face(image: np.ndarray, face: FaceResult) -> np.ndarray:
    """A uint8 RGB copy of ``image`` with the face's box (green), mesh points (white), iris points
    (cyan) and presence score; a red "no face" label when none was found."""
    out = to_uint8_rgb(image).copy()
    h, w = out.shape[:2]
    scale = max(1, round(max(h, w) / 512))
    if not face.found:
        cv2.putText(out, "no face", (8, 24 * scale), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, (255, 0, 0), 2 * scale)
        return out
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), scale)
    for i, (x, y) in enumerate(face.landmarks[:, :2]):
        color = (0, 255, 255) if i >= 468 else (255, 255, 255)
        cv2.circle(out, (int(round(x)), int(round(y))), scale, color, -1, lineType=cv2.LINE_AA)
    cv2.putText(out, f"{face.score:.2f}", (x0, max(y0 - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 255, 0), scale)
    return out
