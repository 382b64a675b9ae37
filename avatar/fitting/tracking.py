"""The tracking result: :class:`Tracking`, its file ``tracking.npz``, and :func:`load_tracking`.

See :mod:`avatar.fitting` for the contract (frames, camera, fields).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.models.base import FRAME_PARAMS
from avatar.utils.files import atomic_path

__all__ = ["Tracking", "load_tracking", "save_tracking"]

#: Trailing shapes of the per-frame fields ``[N, ...]`` that do not depend on the head model.
_FRAME_SHAPES = {"frame_index": (), "tracked": (), "interpolated": (), "jaw": (3,), "neck": (3,), "eyes": (2, 3),
                 "global_orient": (3,), "transl": (3,), "K": (3, 3)}  # fmt: skip


@dataclass(frozen=True)
class Tracking:
    """A tracked clip (N frames). Arrays are numpy; see :mod:`avatar.fitting` for the frames.

    >>> tr = load_tracking("out/tracking.npz")                 # doctest: +SKIP
    >>> out = head(**tr.head_params(frames=slice(0, 10)))      # doctest: +SKIP
    """

    frame_index: np.ndarray  # [N] int64 source frame numbers
    tracked: np.ndarray  # [N] bool: a face was found and fitted
    interpolated: np.ndarray  # [N] bool: no face; parameters interpolated over a short gap
    landmarks: np.ndarray  # [N, 478, 3] float32 detections (pixels; NaN where no face)
    expression: np.ndarray  # [N, E] float32
    jaw: np.ndarray  # [N, 3]
    neck: np.ndarray  # [N, 3]
    eyes: np.ndarray  # [N, 2, 3]
    global_orient: np.ndarray  # [N, 3]
    transl: np.ndarray  # [N, 3]
    K: np.ndarray  # [N, 3, 3] pixels
    viewmat: np.ndarray  # [4, 4] world -> camera (OpenCV)
    shape: np.ndarray  # [S]
    model: str  # "anny" or "flame"
    expression_names: np.ndarray  # [E] str
    image_size: np.ndarray  # [2] (W, H)
    fps: float
    source: str
    model_path: str = ""  # the FLAME file tracked with (absolute), "" for the built-in model
    model_sha256: str = ""  # its content digest (models.model_file_digest)

    @property
    def num_frames(self) -> int:
        return int(self.frame_index.shape[0])

    @property
    def usable(self) -> np.ndarray:
        """``[N]`` bool: frames whose parameters are measurements or short-gap interpolations
        (``tracked | interpolated``); the others hold placeholders."""
        return np.asarray(self.tracked, bool) | np.asarray(self.interpolated, bool)

    def frame_params(self, frames=None) -> dict[str, np.ndarray]:
        """The per-frame head parameters (:data:`~avatar.models.base.FRAME_PARAMS`) as numpy
        ``[B, ...]`` for ``frames`` (an index, slice, list or bool mask; all frames by default; an
        int keeps its batch dimension)."""
        sel = slice(None) if frames is None else frames
        if isinstance(sel, (int, np.integer)):
            sel = [int(sel)]
        return {k: np.asarray(getattr(self, k))[sel] for k in FRAME_PARAMS}

    def head_params(self, frames=None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
        """Parameters for ``head(**params)``: :meth:`frame_params` as tensors ``[B, ...]`` and
        ``shape`` as ``[1, S]``."""

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

        return {"shape": t(self.shape[None]), **{k: t(v) for k, v in self.frame_params(frames).items()}}


#: Fields that files written before they existed lack (their defaults apply).
OPTIONAL = frozenset({"model_path", "model_sha256"})


def save_tracking(tracking: Tracking, path: str | Path) -> Path:
    """Write ``tracking.npz`` atomically (uncompressed: fast to load, a few MB)."""
    path = Path(path)
    arrays = {}
    for f in fields(tracking):
        v = getattr(tracking, f.name)
        arrays[f.name] = np.asarray(v) if not isinstance(v, str) else np.array(v)
    arrays["fps"] = np.float64(tracking.fps)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_tracking(path: str | Path) -> Tracking:
    """Read a ``tracking.npz`` written by ``avatar track`` (or a folder holding one). A missing,
    unreadable, incomplete or inconsistent file is an :class:`AvatarError` naming the fix."""
    path = Path(path)
    if path.is_dir():
        path = path / "tracking.npz"
    if not path.is_file():
        raise AvatarError(f"{path}: no tracking file; run `avatar track INPUT -o {path.parent}` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            d = {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise AvatarError(f"{path}: not a readable tracking file ({type(e).__name__}: {e}); re-run `avatar track`") from e
    names = {f.name for f in fields(Tracking)}
    missing = names - set(d) - OPTIONAL
    if missing:
        raise AvatarError(f"{path}: not a complete tracking file (missing {', '.join(sorted(missing))}); re-run `avatar track`")
    kw = {k: d[k] for k in names if k in d}
    for k in ("model", "source", *(o for o in OPTIONAL if o in d)):
        kw[k] = str(d[k])
    kw["fps"] = float(d["fps"])
    problem = _inconsistency(kw)
    if problem:
        raise AvatarError(f"{path}: inconsistent tracking file ({problem}); re-run `avatar track`")
    return Tracking(**kw)


def _inconsistency(kw: dict) -> str | None:
    """What is wrong with the per-frame arrays of a tracking file, or ``None``."""
    if np.ndim(kw["frame_index"]) != 1:
        return f"frame_index has shape {np.shape(kw['frame_index'])}, expected [N]"
    n = len(kw["frame_index"])
    for name, trailing in _FRAME_SHAPES.items():
        if np.shape(kw[name]) != (n, *trailing):
            return f"{name} has shape {np.shape(kw[name])}, expected {(n, *trailing)}"
    e = np.shape(kw["expression_names"])
    if np.ndim(kw["expression"]) != 2 or e != (np.shape(kw["expression"])[1],) or np.shape(kw["expression"])[0] != n:
        return f"expression {np.shape(kw['expression'])} does not match {n} frames and expression_names {e}"
    if np.ndim(kw["landmarks"]) != 3 or np.shape(kw["landmarks"])[::2] != (n, 3):
        return f"landmarks has shape {np.shape(kw['landmarks'])}, expected [{n}, L, 3]"
    return None
