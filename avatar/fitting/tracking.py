"""The tracking result: :class:`Tracking`, its file ``tracking.npz``, and :func:`load_tracking`.

See :mod:`avatar.fitting` for the contract (frames, camera, fields).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.utils.files import atomic_path

__all__ = ["Tracking", "load_tracking", "save_tracking"]

_PER_FRAME = ("frame_index", "tracked", "interpolated", "landmarks", "expression", "jaw", "neck", "eyes",
              "global_orient", "transl", "K")


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

    @property
    def num_frames(self) -> int:
        return int(self.frame_index.shape[0])

    def head_params(self, frames=None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
        """Parameters for ``head(**params)``: per-frame tensors ``[B, ...]`` for ``frames`` (an
        index, slice, list or bool mask; all frames by default) and ``shape`` as ``[1, S]``."""
        sel = slice(None) if frames is None else frames
        if isinstance(sel, (int, np.integer)):
            sel = [int(sel)]

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

        return dict(
            shape=t(self.shape[None]),
            expression=t(self.expression[sel]),
            jaw=t(self.jaw[sel]),
            neck=t(self.neck[sel]),
            eyes=t(self.eyes[sel]),
            global_orient=t(self.global_orient[sel]),
            transl=t(self.transl[sel]),
        )


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
    """Read a ``tracking.npz`` written by ``avatar track`` (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tracking.npz"
    if not path.is_file():
        raise AvatarError(f"{path}: no tracking file; run `avatar track INPUT -o OUT` first.")
    try:
        with np.load(path, allow_pickle=False) as data:
            d = {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem to the user
        raise AvatarError(f"{path}: not a readable tracking file ({e}); re-run `avatar track`.") from e
    names = {f.name for f in fields(Tracking)}
    missing = names - set(d)
    if missing:
        raise AvatarError(f"{path}: tracking file lacks {sorted(missing)}; re-run `avatar track`.")
    kw = {k: d[k] for k in names}
    kw["model"] = str(d["model"])
    kw["source"] = str(d["source"])
    kw["fps"] = float(d["fps"])
    return Tracking(**kw)
