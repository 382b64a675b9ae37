"""Live frame sources for driving: a video file or image folder paced at its own frame rate, a
webcam (OpenCV), or Live Link Face packets on a UDP port, each read on its own thread into a
one-item :class:`Mailbox` that keeps the newest frame (a frame replaced before it was taken counts
as dropped: a consumer that falls behind gets the newest frame, and nothing queues)."""
from __future__ import annotations

import itertools
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar.errors import AvatarError
from avatar.io.livelink import DEFAULT_PORT, LiveLinkReceiver
from avatar.io.video import FrameReader


@dataclass(frozen=True)
class Item:
    """One frame from a source."""

    index: int  # frame number in the source
    timestamp: float  # seconds in the source's time
    read_at: float  # time.perf_counter() when it was read (latency is counted from here)
    payload: Any  # [H, W, 3] uint8 RGB frame, or an avatar.io.livelink.LiveLinkFrame


class Mailbox:
    """A one-item slot between two threads (source -> tracking, tracking -> viewer). ``put``
    replaces an item still waiting (counted in ``dropped``); :meth:`wait_empty` lets the producer
    wait instead."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify_all()

    def wait_empty(self, stop: threading.Event) -> None:
        """Until the waiting item is taken (or ``stop``)."""
        with self._cond:
            while self._item is not None and not stop.is_set():
                self._cond.wait(0.1)

    def take(self, timeout: float) -> Any:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """Closed by the source, and nothing left to take."""
        with self._cond:
            return self._closed and self._item is None


class Source:
    """A frame source read by :meth:`pump` on its own thread; ``frames_in`` counts what it read."""

    kind = "video"
    fps = 25.0
    realtime = True  # frames come at their own pace and are dropped when processing falls behind

    def __init__(self) -> None:
        self._read = 0
        self.error: BaseException | None = None

    @property
    def frames_in(self) -> int:
        return self._read

    def pump(self, box: Mailbox, stop: threading.Event) -> None:
        try:
            self._pump(box, stop)
        except BaseException as e:  # handed to the main thread, which writes what it has, then raises
            self.error = e
        finally:
            box.close()

    def _pump(self, box: Mailbox, stop: threading.Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class VideoSource(Source):
    """A video file or image folder, at its own frame rate (``realtime``) or as fast as it is taken."""

    def __init__(self, path: Path, realtime: bool) -> None:
        super().__init__()
        self.reader = FrameReader(path, dtype="uint8")
        self.fps = float(self.reader.fps or 25.0)  # an image folder plays at 25 fps, as tracking assumes
        self.realtime = realtime

    def _pump(self, box: Mailbox, stop: threading.Event) -> None:
        t0, frames = time.perf_counter(), iter(self.reader)
        for i in itertools.count():
            if not self.realtime:  # the next frame is read once the last is taken: no frame waits
                box.wait_empty(stop)
            frame = next(frames, None)
            if frame is None or stop.is_set():
                return
            if self.realtime:
                time.sleep(max(0.0, t0 + i / self.fps - time.perf_counter()))
            self._read += 1
            box.put(Item(i, i / self.fps, time.perf_counter(), frame))


class WebcamSource(Source):
    """A camera through OpenCV's VideoCapture; frames as they come (always real time)."""

    kind = "webcam"

    def __init__(self, index: int) -> None:
        super().__init__()
        self.capture = _open_camera(index)
        self.fps = float(self.capture.get(_cv2().CAP_PROP_FPS) or 30.0)

    def _pump(self, box: Mailbox, stop: threading.Event) -> None:
        cv2, t0 = _cv2(), time.perf_counter()
        while not stop.is_set():
            ok, bgr = self.capture.read()
            if not ok:
                raise AvatarError("the camera stopped sending frames")
            now = time.perf_counter()
            box.put(Item(self._read, now - t0, now, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            self._read += 1

    def close(self) -> None:
        self.capture.release()


class LiveLinkSource(Source):
    """Live Link Face packets on a UDP port: the newest of those waiting is taken."""

    kind = "livelink"

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.receiver = LiveLinkReceiver(host, port)
        self.fps = 60.0  # the app's default; packets say their own rate

    @property
    def frames_in(self) -> int:
        return self.receiver.received

    def _pump(self, box: Mailbox, stop: threading.Event) -> None:
        t0, n = time.perf_counter(), 0
        while not stop.is_set():
            frame = self.receiver.poll(timeout=0.05)
            if frame is None:
                continue
            now = time.perf_counter()
            self.fps = frame.fps or self.fps
            box.put(Item(n, now - t0, now, frame))
            n += 1

    def close(self) -> None:
        self.receiver.close()


def _cv2():
    import cv2

    return cv2


def _open_camera(index: int):
    """An opened VideoCapture of camera ``index``, or a one-line error naming the device."""
    device = Path(f"/dev/video{index}")
    if sys.platform.startswith("linux") and not device.exists():
        raise AvatarError(f"webcam:{index}: no camera ({device} does not exist); pass another webcam:INDEX, "
                          "a video file, or livelink")  # fmt: skip
    cv2 = _cv2()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its own warnings would add lines
    capture = cv2.VideoCapture(index)
    if not capture.isOpened() or not capture.read()[0]:
        capture.release()
        raise AvatarError(f"webcam:{index}: the camera ({device}) could not be opened or sent no frame")
    return capture


def open_source(spec: str, realtime: bool, livelink_host: str) -> Source:
    """``webcam[:INDEX]``, ``livelink[:PORT]``, or a video file / image folder."""
    kind, _, arg = spec.partition(":")
    if kind == "webcam" and not Path(spec).exists():
        if arg and not arg.isdigit():
            raise AvatarError(f"--source {spec}: expected webcam or webcam:INDEX (a number)")
        return WebcamSource(int(arg or 0))
    if kind == "livelink" and not Path(spec).exists():
        if arg and not (arg.isdigit() and 0 < int(arg) < 65536):
            raise AvatarError(f"--source {spec}: expected livelink or livelink:PORT (a UDP port number)")
        return LiveLinkSource(livelink_host, int(arg or DEFAULT_PORT))
    return VideoSource(Path(spec), realtime)
