"""The tracking pipeline: frames -> landmarks -> fit -> ``tracking.npz`` (+ summary, overlay)."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.fitting.energy import camera_viewmat, intrinsics_matrix
from avatar.fitting.solver import FitConfig, fit_landmarks
from avatar.fitting.tracking import Tracking, save_tracking
from avatar.models.base import HeadModel
from avatar.models.registry import model_file_digest
from avatar.models.landmark_embedding import LandmarkBuilder

__all__ = ["track", "track_clip", "fill_gaps", "summarise", "draw_overlay"]

def fill_gaps(values: np.ndarray, tracked: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill untracked frames of ``values [N, ...]`` (rows of tracked frames are set): linear
    interpolation between the tracked neighbours (held constant before the first and after the
    last). Returns ``(filled, interpolated [N] bool)``; ``interpolated`` marks frames inside an
    interior gap of at most ``max_gap`` frames (longer gaps are filled too, but not flagged, so
    they read as untracked)."""
    n = len(tracked)
    idx = np.nonzero(tracked)[0]
    out = values.copy()
    interp = np.zeros(n, bool)
    if len(idx) == 0 or len(idx) == n:
        return out, interp
    flat = values.reshape(n, -1)
    missing = np.nonzero(~tracked)[0]
    filled = np.stack([np.interp(missing, idx, flat[idx, k]) for k in range(flat.shape[1])], 1)
    out.reshape(n, -1)[missing] = filled
    # gap lengths: runs of untracked frames strictly between two tracked frames
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= max_gap + 1:
            interp[a + 1 : b] = True
    return out, interp


def _head(model: str, model_path: str | Path | None, head: HeadModel | None,
          landmark_builder: LandmarkBuilder | None) -> HeadModel:  # fmt: skip
    if head is None:
        from avatar.models import load_head_model

        head = load_head_model(model, None if model_path is None else str(model_path), landmark_builder=landmark_builder)
    if head.landmark_faces.numel() == 0:
        raise AvatarError(
            f"the {head.name} head model has no landmark embedding, which tracking needs: run `avatar track "
            f"--model {head.name} --model-path MODEL` once (it builds and caches it), or pass "
            "landmark_builder=avatar.render.landmark_embedding.build_landmark_embedding"
        )
    return head


def track_clip(
    source: str | Path,
    output: str | Path | None = None,
    *,
    model: str = "anny",
    model_path: str | Path | None = None,
    head: HeadModel | None = None,
    landmark_builder: LandmarkBuilder | None = None,
    stride: int = 1,
    limit: int | None = None,
    focal: float | None = None,
    threads: int = 2,
    overlay: bool = True,
    max_gap: int | None = None,
    fps: float | None = None,
    config: FitConfig = FitConfig(),
    progress: bool = True,
    on_frame: Callable[[int], None] | None = None,
) -> tuple[Tracking, dict]:
    """:func:`track`, also returning the summary dict written to ``tracking.json``."""
    from avatar.io import FrameReader

    t_start = time.perf_counter()
    reader = FrameReader(source, stride=stride, limit=limit, dtype="uint8")
    info = reader.info
    video = info.kind == "video"
    clip_fps = float(reader.fps) if reader.fps else float(fps or 25.0)
    t0 = time.perf_counter()
    head = _head(model, model_path, head, landmark_builder)
    timings = {"load_model": time.perf_counter() - t0}
    landmarks, found = _detect(reader, source, threads, video, progress, on_frame, timings)
    t0 = time.perf_counter()
    frame_index = np.arange(len(found), dtype=np.int64) * stride
    sel = np.nonzero(found)[0]
    res = fit_landmarks(head, landmarks[sel], (info.width, info.height), frame_index=frame_index[sel], temporal=video,
                        focal=focal, config=config)  # fmt: skip
    timings["fit"] = time.perf_counter() - t0
    timings.update({f"fit_{k}": v for k, v in res.timings.items()})
    max_gap = max_gap if max_gap is not None else (max(1, int(round(0.5 * clip_fps))) if video else 0)
    tracking = _assemble(res, head, landmarks, found, frame_index, info, clip_fps, max_gap)
    if model_path is not None and head.name == "flame":
        tracking = dataclasses.replace(tracking, model_path=str(Path(model_path).resolve()),
                                       model_sha256=model_file_digest(model_path))  # fmt: skip
    summary = summarise(tracking, res.residual_px, res.iod_px)
    summary.update(kind=info.kind, focal_px=res.focal, focal_given=focal is not None)
    summary["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    # fps of the tracking itself: decode + landmarks + fit (the model load and files excluded).
    work = timings["decode"] + timings["landmarks"] + timings["fit"]
    summary["fps"] = len(found) / work if work > 0 else None
    if output is not None:
        _write(tracking, summary, head, source, Path(output), overlay, stride, limit, progress)
    summary["timings_s"]["total"] = round(time.perf_counter() - t_start, 4)
    if output is not None:
        from avatar.utils.files import atomic_write

        with atomic_write(Path(output) / "tracking.json", "w") as fh:
            json.dump(summary, fh, indent=2)
    return tracking, summary


def _detect(reader, source: str | Path, threads: int, video: bool, progress: bool,
            on_frame: Callable[[int], None] | None, timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(landmarks [N, 478, 3] float32, found [N] bool)`` of every frame of ``reader``, streamed
    (frames are never all held in memory); adds the decode and landmark seconds to ``timings``."""
    from tqdm import tqdm

    from avatar.perception import FaceTracker

    tracker = FaceTracker(num_threads=threads, detector="auto", static_images=not video)
    lms, found = _Rows((478, 3)), []
    t_decode = t_detect = 0.0
    it = iter(reader)
    bar = tqdm(total=len(reader) or None, unit="frame", desc="landmarks", delay=2.0, disable=not progress)
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        face = tracker.process(frame)
        t_decode += t1 - t0
        t_detect += time.perf_counter() - t1
        lms.append(face.landmarks)
        found.append(face.found)
        bar.update(1)
        if on_frame is not None:
            on_frame(len(found))
    bar.close()
    timings["decode"], timings["landmarks"] = t_decode, t_detect
    if not found:
        raise AvatarError(f"{source}: no frames to track (check --limit/--stride).")
    if not any(found):
        raise AvatarError(f"{source}: no face found in any of the {len(found)} frame(s); the tracker needs a visible face "
                          "(frontal to profile, not too small).")  # fmt: skip
    return lms.array(), np.array(found, bool)


class _Rows:
    """A float32 ``[N, *shape]`` array grown a block of rows at a time. A list of per-frame arrays
    would leave small long-lived blocks between the freed buffers of the decoded frames, and the
    heap, fragmented, grew with clip length by several times the landmarks' own size."""

    def __init__(self, shape: tuple[int, ...], block: int = 1024) -> None:
        self.shape, self.block, self.n, self.blocks = shape, block, 0, []

    def append(self, row: np.ndarray) -> None:
        if self.n % self.block == 0:
            self.blocks.append(np.empty((self.block, *self.shape), np.float32))
        self.blocks[-1][self.n % self.block] = row
        self.n += 1

    def array(self) -> np.ndarray:
        return np.concatenate(self.blocks)[: self.n] if self.blocks else np.empty((0, *self.shape), np.float32)


def _assemble(res, head: HeadModel, landmarks: np.ndarray, found: np.ndarray, frame_index: np.ndarray, info,
              clip_fps: float, max_gap: int) -> Tracking:  # fmt: skip
    """The :class:`Tracking` of every frame from the fit of the frames with a face (``res``): gaps
    of at most ``max_gap`` frames are interpolated, longer ones left at zero and not usable."""
    n, sel = len(found), np.nonzero(found)[0]

    def full(x: np.ndarray) -> np.ndarray:
        out = np.zeros((n, *x.shape[1:]), np.float32)
        out[sel] = x
        filled, _ = fill_gaps(out, found, max_gap)
        return filled

    _, interpolated = fill_gaps(np.zeros((n, 1), np.float32), found, max_gap)
    K = intrinsics_matrix(res.focal, info.width, info.height).astype(np.float32)
    return Tracking(
        frame_index=frame_index, tracked=found, interpolated=interpolated, landmarks=landmarks,
        expression=full(res.expression), jaw=full(res.jaw), neck=full(res.neck), eyes=full(res.eyes),
        global_orient=full(res.global_orient), transl=full(res.transl), K=np.repeat(K[None], n, 0),
        viewmat=camera_viewmat().astype(np.float32), shape=res.shape.astype(np.float32), model=head.name,
        expression_names=np.array(head.expression_names), image_size=np.array([info.width, info.height], np.int64),
        fps=clip_fps, source=str(info.path),
    )  # fmt: skip


def _write(tracking: Tracking, summary: dict, head: HeadModel, source: str | Path, out: Path, overlay: bool,
           stride: int, limit: int | None, progress: bool) -> None:  # fmt: skip
    """``out/tracking.npz`` and, with ``overlay``, the overlay video; their seconds go into ``summary``."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    save_tracking(tracking, out / "tracking.npz")
    if overlay:
        draw_overlay(tracking, head, source, out, stride=stride, limit=limit, progress=progress)
    summary["timings_s"]["write_and_overlay"] = round(time.perf_counter() - t0, 4)


def track(
    source: str | Path,
    output: str | Path | None = None,
    *,
    model: str = "anny",
    model_path: str | Path | None = None,
    head: HeadModel | None = None,
    landmark_builder: LandmarkBuilder | None = None,
    stride: int = 1,
    limit: int | None = None,
    focal: float | None = None,
    threads: int = 2,
    overlay: bool = True,
    config: FitConfig = FitConfig(),
    progress: bool = False,
) -> Tracking:
    """Track one person's head through a video, a folder of photos (one identity, an expression
    per photo) or a single photo.

    Args:
        source: video file, image folder, or image.
        output: folder for ``tracking.npz``, ``tracking.json`` and ``overlay.mp4``; ``None`` writes nothing.
        model, model_path: head model (``"anny"``, or ``"flame"`` with its .pkl); or pass ``head``.
        landmark_builder: builds a FLAME model's landmark embedding when the user cache has none
            (:func:`avatar.render.landmark_embedding.build_landmark_embedding`; once, ~30 s).
        stride, limit: use every n-th frame; stop after ``limit`` frames.
        focal: focal length in pixels when known (else estimated from a prior + the landmarks).
        threads: CPU threads for the landmark models.
        overlay: write ``overlay.mp4`` (wireframe over the frames) when ``output`` is given.
        config: solver knobs (:class:`~avatar.fitting.solver.FitConfig`).
    Raises:
        AvatarError: unreadable input, empty folder, no face in any frame, or a head model without a
            landmark embedding.

    >>> tr = avatar.track("clip.mp4", "out/")   # doctest: +SKIP
    """
    return track_clip(source, output, model=model, model_path=model_path, head=head, landmark_builder=landmark_builder,
                      stride=stride, limit=limit, focal=focal, threads=threads, overlay=overlay, config=config,
                      progress=progress)[0]  # fmt: skip


def summarise(tracking: Tracking, residual_px: np.ndarray, iod_px: np.ndarray) -> dict:
    """The ``tracking.json`` figures. Reprojection error of a frame = mean over its 478 landmarks of
    the 2D distance (pixels) between the detection and the fitted model's landmark; ``_pct_iod``
    divides it by that frame's detected inter-ocular distance (outer eye corners 33-263)."""
    per_frame = residual_px.mean(1)
    pct = 100.0 * per_frame / np.maximum(iod_px, 1e-6)
    return dict(
        source=tracking.source,
        model=tracking.model,
        image_size=[int(x) for x in tracking.image_size],
        frames=tracking.num_frames,
        frames_tracked=int(tracking.tracked.sum()),
        frames_interpolated=int(tracking.interpolated.sum()),
        reprojection_px_mean=float(per_frame.mean()),
        reprojection_px_median=float(np.median(per_frame)),
        reprojection_pct_iod_mean=float(pct.mean()),
        reprojection_pct_iod_median=float(np.median(pct)),
        reprojection_pct_iod_max=float(pct.max()),
        fps_clip=tracking.fps,
    )


# --- overlay ------------------------------------------------------------------------------------
# The overlay is for looking at the fit: 720p shows it, and encoding 1080p or 4K frames takes
# longer than tracking them.
OVERLAY_SHORT_SIDE = 720


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """World ``[..., 3]`` -> pixels ``[..., 2]`` with the tracker's camera (viewmat diag(1,-1,-1,1))."""
    d = -points[..., 2]
    u = K[0, 0] * points[..., 0] / d + K[0, 2]
    v = K[1, 1] * -points[..., 1] / d + K[1, 2]
    return np.stack([u, v], -1)


def draw_overlay(
    tracking: Tracking, head: HeadModel, source, out: Path, *, stride: int = 1, limit: int | None = None,
    progress: bool = True, chunk: int = 32, short_side: int = OVERLAY_SHORT_SIDE,
) -> Path:
    """``out/overlay.mp4`` (and ``overlay.png`` for a single image): the fitted head as a wireframe
    of its camera-facing triangles over each frame, detected landmarks as dots. Frames whose
    shorter side exceeds ``short_side`` pixels are scaled down to it first."""
    from tqdm import tqdm

    from avatar.io import FrameReader, VideoWriter, write_image

    reader = FrameReader(source, stride=stride, limit=limit, dtype="uint8")
    faces = head.faces.cpu().numpy()
    n = tracking.num_frames
    single = reader.info.kind == "image"
    scale = min(1.0, short_side / min(reader.info.width, reader.info.height))
    path = out / "overlay.mp4"
    bar = tqdm(total=n, unit="frame", desc="overlay", delay=2.0, disable=not progress)
    # A preview: a faster x264 preset and a little more compression than the default.
    with VideoWriter(path, fps=tracking.fps or 25.0, crf=23, preset="superfast") as writer:
        verts = None
        for i, frame in enumerate(reader):
            if i >= n:
                break
            if i % chunk == 0:
                sl = slice(i, min(i + chunk, n))
                with torch.no_grad():
                    verts = head(**tracking.head_params(frames=sl)).vertices.numpy()
            img = _draw_frame(_scaled(frame, scale), tracking, i, verts[i % chunk], faces, scale)
            writer.write(img)
            if single:
                write_image(out / "overlay.png", img)
            bar.update(1)
    bar.close()
    return path


def _scaled(frame: np.ndarray, scale: float) -> np.ndarray:
    """A writable RGB copy of ``frame``, resized by ``scale`` when below 1."""
    import cv2

    rgb = frame[..., :3]
    if scale >= 1.0:
        return np.ascontiguousarray(rgb).copy()
    h, w = rgb.shape[:2]
    # Area averaging only where bilinear would alias: it costs four times as much.
    interpolation = cv2.INTER_LINEAR if scale >= 0.5 else cv2.INTER_AREA
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)


def _draw_frame(img: np.ndarray, tracking: Tracking, i: int, verts: np.ndarray, faces: np.ndarray,
                scale: float) -> np.ndarray:  # fmt: skip
    """Frame ``i``'s wireframe and landmarks drawn on ``img`` (the frame resized by ``scale``)."""
    import cv2

    if tracking.tracked[i] or tracking.interpolated[i]:
        tri = (_project(verts, tracking.K[i]) * scale)[faces]  # [F, 3, 2]
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        # Image y points down, so triangles facing the camera turn clockwise on screen.
        front = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 0
        pts = np.round(tri[front] * 4).astype(np.int32)  # 2 bits of sub-pixel precision
        color = (90, 200, 255) if tracking.tracked[i] else (255, 170, 60)
        wire = img.copy()
        cv2.polylines(wire, list(pts), True, color, 1, cv2.LINE_AA, shift=2)
        img = cv2.addWeighted(img, 0.6, wire, 0.4, 0.0)  # see-through, so the face shows
    if tracking.tracked[i]:
        _dots(img, tracking.landmarks[i, :, :2] * scale, (0, 255, 0))
    else:
        label = "no face (interpolated)" if tracking.interpolated[i] else "no face"
        cv2.putText(img, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 0, 0), 2)
    return img


def _dots(img: np.ndarray, points: np.ndarray, color: tuple[int, int, int]) -> None:
    """Plus-shaped dots at ``points [N, 2]`` (what ``cv2.circle`` draws at radius 1), drawn in one
    go rather than one call per landmark."""
    h, w = img.shape[:2]
    xy = np.round(points).astype(np.int64)
    for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
        x, y = xy[:, 0] + dx, xy[:, 1] + dy
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        img[y[inside], x[inside]] = color
