"""Tracked performances the viewer plays back: ``OUT/tracking.npz`` (self-reenactment) or another
person's tracking file (cross-reenactment: their expressions and poses on this avatar's identity).

The file is read by :func:`avatar.fitting.load_tracking`; the viewer keeps only what playback
needs, as a :class:`Motion`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar.fitting.tracking import load_tracking

__all__ = ["Motion", "load_motion"]


@dataclass(frozen=True)
class Motion:
    """Per-frame head parameters.

    Attributes:
        source: the file it came from.
        fps: playback rate of the original video.
        expression_names: channel names of ``expression``.
        expression: ``[N, E]`` weights; ``poses``: the other per-frame head parameters
            (``jaw``, ``neck``, ``eyes``, ``global_orient``, ``transl``), name -> ``[N, ...]`` radians/metres.
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


def load_motion(path: str | Path) -> Motion:
    """Read a tracking file; any missing, unreadable or inconsistent file is an :class:`AvatarError`."""
    path = Path(path)
    tr = load_tracking(path)
    params = tr.frame_params()
    expression = params.pop("expression").astype(np.float32)
    return Motion(
        source=path,
        fps=tr.fps if np.isfinite(tr.fps) and tr.fps > 0 else 30.0,
        expression_names=tuple(str(x) for x in tr.expression_names),
        expression=expression,
        poses={k: v.astype(np.float32) for k, v in params.items()},
        shape=np.asarray(tr.shape, dtype=np.float32).reshape(-1),
        tracked=np.asarray(tr.tracked, bool),
    )
