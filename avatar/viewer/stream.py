"""Server-side rendering for the browser viewer: each connected tab's camera is rendered on the
server and shown as that tab's background image (viser's ``set_background_image``), the
convention of gsplat's example viewers (nerfview). What the tab shows is then exactly what our
renderer draws.

One worker thread renders for every tab: rendering is CPU-bound (or GPU-bound), so a thread per
tab would only compete for the same cores. Scheduling:

* latest wins: each tab keeps only its newest camera and the streamer only the newest scene
  frame, so camera or slider drags that arrive faster than images are made coalesce, never queue;
* a change (camera or scene) is drawn at once at a reduced resolution: as many pixels as fit
  the frame budget ``1 / target_fps`` (at most ``move_pixels``), judged by a line ``seconds =
  fixed + per_pixel * pixels`` fitted to the recent renders. When even the fixed part (projecting
  and sorting the Gaussians) overruns the budget, pixels may cost as much again: fewer would buy
  little speed for a much worse image;
* once a tab's view has held still for ``settle_s``, it is drawn again at its canvas size (at most
  ``max_side`` on the longer side) with a better JPEG quality;
* tabs with a fresh change go before refinements, the tab served least recently first.

:class:`ViewBaker` watches the same cameras for the client-side splat mode: it reports a tab's
camera once it has held still, so the splats' colour and culling can be baked for that view.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from avatar.viewer.camera import ViewCamera

__all__ = ["StreamSettings", "Shown", "ViewStreamer", "ViewBaker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSettings:
    """How :class:`ViewStreamer` trades resolution for frame rate (see the module docstring)."""

    target_fps: float = 20.0
    move_pixels: int = 512 * 512
    min_pixels: int = 128 * 128
    max_side: int = 1600
    settle_s: float = 0.25
    jpeg_moving: int = 75
    jpeg_still: int = 92


@dataclass(frozen=True)
class Shown:
    """One image queued for a tab: the scene frame it shows (``version``), its size, whether it is
    the settled full-resolution one, seconds spent (render, encode, queue) and when it was queued
    (``time.monotonic()``)."""

    client: int
    version: int
    width: int
    height: int
    final: bool
    seconds: float
    at: float


class _Tab:
    def __init__(self, handle) -> None:
        self.handle = handle
        self.camera: ViewCamera | None = None
        self.changed = (-math.inf, -math.inf)  # times of the last two changes (camera or scene)
        self.shown_key: tuple | None = None  # (frame version, camera key) of the last image sent
        self.final = False  # that image was the settled, full-resolution one
        self.served = -math.inf


class _TabWatcher:
    """Tracks every connected tab's newest camera (viser calls back on connect, disconnect and
    camera messages) and runs one worker thread (``_loop``) woken by ``self._cond``."""

    name = "avatar-viewer-tabs"

    def __init__(self, server, max_side: int | None) -> None:
        self.server = server
        self._max_side = max_side
        self._cond = threading.Condition()
        self._tabs: dict[int, _Tab] = {}
        self._closed = False
        server.on_client_connect(self._connect)
        server.on_client_disconnect(self._disconnect)
        for client in list(server.get_clients().values()):
            self._connect(client)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def camera_of(self, client_id: int) -> ViewCamera | None:
        with self._cond:
            tab = self._tabs.get(client_id)
            return None if tab is None else tab.camera

    def _connect(self, client) -> None:
        with self._cond:
            if client.client_id in self._tabs:
                return
            self._tabs[client.client_id] = _Tab(client)
        client.camera.on_update(lambda camera, cid=client.client_id: self._on_camera(cid, camera))
        try:  # the tab may have sent its camera before the callback was attached
            self._on_camera(client.client_id, client.camera)
        except AssertionError:  # viser: no camera message yet
            pass

    def _disconnect(self, client) -> None:
        with self._cond:
            self._tabs.pop(client.client_id, None)

    def _on_camera(self, client_id: int, camera) -> None:
        cam = ViewCamera.from_viser(camera, self._max_side)
        with self._cond:
            tab = self._tabs.get(client_id)
            if tab is None or (tab.camera is not None and tab.camera.key == cam.key):
                return  # a repeat (the browser re-sends on resize and focus)
            tab.camera = cam
            tab.changed = (tab.changed[1], time.monotonic())
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the viewer keeps serving its GUI; the log says what broke
            log.exception("%s stopped", self.name)

    def _loop(self) -> None:
        raise NotImplementedError


class ViewStreamer(_TabWatcher):
    """Renders every connected tab's camera with ``render(frame, camera) -> [H, W, 3] uint8`` and
    sends the image to that tab. ``frame`` is whatever :meth:`set_frame` was last given (the
    scene: e.g. the posed Gaussians); nothing is drawn before the first one.

    Args:
        server: the ``viser.ViserServer``.
        render: draws ``frame`` as seen by ``camera`` (a :class:`ViewCamera`, at the size to draw).
        settings: resolution and timing (:class:`StreamSettings`).
    """

    name = "avatar-viewer-render"

    def __init__(self, server, render: Callable[[Any, ViewCamera], np.ndarray],
                 settings: StreamSettings = StreamSettings()) -> None:  # fmt: skip
        self.settings = settings
        self._render = render
        self._frame: Any = None
        self._version = 0
        self._costs: collections.deque[tuple[int, float]] = collections.deque(maxlen=32)  # (pixels, seconds)
        self.shown: collections.deque[Shown] = collections.deque(maxlen=2000)
        super().__init__(server, settings.max_side)

    # --- scene -------------------------------------------------------------------------------
    def set_frame(self, frame: Any) -> int:
        """Show ``frame`` from now on (every tab is redrawn); returns its version number."""
        with self._cond:
            self._frame = frame
            self._version += 1
            now = time.monotonic()
            for tab in self._tabs.values():
                tab.changed = (tab.changed[1], now)
            self._cond.notify_all()
            return self._version

    @property
    def version(self) -> int:
        return self._version

    def render_client(self, client_id: int, width: int | None = None, height: int | None = None) -> np.ndarray:
        """The tab's current view of the current frame, drawn now on the calling thread at
        ``width`` x ``height`` (default: its canvas size) for screenshots and recordings."""
        with self._cond:
            frame, tab = self._frame, self._tabs.get(client_id)
            camera = None if tab is None else tab.camera
        if frame is None or camera is None:
            raise RuntimeError("this tab has not reported its camera yet")
        if width is not None and height is not None:
            camera = camera.with_size(width, height)
        return self._render(frame, camera)

    def wait_shown(self, version: int, *, final: bool = False, client_id: int | None = None, after: float = -math.inf,
                   timeout: float = 30.0) -> Shown | None:  # fmt: skip
        """Block until an image of frame ``version`` or later (the settled one, with ``final``) was
        sent (to ``client_id``, or to any tab; queued after the ``time.monotonic()`` ``after``); the
        first such image, or ``None`` after ``timeout``."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for s in self.shown:  # the first such image
                    if s.version >= version and (s.final or not final) and client_id in (None, s.client) and s.at > after:
                        return s
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    # --- the worker ----------------------------------------------------------------------------
    def _cost_model(self) -> tuple[float, float] | None:
        """``(fixed seconds, seconds per pixel)`` of a render, fitted to the recent ones (reduced
        and full-size); with a single size seen, all of the time is put on the pixels."""
        if not self._costs:
            return None
        pixels, seconds = np.asarray(self._costs, np.float64).T
        if pixels.max() > 1.5 * pixels.min():
            per_pixel, fixed = np.polyfit(pixels, seconds, 1)
            if per_pixel > 0:
                return max(float(fixed), 0.0), float(per_pixel)
        return 0.0, float(seconds.sum() / pixels.sum())

    def _budget_pixels(self) -> int:
        """Pixels to draw a change with: see the module docstring."""
        s, model = self.settings, self._cost_model()
        if model is None:
            return s.move_pixels
        fixed, per_pixel = model
        fit = max(1.0 / s.target_fps - fixed, fixed) / per_pixel
        return int(min(s.move_pixels, max(s.min_pixels, fit)))

    def _next(self, now: float) -> tuple[_Tab, ViewCamera, bool] | float | None:
        """The most urgent job ``(tab, camera at the size to draw, final)``; else the seconds until
        a refinement is due, or ``None`` when there is nothing to do."""
        if self._frame is None:
            return None
        fresh, due, wait = [], [], None
        for tab in self._tabs.values():
            if tab.camera is None:
                continue
            if tab.shown_key != (self._version, tab.camera.key):
                fresh.append(tab)
            elif not tab.final:
                left = tab.changed[1] + self.settings.settle_s - now
                if left <= 0:
                    due.append(tab)
                else:
                    wait = left if wait is None else min(wait, left)
        if fresh:
            tab = min(fresh, key=lambda t: t.served)
            return tab, tab.camera.with_pixels(self._budget_pixels()), False
        if due:
            tab = min(due, key=lambda t: t.served)
            return tab, tab.camera, True
        return wait

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    job = self._next(time.monotonic())
                    if isinstance(job, tuple):
                        break
                    self._cond.wait(job)
                tab, camera, final = job
                frame, key = self._frame, (self._version, tab.camera.key)
            t0, sent = time.perf_counter(), False
            try:
                image = self._render(frame, camera)
                quality = self.settings.jpeg_still if final else self.settings.jpeg_moving
                tab.handle.scene.set_background_image(image, format="jpeg", jpeg_quality=quality)
                sent = True
            except Exception:  # one bad frame (or a tab closing mid-send) must not stop the others
                log.exception("rendering a view failed")
            seconds = time.perf_counter() - t0
            with self._cond:
                # marked as done even when it failed: retried once when the view settles, not in a loop
                tab.shown_key, tab.final, tab.served = key, final, time.monotonic()
                if sent:
                    self._costs.append((camera.pixels, seconds))
                    self.shown.append(Shown(tab.handle.client_id, key[0], camera.width, camera.height, final, seconds, tab.served))
                self._cond.notify_all()


class ViewBaker(_TabWatcher):
    """Calls ``bake(camera)`` (a :class:`ViewCamera`) on its own thread each time a tab's camera
    has held still for ``settle_s`` after a change: the newest such camera of any tab wins."""

    name = "avatar-viewer-bake"

    def __init__(self, server, bake: Callable[[ViewCamera], None], settle_s: float = 0.25) -> None:
        self._bake, self._settle_s = bake, settle_s
        self._baked: tuple | None = None
        super().__init__(server, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    tabs = [t for t in self._tabs.values() if t.camera is not None]
                    newest = max(tabs, key=lambda t: t.changed[1], default=None)
                    if newest is not None and newest.camera.key != self._baked:
                        left = newest.changed[1] + self._settle_s - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                camera = newest.camera
                self._baked = camera.key
            try:
                self._bake(camera)
            except Exception:
                log.exception("baking the view failed")
