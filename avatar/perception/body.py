"""Body (shoulder) motion of a clip from its foreground mattes.

The head tracker says where the head is; nothing said where the shoulders are. A seated speaker
leans, shifts in the chair, breathes: the shoulders, and the long hair resting on them, move in
the frame while the head's pose only partly predicts it (on four shared clips the held-out last
15 % of the video had the shoulders 0.3-10 px, at 256 px, from where they were on average in
training).

:func:`body_shifts` measures that motion in the image: the 2D translation that best aligns the
matte below the chin in each frame with the mean matte of some reference frames (OpenCV's ECC
alignment of the blurred mattes, each frame aligned on its own, from zero: no drift). The matte's
silhouette edges (shoulder line, neck and arm sides) carry the signal; the inside of the
foreground has none, which is why the mattes are used and not the colours (clothes are often
plain, and a static background would pull a colour alignment to zero).

>>> shifts = body_shifts(mattes, top=200, reference=np.arange(100))   # doctest: +SKIP
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["body_shifts"]


def body_shifts(
    mattes: np.ndarray,
    top: int,
    reference: np.ndarray,
    *,
    blur: float = 1.5,
    min_rows: int = 8,
    max_shift: float = 0.15,
    max_failed: float = 0.5,
) -> np.ndarray:
    """``[N, 2]`` translation (x, y in pixels) of each frame's body relative to the reference.

    Args:
        mattes: ``[N, H, W]`` uint8 (255 = foreground) or float in [0, 1].
        top: first image row of the body band (below the chin in every frame); rows above are
            ignored, so head motion does not count as body motion.
        reference: rows of ``mattes`` whose mean is the body's reference position (e.g. the
            training frames).
        blur: Gaussian blur (px) of the mattes before aligning (a wider basin, sub-pixel answers).
        min_rows: fewer band rows than this (the crop shows no shoulders) gives all zeros.
        max_shift: an answer further than this fraction of the image height is rejected (the
            previous frame's is kept): an arm or a hand entering the band is not the body moving.
        max_failed: when the alignment fails on more than this share of the frames, the band's
            silhouette does not pin the body down (e.g. the shoulders run out of the frame) and
            the few answers that came back are not trusted either: all zeros.

    A frame whose body moved by ``d`` shows at ``x + d`` what the reference shows at ``x``.
    Frames where the alignment fails keep the previous frame's answer. Zeros throughout when the
    band has no silhouette edge to align (all foreground or all background).
    """
    import cv2

    m = mattes  # read one frame at a time: the mattes of a long clip may be read from disk on indexing

    def frame(i: int) -> np.ndarray:
        x = np.asarray(m[i])
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)

    n, H, W = m.shape
    out = np.zeros((n, 2), np.float64)
    top = int(np.clip(top, 0, H))
    if n == 0 or H - top < min_rows or len(reference) == 0:
        return out
    k = max(3, 2 * round(3 * blur) + 1)
    def smooth(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (k, k), blur)
    acc = np.zeros((H, W), np.float32)
    for r in np.asarray(reference):  # in order, in float32: numpy's mean over axis 0 gives the same bits
        acc += frame(int(r))
    ref = smooth(acc / np.float32(len(reference)))
    mask = np.zeros((H, W), np.uint8)
    mask[top:] = 1
    gy, gx = np.gradient(ref[top:])
    if float(np.abs(gx).sum() + np.abs(gy).sum()) < 1.0:  # under one pixel of edge: nothing to align
        return out
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    d = np.zeros(2)
    failed = 0
    for i in range(n):
        warp = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
        try:
            _, warp = cv2.findTransformECC(ref, smooth(frame(i)), warp, cv2.MOTION_TRANSLATION, criteria, mask, 1)
        except cv2.error:  # no convergence (e.g. an empty band): keep the previous answer
            failed += 1
        else:
            new = warp[:, 2].astype(np.float64)
            if np.all(np.isfinite(new)) and np.abs(new).max() <= max_shift * H:
                d = new
            else:
                failed += 1
        out[i] = d
    if failed > max_failed * n:
        log.warning("body motion: the alignment failed on %d of %d frames; the body is taken as still", failed, n)
        return np.zeros((n, 2), np.float64)
    if failed:
        log.info("body motion: alignment kept the previous frame's answer on %d of %d frames", failed, n)
    return out
