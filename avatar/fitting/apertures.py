"""Eye and mouth apertures: does the fitted head open and close where the detected face does?

The mean reprojection error is dominated by the ~400 points that expressions hardly move, so a
tracker can score well on it while missing every blink. These figures isolate the distances that
carry eye closure and mouth shape, measured between MediaPipe landmarks in 2D and normalised by the
frame's inter-ocular distance (outer eye corners 33-263), on the detections and on the fitted model's
projected landmarks.

    >>> det, fit = tracked_landmarks(tracking, head)           # doctest: +SKIP
    >>> aperture_report(det, fit)["eye_right"]["mae_pct_iod"]  # doctest: +SKIP
    >>> iris_report(det, fit)["p95_pct_iod"]                   # doctest: +SKIP

Gaze is judged the same way: the 2D distance between the detected and the fitted iris centres, on
the frames where both eyes are open (on a closed eye FaceMesh's iris is a guess the tracker ignores).
"""
from __future__ import annotations

import numpy as np
import torch

from avatar.fitting.energy import EYE_OUTER, IRIS

#: The two iris centres (FaceMesh: the first point of each iris block).
IRIS_CENTRES = [int(IRIS[0]), int(IRIS[5])]

__all__ = ["APERTURES", "apertures", "aperture_report", "iris_report", "tracked_landmarks", "format_report"]

#: name -> (landmark a, landmark b): MediaPipe indices whose 2D distance is measured.
#: 159/145 and 386/374 are the mid upper/lower lid of the subject's right and left eye; 13/14 the
#: inner upper/lower lip; 61/291 the mouth corners.
APERTURES: dict[str, tuple[int, int]] = {
    "eye_right": (159, 145),
    "eye_left": (386, 374),
    "mouth_open": (13, 14),
    "mouth_width": (61, 291),
}


def apertures(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """``[N, >=468, >=2]`` pixels -> per aperture ``[N]`` distance in % of the inter-ocular distance."""
    lm = np.asarray(landmarks, dtype=np.float64)[..., :2]
    iod = np.linalg.norm(lm[:, EYE_OUTER[0]] - lm[:, EYE_OUTER[1]], axis=-1)
    iod = np.maximum(iod, 1e-6)
    return {k: 100.0 * np.linalg.norm(lm[:, a] - lm[:, b], axis=-1) / iod for k, (a, b) in APERTURES.items()}


def aperture_report(detected: np.ndarray, fitted: np.ndarray) -> dict[str, dict[str, float]]:
    """Per aperture: mean absolute error (% IOD) of the fitted against the detected aperture, the
    Pearson correlation over frames, and both ranges (min/max, % IOD). Frames where either side is
    not finite are skipped. The fitted aperture is normalised by the detected IOD too, so an error in
    head size does not read as an aperture error."""
    det = np.asarray(detected, dtype=np.float64)
    fit = np.asarray(fitted, dtype=np.float64).copy()
    ok = np.isfinite(det[..., :2]).all((1, 2)) & np.isfinite(fit[..., :2]).all((1, 2))
    det, fit = det[ok], fit[ok]
    # Same normaliser for both: replace the fitted eye corners' distance by the detected one.
    a_det = apertures(det)
    iod_det = np.linalg.norm(det[:, EYE_OUTER[0], :2] - det[:, EYE_OUTER[1], :2], axis=-1)
    iod_fit = np.linalg.norm(fit[:, EYE_OUTER[0], :2] - fit[:, EYE_OUTER[1], :2], axis=-1)
    a_fit = {k: v * iod_fit / np.maximum(iod_det, 1e-6) for k, v in apertures(fit).items()}
    out: dict[str, dict[str, float]] = {}
    for k in APERTURES:
        d, f = a_det[k], a_fit[k]
        corr = float(np.corrcoef(d, f)[0, 1]) if len(d) > 2 and d.std() > 0 and f.std() > 0 else float("nan")
        out[k] = dict(
            mae_pct_iod=float(np.abs(f - d).mean()) if len(d) else float("nan"),
            corr=corr,
            detected_min=float(d.min()) if len(d) else float("nan"),
            detected_max=float(d.max()) if len(d) else float("nan"),
            fitted_min=float(f.min()) if len(f) else float("nan"),
            fitted_max=float(f.max()) if len(f) else float("nan"),
            frames=int(len(d)),
        )
    return out


def iris_report(detected: np.ndarray, fitted: np.ndarray, open_pct_iod: float = 5.0) -> dict[str, float]:
    """Error of the fitted iris centres (landmarks 468 and 473) against the detected ones, in % of
    the detected inter-ocular distance, over the frames where both detected eye apertures are at
    least ``open_pct_iod``: mean, 95th percentile and max over those (frame, eye) pairs."""
    det = np.asarray(detected, dtype=np.float64)[..., :2]
    fit = np.asarray(fitted, dtype=np.float64)[..., :2]
    ap = apertures(det)
    open_ = (ap["eye_right"] >= open_pct_iod) & (ap["eye_left"] >= open_pct_iod) & np.isfinite(fit).all((1, 2))
    iod = np.maximum(np.linalg.norm(det[:, EYE_OUTER[0]] - det[:, EYE_OUTER[1]], axis=-1), 1e-6)
    err = (100.0 * np.linalg.norm(det[:, IRIS_CENTRES] - fit[:, IRIS_CENTRES], axis=-1) / iod[:, None])[open_]
    if err.size == 0:
        return dict(mean_pct_iod=float("nan"), p95_pct_iod=float("nan"), max_pct_iod=float("nan"), frames=0)
    return dict(mean_pct_iod=float(err.mean()), p95_pct_iod=float(np.percentile(err, 95)), max_pct_iod=float(err.max()),
                frames=int(open_.sum()))


def tracked_landmarks(tracking, head, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(detected, fitted)`` landmarks ``[M, 478, 2]`` (pixels) of the tracked frames of a
    :class:`~avatar.fitting.tracking.Tracking`, the fitted ones from ``head``'s forward pass
    projected with the tracking's camera."""
    idx = np.nonzero(tracking.tracked)[0]
    fitted = []
    for s in range(0, len(idx), chunk):
        sel = idx[s : s + chunk]
        with torch.no_grad():
            pts = head(**tracking.head_params(frames=sel, dtype=head.dtype)).landmarks.double().numpy()
        K = tracking.K[sel].astype(np.float64)
        d = -pts[..., 2]
        u = K[:, None, 0, 0] * pts[..., 0] / d + K[:, None, 0, 2]
        v = K[:, None, 1, 1] * -pts[..., 1] / d + K[:, None, 1, 2]
        fitted.append(np.stack([u, v], -1))
    fit = np.concatenate(fitted) if fitted else np.zeros((0, 478, 2))
    return tracking.landmarks[idx, :, :2].astype(np.float64), fit


def format_report(report: dict[str, dict[str, float]]) -> str:
    """One line: ``name MAE % IOD (corr r; detected lo..hi, fitted lo..hi)`` per aperture."""
    return " | ".join(
        f"{k} MAE {r['mae_pct_iod']:.2f}% r={r['corr']:.2f} (det {r['detected_min']:.1f}..{r['detected_max']:.1f}, "
        f"fit {r['fitted_min']:.1f}..{r['fitted_max']:.1f})"
        for k, r in report.items()
    )
