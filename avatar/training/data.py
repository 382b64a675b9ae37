"""Training data: the tracking file (``OUT/tracking.npz``), the frames of its source at training
resolution, and a foreground matte per frame.

The tracking is read by the fitting stage's :func:`avatar.fitting.load_tracking`. Mattes come from
``OUT/mattes.npz`` (``mattes [N, H, W]`` uint8 or float, any size; written by whoever knows
better, e.g. a synthetic clip) or else from :class:`avatar.perception.matte.PersonMatte`.
Frames are cropped to a square around the head (:func:`head_crop`, from the tracked 2D
landmarks; the intrinsics are shifted to match) before resizing, so a portrait phone video does not
spend most of the training pixels on the torso. Decoded, cropped, resized frames and mattes are
cached in ``OUT/cache/`` (atomic writes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar.errors import AvatarError
from avatar.fitting.tracking import Tracking, load_tracking
from avatar.io.npy_rows import NpyRows
from avatar.models.base import FRAME_PARAMS
from avatar.representations.base import BODY
from avatar.utils.files import atomic_folder

#: FaceMesh's chin point (the body band starts below it).
CHIN = 152


@dataclass
class Clip:
    """Frames, mattes and per-frame parameters of one tracked clip, at training resolution.

    Attributes:
        images: ``[N, H, W, 3]`` uint8.  mattes: ``[N, H, W]`` uint8 (255 = foreground). Both are read
            from the on-disk cache when indexed (:class:`~avatar.io.npy_rows.NpyRows`).
        params: name -> ``[N, ...]`` float32 tensors (expression, jaw, neck, eyes, global_orient, transl;
            and ``body`` when the body motion was tracked, :func:`body_motion`).
        Ks: ``[N, 3, 3]`` (scaled to the training size).  viewmat: ``[4, 4]``.
        shape: ``[S]`` identity.  train_ids / test_ids: row indices (test = the last ``holdout``).
    """

    images: np.ndarray | NpyRows
    mattes: np.ndarray | NpyRows
    params: dict[str, Tensor]
    Ks: Tensor
    viewmat: Tensor
    shape: Tensor
    model: str
    fps: float
    train_ids: np.ndarray
    test_ids: np.ndarray
    source: str
    model_path: str = ""  # the FLAME file the clip was tracked with ("" for the built-in model)
    model_sha256: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])

    def target(self, rows: np.ndarray | list[int], background: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(composited ground truth [B, H, W, 3], matte [B, H, W, 1])`` as float on ``device``."""
        img = torch.from_numpy(self.images[rows]).to(device).float() / 255.0
        m = torch.from_numpy(self.mattes[rows]).to(device).float()[..., None] / 255.0
        return img * m + background.to(device) * (1.0 - m), m


def split_holdout(n: int, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Train rows and the last ``ceil(holdout * n)`` rows (at least 1 when n > 1) held out."""
    n_test = 0 if holdout <= 0 or n < 2 else max(1, math.ceil(holdout * n))
    return np.arange(n - n_test), np.arange(n - n_test, n)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    if img.shape[1] == w and img.shape[0] == h:
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def head_crop(landmarks: np.ndarray, image_size: tuple[int, int], faces: float) -> tuple[int, int, int, int]:
    """``(x0, y0, w, h)``: the part of the frame to train on, in source pixels.

    A square ``faces`` times the face's size (the median extent of the 2D landmarks
    ``[N, L, 2+]`` over the frames) centred on the median face centre, at most the frame's short
    side and shifted to lie inside it. A portrait phone video keeps the head and shoulders
    instead of spending most training pixels on the torso; a wide shot zooms in on the head.
    The whole frame when ``faces <= 0`` or there are no landmarks.
    """
    W0, H0 = image_size
    pts = np.asarray(landmarks, np.float64)[..., :2]
    if faces <= 0 or pts.size == 0:
        return 0, 0, W0, H0
    lo, hi = pts.min(1), pts.max(1)
    extent = float(np.median((hi - lo).max(1)))
    if not np.isfinite(extent) or extent <= 0:  # no usable landmarks (e.g. a model without an embedding)
        return 0, 0, W0, H0
    cx, cy = np.median((lo + hi) / 2, axis=0)
    side = int(round(min(W0, H0, max(faces * extent, 16.0))))
    x0 = int(np.clip(round(cx - side / 2), 0, W0 - side))
    y0 = int(np.clip(round(cy - side / 2), 0, H0 - side))
    return x0, y0, side, side


def _crop(img: np.ndarray, box: tuple[int, int, int, int], source_size: tuple[int, int]) -> np.ndarray:
    """``box`` (in source pixels) out of ``img``, which may be stored at another size."""
    x0, y0, w, h = box
    sx, sy = img.shape[1] / source_size[0], img.shape[0] / source_size[1]
    # Contiguous: OpenCV's resize wants it, and a whole-frame "crop" of a strided view stays valid.
    return np.ascontiguousarray(img[round(y0 * sy): round((y0 + h) * sy), round(x0 * sx): round((x0 + w) * sx)])


def load_clip(out_dir: str | Path, resolution: int, holdout: float = 0.15, max_frames: int | None = None,
              progress: bool = True, head_crop_faces: float = 0.0, track_body: bool = False) -> Clip:  # fmt: skip
    """Read ``out_dir/tracking.npz`` and the frames of its source (see the module docstring),
    cropped to :func:`head_crop` (``head_crop_faces`` face sizes; 0 = whole frames). With
    ``track_body`` the body's motion is measured from the mattes (``params["body"]``, :func:`body_motion`)."""
    out_dir = Path(out_dir)
    tr = load_tracking(out_dir / "tracking.npz")
    rows = np.nonzero(tr.usable)[0]
    if max_frames is not None:
        rows = rows[:max_frames]
    if rows.size < 1:
        raise AvatarError(f"{out_dir}/tracking.npz has no usable (tracked) frame; nothing to train on")
    src_size = tuple(int(x) for x in tr.image_size)
    lms = tr.landmarks[rows][np.asarray(tr.tracked, bool)[rows]]
    box = head_crop(lms, src_size, head_crop_faces)
    W0, H0 = box[2], box[3]
    s = resolution / max(W0, H0)
    W, H = max(1, round(W0 * s)), max(1, round(H0 * s))
    whole = box == (0, 0, *src_size)
    name = f"frames_{W}x{H}_{len(rows)}" + ("" if whole else f"_crop{'_'.join(map(str, box))}")
    images, mattes = _frame_cache(out_dir / "cache" / name, out_dir, tr, rows, box, (W, H), progress)
    params = {k: v for k, v in tr.head_params(rows).items() if k != "shape"}
    Ks = torch.as_tensor(np.asarray(tr.K, np.float32)[rows]).clone()
    Ks[:, 0, 2] -= box[0]
    Ks[:, 1, 2] -= box[1]
    Ks[:, 0, :] *= W / W0
    Ks[:, 1, :] *= H / H0
    train_ids, test_ids = split_holdout(len(rows), holdout)
    if track_body:
        chin = (lms[:, CHIN, 1] - box[1]) * (H / H0) if lms.size else np.zeros(0)
        params[BODY] = torch.as_tensor(body_motion(mattes, chin, train_ids, Ks.numpy(), np.asarray(tr.viewmat, np.float64),
                                                   params["transl"].numpy()), dtype=torch.float32)  # fmt: skip
    return Clip(images, mattes, params, Ks, torch.as_tensor(np.asarray(tr.viewmat, np.float32)),
                torch.as_tensor(np.asarray(tr.shape, np.float32)), tr.model, tr.fps, train_ids, test_ids, tr.source,
                tr.model_path, tr.model_sha256)


def body_motion(mattes: np.ndarray, chin_rows: np.ndarray, reference: np.ndarray, Ks: np.ndarray, viewmat: np.ndarray,
                transl: np.ndarray) -> np.ndarray:  # fmt: skip
    """``[N, 3]`` world translation of the body in each frame away from its mean over ``reference``.

    The 2D shift of the matte below the chin (:func:`avatar.perception.body.body_shifts`; the band
    starts at the 95th percentile of the tracked chin rows ``chin_rows [M]``) lifted to 3D at the
    depth of the mean reference head (``transl [N, 3]`` in world, ``viewmat [4, 4]``
    world-to-camera, ``Ks [N, 3, 3]`` at the mattes' size): a translation parallel to the image.
    Zeros when no chin was tracked or the crop shows nothing below it.
    """
    from avatar.perception.body import body_shifts

    n = len(mattes)
    if len(chin_rows) == 0 or len(reference) == 0:
        return np.zeros((n, 3))
    shifts = body_shifts(mattes, int(np.ceil(np.percentile(chin_rows, 95))), reference)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    depth = float((R @ transl[reference].mean(0) + t)[2])
    cam = np.zeros((n, 3))
    cam[:, 0] = shifts[:, 0] * depth / Ks[:, 0, 0]
    cam[:, 1] = shifts[:, 1] * depth / Ks[:, 1, 1]
    return cam @ R  # R^T cam, row-wise: a direction, so no translation


def _frame_cache(folder: Path, out_dir: Path, tr: Tracking, rows: np.ndarray, box: tuple[int, int, int, int],
                 size: tuple[int, int], progress: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The training frames and mattes (``[N, H, W, 3]``, ``[N, H, W]`` uint8) of tracking rows
    ``rows``, read row by row from ``folder`` (one ``.npy`` per array, :class:`NpyRows`): a clip of
    any length costs page cache, not resident memory. Built once, frame by frame, and published whole."""
    frame_index = np.asarray(tr.frame_index, np.int64)[rows]
    try:
        if np.array_equal(np.load(folder / "frame_index.npy"), frame_index):
            return NpyRows(folder / "images.npy"), NpyRows(folder / "mattes.npy")
    except (OSError, ValueError):
        pass  # absent or unreadable: (re)build it
    W, H = size
    src_size = tuple(int(x) for x in tr.image_size)
    with atomic_folder(folder) as tmp:
        with NpyRows.create(tmp / "images.npy", (len(rows), H, W, 3), np.uint8) as images:
            _decode_frames(out_dir, tr, frame_index, box, src_size, images)
            with NpyRows.create(tmp / "mattes.npy", (len(rows), H, W), np.uint8) as mattes:
                _mattes(out_dir, tr, rows, images, progress, box, src_size, mattes)
        np.save(tmp / "frame_index.npy", frame_index)
    return NpyRows(folder / "images.npy"), NpyRows(folder / "mattes.npy")


def _decode_frames(out_dir: Path, tr: Tracking, frame_index: np.ndarray, box: tuple[int, int, int, int],
                   src_size: tuple[int, int], images: NpyRows) -> None:  # fmt: skip
    """Fills ``images`` with the source frames ``frame_index``, cropped to ``box`` and resized."""
    from avatar.io.video import FrameReader

    source = Path(tr.source)
    if not source.is_absolute() and not source.exists():
        source = out_dir / source
    H, W = images.shape[1:3]
    wanted = {int(f): i for i, f in enumerate(frame_index)}
    found = np.zeros(len(frame_index), bool)
    with FrameReader(source, dtype="uint8") as reader:
        last = int(frame_index.max())
        for k, frame in enumerate(reader):
            if k in wanted:
                images[wanted[k]] = _resize(_crop(frame, box, src_size), W, H)
                found[wanted[k]] = True
            if k >= last:
                break
    if not found.all():
        raise AvatarError(f"{source}: frames {frame_index[~found][:5].tolist()}... named by the tracking are missing")


def _mattes(out_dir: Path, tr: Tracking, rows: np.ndarray, images: NpyRows, progress: bool,
            box: tuple[int, int, int, int], src_size: tuple[int, int], out: NpyRows) -> None:  # fmt: skip
    """Fills ``out [N, H, W]`` with the person mattes of ``images`` (``OUT/mattes.npz`` when a
    synthetic clip brought its own, else :class:`~avatar.perception.matte.PersonMatte`)."""
    n, H, W = images.shape[:3]
    given = out_dir / "mattes.npz"
    if given.is_file():
        with np.load(given) as z:
            m = z["mattes"]
        if m.shape[0] != tr.num_frames:
            raise AvatarError(f"{given}: {m.shape[0]} mattes for {tr.num_frames} tracked frames")
        for i, x in enumerate(m[rows]):
            x = (x * 255.0).round().astype(np.uint8) if x.dtype != np.uint8 else x
            out[i] = _resize(_crop(x, box, src_size), W, H)
        return
    from tqdm import tqdm

    from avatar.perception.matte import PersonMatte

    matte = PersonMatte()
    for i in tqdm(range(n), desc="matte", disable=not progress, leave=False):
        out[i] = np.clip(np.rint(matte(images[i]) * 255.0), 0, 255).astype(np.uint8)
