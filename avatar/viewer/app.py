"""The browser viewer: a viser server showing a head (an avatar rendered on the server, splats or
a mesh drawn by the browser) with expression and pose controls, playback of tracked performances,
screenshots and recordings.

Threading: GUI callbacks only write the wanted parameters and wake one update worker; the worker
evaluates the head model and poses what is drawn, always for the newest parameters (slider drags
that arrive faster than updates are coalesced, never queued). :meth:`AvatarViewer.update_now` does
the same work synchronously (benchmarks, tests). When the server renders, a second worker
(:class:`avatar.viewer.stream.ViewStreamer`) draws each tab's camera for the newest pose.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar.errors import AvatarError
from avatar.viewer.camera import FRONTAL_FOV_DEG, FRONTAL_PITCH_DEG, frontal_framing
from avatar.viewer.motion import Motion, load_motion
from avatar.viewer.paths import OutFolder
from avatar.viewer.scene import MeshScene, SceneUpdate

__all__ = ["AvatarViewer", "Applied", "UpdateTiming", "EXPRESSION_GROUPS", "group_expressions"]

log = logging.getLogger(__name__)

EXPRESSION_GROUPS = (
    ("Brows", ("brow",)),
    ("Eyes", ("eye",)),
    ("Jaw", ("jaw",)),
    ("Mouth", ("mouth",)),
    ("Cheeks / nose", ("cheek", "nose")),
    ("Tongue", ("tongue",)),
)


def group_expressions(names: list[str]) -> dict[str, list[str]]:
    """ARKit channel names -> GUI groups (by prefix); anything else goes to "Other"."""
    groups: dict[str, list[str]] = {title: [] for title, _ in EXPRESSION_GROUPS}
    for name in names:
        for title, prefixes in EXPRESSION_GROUPS:
            if name.lower().startswith(prefixes):
                groups[title].append(name)
                break
        else:
            groups.setdefault("Other", []).append(name)
    return {k: v for k, v in groups.items() if v}


@dataclass(frozen=True)
class UpdateTiming:
    """One update: seconds spent (model forward + geometry + queueing for send) and bytes queued."""

    seconds: float
    forward_seconds: float
    bytes_sent: int
    messages: int


@dataclass(frozen=True)
class Applied:
    """One update of the worker: it showed every request numbered up to ``request``, was queued
    for the browser at ``at`` (``time.monotonic()``) and, when the server renders, is scene frame
    ``version`` of :class:`avatar.viewer.stream.ViewStreamer`."""

    request: int
    at: float
    version: int | None


# pose sliders: (label, parameter, index into its flattened value, min, max)
_POSE_SLIDERS = (
    ("jaw open", "jaw", 0, -0.1, 0.5),
    ("jaw sideways", "jaw", 1, -0.2, 0.2),
    ("neck pitch", "neck", 0, -0.6, 0.6),
    ("neck yaw", "neck", 1, -0.8, 0.8),
    ("neck roll", "neck", 2, -0.5, 0.5),
    ("eyes pitch", "eyes", None, -0.4, 0.4),  # both eyes, x
    ("eyes yaw", "eyes", None, -0.5, 0.5),  # both eyes, y
)


class AvatarViewer:
    """A running viewer. Build it with a head model and what to draw; it serves until :meth:`close`.

    Args:
        head: a head model (``avatar.models``).
        draw: what to draw, a factory ``(server, rest_vertices [V, 3]) -> drawable`` (a
            :mod:`avatar.viewer.scene` class: ``RenderedSplats``, ``RepresentationSplats``,
            ``SplatScene``), or ``None`` for the shaded mesh drawn by the browser.
        shape: ``[S]`` identity to show (default: the model's neutral identity).
        out: the output folder (for paths typed in the GUI and for captures), or ``None``.
        motions: performances offered for playback, by label (first one selected).
        host, port: where to serve (127.0.0.1 unless you mean to share it on a network).
        save_dir: where screenshots and recordings go.
    """

    def __init__(
        self,
        head,
        *,
        draw=None,
        shape: Tensor | None = None,
        out: OutFolder | None = None,
        motions: dict[str, Motion] | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        save_dir: Path | None = None,
        verbose: bool = False,
    ) -> None:
        import viser

        self.head = head
        self.out = out if out is not None else OutFolder(None)
        self.save_dir = Path(save_dir) if save_dir is not None else (self.out.root or Path.cwd())
        self.motions: dict[str, Motion] = dict(motions or {})
        dt = head.dtype
        self._shape = (torch.zeros(1, head.num_shape, dtype=dt) if shape is None
                       else torch.as_tensor(shape, dtype=dt).reshape(1, -1))  # fmt: skip
        self._params: dict[str, Tensor] = {k: v for k, v in head.zero_params(1).items() if k != "shape"}
        self._lock = threading.Lock()  # guards _params
        self._update_lock = threading.Lock()  # one scene update at a time
        self._wake = threading.Condition()
        self._requested = self._done = 0
        self._closed = False
        self.timings: collections.deque[UpdateTiming] = collections.deque(maxlen=500)
        self.applied: collections.deque[Applied] = collections.deque(maxlen=2000)
        self.last_bake: SceneUpdate | None = None
        self._recording: threading.Thread | None = None
        self._record_stop = threading.Event()
        self._baker = None

        self.server = viser.ViserServer(host=host, port=port, verbose=verbose)
        try:
            self.server.scene.set_up_direction("+y")
            with torch.no_grad():
                rest = head(shape=self._shape).vertices[0]
            self.rest_vertices = rest
            self._frame_camera(rest)
            # The head's rigid pose (global_orient, transl) moves this parent frame instead of every
            # vertex/Gaussian: a tracked head turning sends one transform, not the whole avatar.
            self._root = self.server.scene.add_frame("/avatar", show_axes=False)
            self._root_pose: tuple | None = None
            self.drawable = draw(self.server, rest) if draw is not None else MeshScene(self.server.scene, head)
            if hasattr(self.drawable, "bake_view"):  # browser splats: colour and cull for a still view
                from avatar.viewer.stream import ViewBaker

                self._baker = ViewBaker(self.server, self._bake)
            self._build_gui()
            self.update_now()
            self._worker = threading.Thread(target=self._update_loop, name="avatar-viewer-update", daemon=True)
            self._worker.start()
            self._player = threading.Thread(target=self._play_loop, name="avatar-viewer-play", daemon=True)
            self._player.start()
        except BaseException:
            self._stop_workers()
            self.server.stop()
            raise

    # --- serving ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    @property
    def renders_on_server(self) -> bool:
        """True when the server renders each tab's view (the default for an avatar)."""
        return bool(getattr(self.drawable, "renders_on_server", False))

    @property
    def render_device(self) -> torch.device | None:
        """Where the server renders, or ``None`` when the browser draws."""
        return self.drawable.device if self.renders_on_server else None

    def close(self) -> None:
        self._closed = True
        self._record_stop.set()
        with self._wake:
            self._wake.notify_all()
        # The update, playback and render threads may be sending (a status line right after an
        # update): let them finish before the server goes, or viser warns of messages on a closed
        # connection.
        for thread in (self._recording, getattr(self, "_worker", None), getattr(self, "_player", None)):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)
        self._stop_workers()
        self.server.stop()

    def _stop_workers(self) -> None:
        """The server-side render worker and the view baker, whichever runs."""
        for worker in (getattr(getattr(self, "drawable", None), "stream", None), self._baker):
            if worker is not None:
                worker.close()

    def __enter__(self) -> "AvatarViewer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _frame_camera(self, rest: Tensor) -> None:
        """Open on the view of ``avatar render --camera frontal`` (:mod:`avatar.viewer.camera`)."""
        centre, distance = frontal_framing(rest)
        pitch = np.radians(FRONTAL_PITCH_DEG)
        cam = self.server.initial_camera
        cam.look_at = tuple(float(x) for x in centre)
        cam.position = tuple(float(x) for x in centre + distance * np.array([0.0, np.sin(pitch), np.cos(pitch)]))
        cam.up = (0.0, 1.0, 0.0)
        cam.fov = np.radians(FRONTAL_FOV_DEG)
        cam.near, cam.far = 0.01, 100.0
        self.scene_centre, self.scene_distance = centre, distance

    # --- parameters and updates ------------------------------------------------------------
    def params(self) -> dict[str, Tensor]:
        with self._lock:
            return {k: v.clone() for k, v in self._params.items()}

    def set_params(self, **params: Tensor) -> int:
        """Set head parameters (``expression [1, E]``, ``jaw [1, 3]``, ...) and schedule an update;
        returns its number (:meth:`request_update`)."""
        with self._lock:
            for name, value in params.items():
                if name not in self._params:
                    raise AvatarError(f"unknown head parameter {name!r}; known: {', '.join(self._params)}")
                self._params[name] = torch.as_tensor(value, dtype=self.head.dtype).reshape(self._params[name].shape)
        return self.request_update()

    def request_update(self) -> int:
        """Schedule an update; returns its number: the first :attr:`applied` entry whose
        ``request`` is at least this number shows it."""
        with self._wake:
            self._requested += 1
            self._wake.notify_all()
            return self._requested

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every requested update has been sent (True) or ``timeout`` passed."""
        end = time.monotonic() + timeout
        with self._wake:
            while self._done < self._requested:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def update_now(self) -> UpdateTiming:
        """Evaluate the head for the current parameters and send what changed (synchronously)."""
        with self._update_lock:
            t0 = time.perf_counter()
            params = self.params()
            rigid = (params.pop("global_orient"), params.pop("transl"))
            with torch.no_grad():
                vertices = self.head(shape=self._shape, **params).vertices[0]
            t1 = time.perf_counter()
            sent: SceneUpdate = self.drawable.update(vertices, expression=params.get("expression"), root=_rigid(*rigid))
            self._place_root(*rigid)
            timing = UpdateTiming(time.perf_counter() - t0, t1 - t0, sent.bytes_sent, sent.messages)
            self.timings.append(timing)
            return timing

    def _place_root(self, global_orient: Tensor, transl: Tensor) -> None:
        """Apply the head model's global rotation (about the model origin) and translation to the
        avatar's parent frame; sent only when it changes."""
        from avatar.models.rotations import axis_angle_to_matrix
        from avatar.representations.geometry import matrix_to_quat

        pose = (tuple(global_orient.reshape(-1).tolist()), tuple(transl.reshape(-1).tolist()))
        if pose == self._root_pose:
            return
        wxyz = matrix_to_quat(axis_angle_to_matrix(global_orient.reshape(1, 3).double()))[0]
        self._root.wxyz = tuple(float(x) for x in wxyz)
        self._root.position = pose[1]
        self._root_pose = pose

    def _bake(self, camera) -> None:
        """Browser splats: colour and cull for ``camera`` (a tab's, held still)."""
        with self._update_lock:
            self.last_bake = self.drawable.bake_view(camera.viewmat)

    def _update_loop(self) -> None:
        last_status = 0.0
        while True:
            with self._wake:
                while self._done >= self._requested and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                target = self._requested
            try:
                self.update_now()
            except Exception:  # keep serving; the log says what broke
                log.exception("viewer update failed")
            stream = getattr(self.drawable, "stream", None)  # only this thread sets its frames
            self.applied.append(Applied(target, time.monotonic(), None if stream is None else stream.version))
            with self._wake:
                self._done = max(self._done, target)
                self._wake.notify_all()
            now = time.monotonic()
            if now - last_status > 0.5 and hasattr(self, "_status"):
                last_status = now
                self._status.content = self._status_line()

    def _status_line(self) -> str:
        recent = list(self.timings)[-50:]
        ms = 1e3 * np.mean([t.seconds for t in recent])
        if not self.renders_on_server:
            kb = np.mean([t.bytes_sent for t in recent]) / 1e3
            return f"update {ms:.1f} ms · {kb:.0f} KB sent (mean of last {len(recent)})"
        shown = list(self.drawable.stream.shown)[-20:]
        if not shown:
            return f"update {ms:.1f} ms · rendered on the server"
        last = shown[-1]
        draw = 1e3 * np.mean([s.seconds for s in shown])
        return (f"update {ms:.1f} ms · image {draw:.0f} ms, last {last.width}x{last.height}"
                f"{'' if last.final else ' (moving)'} · rendered on the server")

    # --- GUI -------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui = self.server.gui
        self.sliders: dict = {}
        self._status = gui.add_markdown("update: -")
        with gui.add_folder("Expressions (ARKit)", expand_by_default=True):
            reset = gui.add_button("Reset expression and pose")
            reset.on_click(lambda _: self.reset())
            for title, names in group_expressions(self.head.expression_names).items():
                with gui.add_folder(title, expand_by_default=False):
                    for name in names:
                        s = gui.add_slider(name, min=0.0, max=1.0, step=0.01, initial_value=0.0)
                        s.on_update(self._on_expression(name))
                        self.sliders[name] = s
        self.pose_sliders: dict = {}
        with gui.add_folder("Pose", expand_by_default=False):
            for label, param, index, lo, hi in _POSE_SLIDERS:
                s = gui.add_slider(label, min=lo, max=hi, step=0.01, initial_value=0.0)
                s.on_update(self._on_pose())
                self.pose_sliders[label] = s
        with gui.add_folder("Playback", expand_by_default=bool(self.motions)):
            options = list(self.motions) or ["(none)"]
            self.motion_choice = gui.add_dropdown("performance", options=options, initial_value=options[0])
            self.motion_path = gui.add_text("tracking file", initial_value="")
            load = gui.add_button("Load tracking file (inside OUT)")
            load.on_click(lambda _: self._gui_load_motion())
            self.playing = gui.add_checkbox("play", initial_value=False)
            n = max(1, max((m.num_frames for m in self.motions.values()), default=1))
            self.frame = gui.add_slider("frame", min=0, max=max(1, n - 1), step=1, initial_value=0)
            self.speed = gui.add_slider("speed", min=0.1, max=2.0, step=0.05, initial_value=1.0)
            self.head_pose = gui.add_checkbox("apply tracked head pose", initial_value=False)
            self.frame.on_update(lambda _: self._apply_frame())
            self.motion_choice.on_update(lambda _: self._on_motion_choice())
            self._message = gui.add_markdown("")
        with gui.add_folder("Capture", expand_by_default=False):
            shot = gui.add_button("Screenshot")
            shot.on_click(lambda e: self._gui_capture(e, self.screenshot))
            self.record = gui.add_checkbox("record video", initial_value=False)
            self.record.on_update(lambda e: self._on_record(e))

    def _on_expression(self, name: str):
        index = self.head.expression_names.index(name)

        def callback(event) -> None:
            with self._lock:
                expr = self._params["expression"].clone()
                expr[0, index] = float(event.target.value)
                self._params["expression"] = expr
            self.request_update()

        return callback

    def _on_pose(self):
        def callback(_event) -> None:
            values = {label: float(s.value) for label, s in self.pose_sliders.items()}
            with self._lock:
                for label, param, index, _, _ in _POSE_SLIDERS:
                    p = self._params[param].clone()
                    if param == "eyes":
                        p[0, :, 0 if label.endswith("pitch") else 1] = values[label]
                    else:
                        p[0, index] = values[label]
                    self._params[param] = p
            self.request_update()

        return callback

    def reset(self) -> None:
        """All expressions and poses back to zero (sliders too)."""
        self.playing.value = False
        for s in [*self.sliders.values(), *self.pose_sliders.values()]:
            s.value = 0.0
        with self._lock:
            self._params = {k: v for k, v in self.head.zero_params(1).items() if k != "shape"}
        self.request_update()

    # --- playback --------------------------------------------------------------------------
    def add_motion(self, label: str, motion: Motion) -> None:
        self.motions[label] = motion
        self.motion_choice.options = list(self.motions)
        self.motion_choice.value = label

    def load_motion_path(self, path: str | Path) -> Motion:
        """Load a tracking file named in the GUI: refused unless inside OUT or given on the
        command line (:meth:`OutFolder.resolve`)."""
        real = self.out.resolve(path)
        motion = load_motion(real)
        root = self.out.root
        self.add_motion(str(real.relative_to(root)) if root is not None and real.is_relative_to(root) else str(real), motion)
        return motion

    def _gui_load_motion(self) -> None:
        try:
            m = self.load_motion_path(self.motion_path.value)
            self._message.content = f"loaded {m.num_frames} frames from {m.source.name}"
        except AvatarError as e:
            self._message.content = f"**{e}**"

    def _on_motion_choice(self) -> None:
        m = self.motions.get(self.motion_choice.value)
        if m is not None:
            self.frame.max = max(1, m.num_frames - 1)
            self.frame.value = min(int(self.frame.value), m.num_frames - 1)
            self._apply_frame()

    def _apply_frame(self) -> None:
        m = self.motions.get(self.motion_choice.value)
        if m is None:
            return
        frame = min(int(self.frame.value), m.num_frames - 1)
        self.set_params(**m.params_for(frame, self.head.expression_names, head_pose=bool(self.head_pose.value)))

    def _play_loop(self) -> None:
        position = 0.0
        last = time.monotonic()
        while not self._closed:
            time.sleep(1.0 / 60.0)
            now, dt = time.monotonic(), time.monotonic() - last
            last = now
            m = self.motions.get(self.motion_choice.value)
            if not self.playing.value or m is None:
                position = float(self.frame.value)
                continue
            position = (position + dt * m.fps * float(self.speed.value)) % m.num_frames
            if int(position) != int(self.frame.value):
                self.frame.value = int(position)  # its callback applies the frame

    # --- capture ---------------------------------------------------------------------------
    def _capture_client(self, event=None):
        client = getattr(event, "client", None)
        if client is None:
            clients = list(self.server.get_clients().values())
            if not clients:
                raise AvatarError("no browser is connected; open the viewer's URL first")
            client = clients[0]
        return client

    def grab(self, client=None, height: int | None = None, width: int | None = None) -> np.ndarray:
        """The browser's current view: ``[H, W, 3]`` uint8, rendered by the server at full quality
        when it renders the views, else by the browser."""
        client = self._capture_client() if client is None else client
        h = height or int(client.camera.image_height) or 720
        w = width or int(client.camera.image_width) or 720
        if self.renders_on_server:
            return self.drawable.render_client(client.client_id, w, h)
        image = client.get_render(height=h, width=w, transport_format="png", timeout=30)
        rgb = image[..., :3].astype(np.float32)
        if image.shape[-1] == 4:  # PNG: transparent background -> white (the viewer's background)
            a = image[..., 3:4].astype(np.float32) / 255.0
            rgb = rgb * a + 255.0 * (1 - a)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def screenshot(self, client=None) -> Path:
        from avatar.io import write_image

        path = self.save_dir / "screenshots" / time.strftime("view-%Y%m%d-%H%M%S.png")
        path = _unique(path)
        write_image(path, self.grab(client))
        return path

    def _gui_capture(self, event, fn) -> None:
        try:
            path = fn(self._capture_client(event))
            self._message.content = f"wrote {path}"
        except Exception as e:  # shown in the GUI; the server keeps running
            self._message.content = f"**capture failed: {e}**"

    def _on_record(self, event) -> None:
        if self.record.value and self._recording is None:
            client = self._capture_client(event)
            self._record_stop.clear()
            self._recording = threading.Thread(target=self._record_loop, args=(client,), daemon=True)
            self._recording.start()
        elif not self.record.value and self._recording is not None:
            self._record_stop.set()
            self._recording.join(timeout=30)
            self._recording = None

    def _record_loop(self, client, fps: float = 15.0) -> None:
        from avatar.io import VideoWriter

        path = _unique(self.save_dir / "recordings" / time.strftime("view-%Y%m%d-%H%M%S.mp4"))
        try:
            with VideoWriter(path, fps=fps) as writer:
                h = int(client.camera.image_height) or 720
                w = int(client.camera.image_width) or 720
                h, w = h - h % 2, w - w % 2
                while not self._record_stop.is_set():
                    t = time.monotonic()
                    writer.write(self.grab(client, h, w))
                    self._record_stop.wait(max(0.0, 1.0 / fps - (time.monotonic() - t)))
            self._message.content = f"wrote {path} ({writer.frames_written} frames)"
        except Exception as e:
            self._message.content = f"**recording failed: {e}**"


def _rigid(global_orient: Tensor, transl: Tensor) -> np.ndarray:
    """``[4, 4]`` head -> world of the head model's rigid pose (rotation about the model origin)."""
    from avatar.models.rotations import axis_angle_to_matrix

    T = np.eye(4)
    T[:3, :3] = axis_angle_to_matrix(global_orient.reshape(1, 3).double())[0].numpy()
    T[:3, 3] = transl.reshape(3).double().numpy()
    return T


def _unique(path: Path) -> Path:
    k, candidate = 1, path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate
