"""Tracked performances the viewer plays back: ``OUT/tracking.npz`` (self-reenactment) or another
person's tracking file (cross-reenactment: their expressions and poses on this avatar's identity).

The file is read with ``avatar.fitting.load_tracking`` when the fitting package provides it, else
directly (``np.load(allow_pickle=False)``, the npz keys are the Tracking field names); either way
the viewer keeps only what playback needs, as a :class:`Motion`.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar.errors import AvatarError

__all__ = ["Motion", "load_motion", "POSE_SHAPES"]

POSE_SHAPES: dict[str, tuple[int, ...]] = {"jaw": (3,), "neck": (3,), "eyes": (2, 3), "global_orient": (3,), "transl": (3,)}


@dataclass(frozen=True)
class Motion:
    """Per-frame head parameters.

    Attributes:
        source: the file it came from.
        fps: playback rate of the original video.
        expression_names: channel names of ``expression``.
        expression: ``[N, E]`` weights; ``poses``: name -> ``[N, *POSE_SHAPES[name]]`` radians/metres.
        shape: ``[S]`` identity of the tracked person, or ``None``.
        tracked: ``[N]`` bool, frames where the face was found.
    """

    source: Path
    fps: float
    expression_names: tuple[str, ...]
    expression: np.ndarray
    poses: dict[str, np.ndarray]
    shape: np.ndarray | None
    tracked: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])

    def params_for(self, frame: int, expression_names: list[str], head_pose: bool = False) -> dict[str, Tensor]:
        """Parameters of ``frame`` for a head whose channels are ``expression_names`` (channels
        matched by name; unknown ones dropped, missing ones zero). ``head_pose``: include
        ``global_orient``/``transl`` (off by default: the viewer orbits a head at the origin)."""
        if not 0 <= frame < self.num_frames:
            raise IndexError(f"frame {frame} is outside 0..{self.num_frames - 1}")
        expr = np.zeros(len(expression_names), dtype=np.float32)
        index = {n: i for i, n in enumerate(self.expression_names)}
        for j, name in enumerate(expression_names):
            i = index.get(name)
            if i is not None:
                expr[j] = self.expression[frame, i]
        out = {"expression": torch.from_numpy(expr)[None]}
        for name, value in self.poses.items():
            if name in ("global_orient", "transl") and not head_pose:
                continue
            out[name] = torch.from_numpy(np.ascontiguousarray(value[frame], dtype=np.float32))[None]
        return out


def _from_tracking(obj, path: Path) -> Motion:
    """A fitting ``Tracking`` (or anything with its fields) -> :class:`Motion`."""
    expression = np.asarray(obj.expression, dtype=np.float32)
    n = expression.shape[0]
    poses = {}
    for name, shape in POSE_SHAPES.items():
        value = getattr(obj, name, None)
        if value is not None:
            value = np.asarray(value, dtype=np.float32)
            if value.shape != (n, *shape):
                raise AvatarError(f"{path}: {name} has shape {value.shape}, expected {(n, *shape)}")
            poses[name] = value
    names = tuple(str(x) for x in np.asarray(obj.expression_names).reshape(-1))
    if expression.ndim != 2 or len(names) != expression.shape[1]:
        raise AvatarError(f"{path}: expression {expression.shape} does not match {len(names)} expression_names")
    fps = float(np.asarray(getattr(obj, "fps", 30.0) or 30.0))
    shape = getattr(obj, "shape", None)
    tracked = getattr(obj, "tracked", None)
    return Motion(
        source=path,
        fps=fps if np.isfinite(fps) and fps > 0 else 30.0,
        expression_names=names,
        expression=expression,
        poses=poses,
        shape=None if shape is None else np.asarray(shape, dtype=np.float32).reshape(-1),
        tracked=np.ones(n, bool) if tracked is None else np.asarray(tracked, bool).reshape(-1),
    )


class _NpzFields:
    def __init__(self, data) -> None:
        self._data = data

    def __getattr__(self, name: str):
        return self._data[name] if name in self._data.files else None


def load_motion(path: str | Path) -> Motion:
    """Read a tracking file; any unreadable or inconsistent file is an :class:`AvatarError`."""
    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path}: no tracking file")
    try:
        from avatar.fitting import load_tracking  # type: ignore[attr-defined]
    except ImportError:
        load_tracking = None
    try:
        if load_tracking is not None:
            return _from_tracking(load_tracking(path), path)
        with np.load(path, allow_pickle=False) as data:
            if "expression" not in data.files or "expression_names" not in data.files:
                raise AvatarError(f"{path}: not a tracking file (no expression / expression_names arrays)")
            return _from_tracking(_NpzFields(data), path)
    except AvatarError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, TypeError) as e:
        raise AvatarError(f"{path}: unreadable tracking file ({type(e).__name__}: {e}); re-run `avatar track`") from e
