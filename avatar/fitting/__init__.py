"""Fitting (tracking): identity, ARKit-52 expression, eye gaze, head pose and focal length of one
person from a video, a folder of photos or a single photo.

    >>> import avatar
    >>> tr = avatar.track("clip.mp4", "out/")            # doctest: +SKIP
    >>> tr = avatar.load_tracking("out/tracking.npz")    # doctest: +SKIP
    >>> out = head(**tr.head_params(frames=slice(0, 8)))  # doctest: +SKIP

Output contract (``OUT/tracking.npz``, written atomically; :class:`Tracking` in Python)
-----------------------------------------------------------------------------------------
World frame = the head model's (metres, +Y up, the face looks along +Z). One static camera per
clip: ``viewmat [4, 4]`` world -> camera (OpenCV: x right, y down, z forward) is
``diag(1, -1, -1, 1)``, i.e. the camera sits at the origin looking down world -Z. A frontal head
therefore has ``global_orient ~ 0`` and ``transl ~ (0, y, -0.5 ... -1.0)``. ``global_orient``
rotates the head about the model origin (the neck-base root joint), then ``transl`` moves it.

=====================  ==================  =====================================================
``frame_index``        ``[N] int64``       source frame number (stride applied)
``tracked``            ``[N] bool``        a face was found and fitted on this frame
``interpolated``       ``[N] bool``        no face; parameters linearly interpolated over a gap
                                           of at most ~0.5 s (videos only). Frames neither tracked
                                           nor interpolated hold their nearest tracked values
                                           (placeholders: do not use them as measurements)
``landmarks``          ``[N, 478, 3] f32`` detections: x, y pixels, z MediaPipe relative depth; NaN without a face
``expression``         ``[N, E] f32``      AnnyHead: the 52 ARKit channels in [0, 1]; FLAME: its coefficients
``jaw``                ``[N, 3]``          axis-angle; 0 for AnnyHead (``jawOpen`` etc. carry the jaw)
``neck``               ``[N, 3]``          always 0: head motion is all in ``global_orient``/``transl``
``eyes``               ``[N, 2, 3]``       eyeball rotations (pitch, yaw; roll 0), model joint order
                                           (AnnyHead: eye.L = the subject's left, then eye.R)
``global_orient``      ``[N, 3]``          axis-angle
``transl``             ``[N, 3]``          metres
``K``                  ``[N, 3, 3]``       pixels; constant per clip; principal point at the image centre
``viewmat``            ``[4, 4]``          ``diag(1, -1, -1, 1)``
``shape``              ``[S]``             identity, one per clip
``model``              str                 ``"anny"`` or ``"flame"``
``expression_names``   ``[E]`` str
``image_size``         ``[2]``             (W, H)
``fps``                float               frame rate of the tracked frames (source fps / stride;
                                           25 for photo folders)
``source``             str                 the input path
=====================  ==================  =====================================================

:func:`load_tracking` is the one reader of the file (a missing, unreadable, incomplete or
inconsistent file is a one-line :class:`~avatar.errors.AvatarError` naming the fix).
``Tracking.usable`` (``tracked | interpolated``) marks the frames to train on or drive with;
``Tracking.frame_params(frames)`` / ``head_params(frames)`` give the per-frame head parameters
(:data:`avatar.models.base.FRAME_PARAMS`) as numpy / torch.

``OUT/tracking.json`` summarises the run (frames, frames tracked, reprojection error in pixels and
in % of the inter-ocular distance, fps, per-stage timings), and ``OUT/overlay.mp4`` draws the fitted
head over the frames.

Design: :mod:`avatar.fitting.solver` (energy, stages, parameterisation, jaw/eye decisions),
:mod:`avatar.fitting.landmark_model` (the fast landmark evaluator used in the solver's loop),
:mod:`avatar.fitting.online` (:class:`OnlineTracker`: the same solver one frame at a time, causally,
for live driving).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Tracking": "avatar.fitting.tracking",
    "load_tracking": "avatar.fitting.tracking",
    "save_tracking": "avatar.fitting.tracking",
    "track": "avatar.fitting.pipeline",
    "track_clip": "avatar.fitting.pipeline",
    "FitConfig": "avatar.fitting.solver",
    "FitResult": "avatar.fitting.solver",
    "fit_landmarks": "avatar.fitting.solver",
    "LandmarkModel": "avatar.fitting.landmark_model",
    "OnlineTracker": "avatar.fitting.online",
    "OnlineConfig": "avatar.fitting.online",
    "OnlineFrame": "avatar.fitting.online",
    "Calibration": "avatar.fitting.online",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avatar.fitting' has no attribute {name!r}")
