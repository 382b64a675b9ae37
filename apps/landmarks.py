"""`avatar landmarks INPUT -o OUT`: face box + 478 landmarks per frame, and an overlay to check them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from avatar.errors import AvatarError


@dataclass
class Landmarks:
    """Detect and track one face; write OUT/landmarks.npz and an overlay video (or image)."""

    input: tyro.conf.Positional[Path]
    """Video file (mp4/mov/avi/webm...), folder of images, or one image."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("landmarks_out")
    """Output folder (created). Gets landmarks.npz and overlay.mp4 (overlay.png for one image)."""
    stride: int = 1
    """Use every n-th frame."""
    limit: int | None = None
    """Stop after this many frames (after stride)."""
    threads: int = 2
    """CPU threads for the models."""
    detector: Literal["short", "full", "auto"] = "auto"
    """BlazeFace model: short range (selfie distance), full range (up to ~5 m), or auto (short, then full)."""
    static: bool = False
    """Detect on every frame instead of tracking (for unrelated images)."""
    overlay: bool = True
    """Write the overlay video/image."""
    fps: float = 25.0
    """Frame rate recorded for image folders (videos keep their own)."""

    def run(self) -> None:
        import numpy as np
        from tqdm import tqdm

        from avatar.io import FrameReader, VideoWriter, write_image
        from avatar.perception import FaceTracker, LandmarkTrack
        from avatar.perception.draw import draw_face
        from avatar.utils.files import atomic_path

        if self.stride < 1:
            raise AvatarError(f"--stride must be >= 1 (got {self.stride})")
        reader = FrameReader(self.input, stride=self.stride, limit=self.limit, dtype="uint8")
        info = reader.info
        fps = reader.fps if reader.fps is not None else self.fps
        out = Path(self.output)
        out.mkdir(parents=True, exist_ok=True)
        tracker = FaceTracker(num_threads=self.threads, detector=self.detector, static_images=self.static)
        single = info.kind == "image"
        results = []
        # A progress bar appears once the run takes more than a couple of seconds.
        bar = tqdm(reader, total=len(reader) or None, unit="frame", desc="landmarks", delay=2.0, disable=single)
        with VideoWriter(out / "overlay.mp4", fps=fps) if self.overlay and not single else _NoWriter() as writer:
            for frame in bar:
                face = tracker.process(frame)
                results.append(face)
                if self.overlay:
                    drawn = draw_face(frame, face)
                    if single:
                        write_image(out / "overlay.png", drawn)
                    else:
                        writer.write(drawn)
        track = LandmarkTrack.stack(results)
        with atomic_path(out / "landmarks.npz") as tmp:
            np.savez_compressed(
                tmp, found=track.found, boxes=track.boxes, landmarks=track.landmarks, scores=track.scores,
                detected=track.detected, fps=np.float32(fps), size=np.array([info.width, info.height], np.int32),
                stride=np.int32(self.stride), source=str(info.path),
            )
        n, found = len(track.found), int(track.found.sum())
        print(f"{out / 'landmarks.npz'}: {n} frames, face found in {found}"
              + (f"; overlay: {out / ('overlay.png' if single else 'overlay.mp4')}" if self.overlay else ""))


class _NoWriter:
    def __enter__(self) -> "_NoWriter":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, frame) -> None:  # pragma: no cover - never called
        raise AssertionError("no overlay requested")
