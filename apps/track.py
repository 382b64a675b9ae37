"""`avatar track INPUT -o OUT`: identity, ARKit-52 expression, gaze, head pose and camera per frame."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from avatar.errors import AvatarError


@dataclass
class Track:
    """Track one person's head in a video, a folder of photos of them, or one photo. Writes
    OUT/tracking.npz (per-frame parameters + camera), OUT/tracking.json (summary) and, with
    --overlay, OUT/overlay.mp4."""

    input: tyro.conf.Positional[Path]
    """Video file (mp4/mov/avi/webm...), folder of photos of one person, or one photo."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("tracking_out")
    """Output folder (created)."""
    stride: int = 1
    """Use every n-th frame."""
    limit: int | None = None
    """Stop after this many frames (after stride)."""
    focal: float | None = None
    """Focal length in pixels, when known (else estimated from a prior and the landmarks)."""
    model: Literal["anny", "flame"] = "anny"
    """Head model: the built-in AnnyHead (CC0) or a FLAME .pkl given with --model-path."""
    model_path: Path | None = None
    """FLAME .pkl file; only with --model flame."""
    threads: int = 2
    """CPU threads for the landmark models."""
    overlay: bool = False
    """Also write OUT/overlay.mp4, the fitted head as a wireframe over the frames (at most 720p). Off
    by default: drawing and encoding it takes longer than the tracking (on two cores, 1080p: 31
    against 74 frames a second, docs/memory.md)."""

    def run(self) -> None:
        from avatar.fitting.pipeline import track_clip
        from avatar.render.landmark_embedding import build_landmark_embedding

        if self.stride < 1:
            raise AvatarError(f"--stride must be >= 1 (got {self.stride})")
        if self.focal is not None and not self.focal > 0:
            raise AvatarError(f"--focal must be > 0 pixels (got {self.focal})")
        check_output_folder(self.output)
        # A FLAME model without a cached landmark embedding gets one built here (once, ~30 s).
        _, s = track_clip(self.input, self.output, model=self.model, model_path=self.model_path,
                          landmark_builder=build_landmark_embedding, stride=self.stride, limit=self.limit,
                          focal=self.focal, threads=self.threads, overlay=self.overlay, progress=True)
        print(f"{self.output / 'tracking.npz'}: {s['frames']} frames, {s['frames_tracked']} tracked, "
              f"{s['frames_interpolated']} interpolated; reprojection median {s['reprojection_px_median']:.2f} px "
              f"({s['reprojection_pct_iod_median']:.2f}% of the inter-ocular distance); {s['fps']:.1f} fps tracking, "
              f"{s['frames'] / s['timings_s']['total']:.1f} fps end to end (model load, overlay and files included)")


def check_output_folder(path: Path, flag: str = "-o") -> None:
    """Fail now, in one line, when ``path`` cannot become the output folder (it, or a folder above
    it, is a file; or it is not writable) rather than after minutes of work."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise AvatarError(f"{flag} {path} {where}, not a folder; pass a folder for the outputs (created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AvatarError(f"{flag} {path}: cannot write into {existing}; pass a folder you can write to")
