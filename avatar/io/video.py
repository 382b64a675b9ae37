"""Frames in and out: video files, image folders, single images; overlay videos out.

Decoding and encoding use PyAV (``av`` on PyPI), whose wheels bundle FFmpeg (with libx264), so a
fresh machine needs nothing else. Frames stream one at a time; a video is never held in memory.

Frames are HWC RGB. ``dtype="float32"`` (the default, the project's convention) gives values in
[0, 1]; ``dtype="uint8"`` skips the conversion and is what the perception models eat directly
(about 4x less memory traffic) -- use it for landmark runs.

Rotation: phone videos store a display matrix ("rotate" tag); frames are turned so they come out
the way a player shows them. Images honour their EXIF orientation.
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from avatar.errors import AvatarError
from avatar.utils.files import atomic_path

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".webm", ".mkv", ".mpg", ".mpeg", ".wmv", ".flv", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class VideoInfo:
    """What a frame source holds. ``width``/``height`` are of the frames as yielded (after
    rotation). ``num_frames`` counts source frames (a container's estimate for videos, 0 when it
    does not say); ``fps`` is None for image folders and single images."""

    path: Path
    kind: str  # "video", "images" or "image"
    width: int
    height: int
    fps: float | None
    num_frames: int
    rotation: int  # 0/90/180/270: degrees counter-clockwise the stored frames are turned to show upright


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AvatarError("PyAV is not installed; install it with `pip install av`.") from e
    return av


def _convert(frame: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return frame
    return frame.astype(np.float32) * np.float32(1.0 / 255.0)


def _rotate(frame: np.ndarray, degrees_ccw: int) -> np.ndarray:
    k = (degrees_ccw // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k)) if k else frame


def read_image(path: str | Path, dtype: str = "float32") -> np.ndarray:
    """One image file -> HWC RGB (EXIF orientation applied), whatever its mode: 16-bit and float
    greyscale are scaled to 8 bits, palette and transparent images composited over white.
    Unreadable files -> AvatarError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path}: no such image file; check the path.")
    try:
        with Image.open(path) as im:
            arr = _rgb8(ImageOps.exif_transpose(im))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise AvatarError(f"{path}: not a readable image ({e}); pass a PNG/JPEG file, a folder of "
                          "images, or a video.") from e
    return _convert(np.ascontiguousarray(arr), dtype)


def _rgb8(im) -> np.ndarray:
    """A Pillow image of any mode -> ``[H, W, 3]`` uint8 RGB."""
    from PIL import Image

    if im.mode == "F" or im.mode.startswith("I"):  # greyscale deeper than 8 bits
        # Pillow's convert("RGB") clips these at 255 instead of scaling: a 16-bit photo turns white.
        grey = np.asarray(im, dtype=np.float64)
        peak = float(grey.max(initial=0.0))
        if im.mode.startswith("I;16") or peak > 255.0:  # "I" and "F" do not say their range
            full = 65535.0
        elif im.mode == "F" and peak <= 1.0:
            full = 1.0
        else:
            full = 255.0
        grey = np.clip(np.rint(grey * (255.0 / full)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Save an HWC RGB image (uint8, or float in [0, 1]) atomically; format from the suffix."""
    from PIL import Image

    path = Path(path)
    arr = image if image.dtype == np.uint8 else np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


class FrameReader:
    """Stream frames from a video file, an image folder, or one image.

    >>> with FrameReader("clip.mp4", stride=2, limit=100, dtype="uint8") as frames:  # doctest: +SKIP
    ...     print(frames.info.fps, frames.info.width, frames.info.height)
    ...     for frame in frames:
    ...         ...

    ``stride`` keeps every n-th source frame, ``limit`` caps how many frames are yielded.
    Iterating twice decodes twice (nothing is cached).
    """

    def __init__(self, source: str | Path, stride: int = 1, limit: int | None = None, dtype: str = "float32") -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
        self.source = Path(source)
        self.stride, self.limit, self.dtype = stride, limit, dtype
        self._images: list[Path] = []
        self.skipped: list[Path] = []  # images of a folder that did not decode (each warned about once)
        if not self.source.exists():
            raise AvatarError(f"{self.source}: no such file or folder; check the input path.")
        if self.source.is_dir():
            self._images = sorted(
                (p for p in self.source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                key=_natural_key,
            )
            if not self._images:
                raise AvatarError(f"{self.source}: folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                  "pass a folder of frames, an image or a video file.")
            first = next(self._readable_images(), (None, None))[1]
            if first is None:
                names = ", ".join(p.name for p in self._images[:3]) + (", ..." if len(self._images) > 3 else "")
                raise AvatarError(f"{self.source}: none of its {len(self._images)} images is readable ({names}); "
                                  "pass a folder of PNG/JPEG photos or frames.")
            self.info = VideoInfo(self.source, "images", first.shape[1], first.shape[0], None, len(self._images), 0)
        elif self.source.suffix.lower() in IMAGE_SUFFIXES:
            first = read_image(self.source, "uint8")
            self._images = [self.source]
            self.info = VideoInfo(self.source, "image", first.shape[1], first.shape[0], None, 1, 0)
        else:
            self.info = self._probe_video()

    # -- video ---------------------------------------------------------------------------------
    def _open_container(self):
        av = _av()
        if self.source.stat().st_size == 0:
            raise AvatarError(f"{self.source}: the file is empty (0 bytes); re-copy or re-export the video.")
        try:
            container = av.open(str(self.source), mode="r")
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise AvatarError(f"{self.source}: not a readable video ({e}); pass an mp4/mov/avi/webm "
                              "file, a folder of images, or an image. If it is a video, it may be "
                              "truncated or corrupt: re-export it.") from e
        if not container.streams.video:
            container.close()
            raise AvatarError(f"{self.source}: the file has no video stream; pass a video with picture.")
        return container

    def _probe_video(self) -> VideoInfo:
        av = _av()
        container = self._open_container()
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else None
            frames = int(stream.frames or 0)
            if not frames and stream.duration and stream.time_base and fps:
                frames = int(round(float(stream.duration * stream.time_base) * fps))
            # The display rotation travels on decoded frames (display-matrix side data); read the
            # first frame to learn it and the true size. Decoding one frame also catches files
            # that open but hold no picture.
            try:
                first = next(container.decode(stream), None)
            except av.FFmpegError as e:
                raise AvatarError(f"{self.source}: the video cannot be decoded ({e}); it may be "
                                  "truncated or corrupt: re-export it.") from e
            if first is None:
                raise AvatarError(f"{self.source}: the video holds no decodable frames; re-export it.")
            rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
            w, h = first.width, first.height
            if rotation % 180:
                w, h = h, w
        finally:
            container.close()
        return VideoInfo(self.source, "video", w, h, fps, frames, rotation)

    def _iter_video(self) -> Iterator[np.ndarray]:
        av = _av()
        container = self._open_container()
        kept = 0
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame/slice threads inside FFmpeg's decoder
            index = -1
            decoder = container.decode(stream)
            while True:
                try:
                    frame = next(decoder)
                except StopIteration:
                    break
                except av.FFmpegError as e:
                    raise AvatarError(f"{self.source}: decoding failed after frame {index} ({e}); the "
                                      "file is truncated or corrupt: re-export it, or pass --limit "
                                      "to use the frames before the damage.") from e
                index += 1
                if index % self.stride:
                    continue
                if self.limit is not None and kept >= self.limit:
                    break
                rgb = frame.to_ndarray(format="rgb24")
                rotation = int(round(getattr(frame, "rotation", 0) or 0))
                kept += 1
                yield _convert(_rotate(rgb, rotation), self.dtype)
        finally:
            container.close()
        if index < 0:
            raise AvatarError(f"{self.source}: the video holds no decodable frames; re-export it.")

    # -- images --------------------------------------------------------------------------------
    def _readable_images(self) -> Iterator[tuple[Path, np.ndarray]]:
        """``(path, frame)`` of each image of the folder that decodes. An unreadable one is skipped
        with a warning naming it, so one damaged photo does not cost the others."""
        for path in self._images:
            try:
                frame = read_image(path, self.dtype)
            except AvatarError as e:
                if path not in self.skipped:
                    self.skipped.append(path)
                    log.warning("skipping %s: not a readable image (%s)", path, e.__cause__ or e)
                continue
            yield path, frame

    def _iter_images(self) -> Iterator[np.ndarray]:
        if self.info.kind == "image":
            if self.limit != 0:
                yield read_image(self.source, self.dtype)
            return
        # The stride counts readable images, so a frame's index (i * stride) names the same image
        # for a reader with stride 1, as later stages read the folder again that way. It means
        # every image is decoded, also the ones the stride leaves out.
        kept = 0
        for n, (path, frame) in enumerate(self._readable_images()):
            if self.limit is not None and kept >= self.limit:
                break
            if n % self.stride:
                continue
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise AvatarError(f"{path}: size {frame.shape[1]}x{frame.shape[0]} differs from the first "
                                  f"image's {self.info.width}x{self.info.height}; frames of one clip "
                                  "must share a size.")
            kept += 1
            yield frame

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._iter_video() if self.info.kind == "video" else self._iter_images()

    def __len__(self) -> int:
        """Frames this reader will yield (for videos, from the container's frame count)."""
        n = -(-self.info.num_frames // self.stride)
        return n if self.limit is None else min(n, self.limit)

    @property
    def fps(self) -> float | None:
        """Frame rate of the yielded frames (the source rate divided by ``stride``)."""
        return None if self.info.fps is None else self.info.fps / self.stride

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        return None


def read_frames(source: str | Path, stride: int = 1, limit: int | None = None, dtype: str = "float32") -> FrameReader:
    """Shorthand for :class:`FrameReader`."""
    return FrameReader(source, stride=stride, limit=limit, dtype=dtype)


def probe(source: str | Path) -> VideoInfo:
    """Size, fps, frame count and rotation of a source without decoding it all."""
    return FrameReader(source).info


class VideoWriter:
    """Write HWC RGB frames (uint8 or float in [0, 1]) to a video, atomically: frames go to a
    temporary file beside ``path`` that replaces ``path`` only when the writer closes without an
    error. Codec: H.264 (libx264, yuv420p) when FFmpeg has it, else MPEG-4 part 2; ``crf`` and
    ``preset`` are libx264's (a faster preset encodes sooner into a larger file).

    >>> with VideoWriter("out/overlay.mp4", fps=30) as w:  # doctest: +SKIP
    ...     w.write(frame)
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 20, rotation: int = 0, preset: str = "veryfast") -> None:
        if not fps or fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps, self.crf, self.rotation, self.preset = fps, crf, rotation, preset
        self._stack = contextlib.ExitStack()
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._tmp: Path | None = None
        self.frames_written = 0

    def __enter__(self) -> "VideoWriter":
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def _open(self, width: int, height: int) -> None:
        av = _av()
        self._container = av.open(str(self._tmp), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(codec, rate=rate)
        stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(self.crf), "preset": self.preset}
        if self.rotation:
            stream.set_display_rotation(self.rotation)
        self._stream = stream
        self._size = (width, height)

    def write(self, frame: np.ndarray) -> None:
        av = _av()
        if self._tmp is None:
            raise RuntimeError("use VideoWriter as a context manager: `with VideoWriter(...) as w:`")
        img = frame if frame.dtype == np.uint8 else np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
        h, w = img.shape[:2]
        if self._container is None:
            self._open(w, h)
        elif (w, h) != self._size:
            raise ValueError(f"frame size {w}x{h} differs from the video's {self._size[0]}x{self._size[1]}")
        if w % 2 or h % 2:
            img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[..., :3]), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._container is not None:
                if exc_type is None:
                    for packet in self._stream.encode():
                        self._container.mux(packet)
                self._container.close()
            if exc_type is None and self.frames_written == 0:
                raise AvatarError(f"{self.path}: no frames were written; nothing to save.")
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)  # drops the temporary file
            raise
        self._stack.__exit__(exc_type, exc, tb)  # renames on success, removes on error
