"""`avatar drive`: an avatar (or the plain head model) driven live from a webcam, a video or image
folder, or an iPhone running Live Link Face; optionally streamed on to Unreal over Live Link.

Threads, a pipeline of one-item mailboxes: one reads the source (a video paced at its frame rate, a
camera, a UDP port); the main thread takes the newest frame and tracks it
(:class:`avatar.fitting.online.OnlineTracker`), sends it on over Live Link and records it; one more
thread hands the newest tracked frame to the viewer (or, headless, computes what the viewer would),
so the next frame is tracked while the last one is shown. A frame that arrives while another waits
replaces it and counts as dropped: when processing falls behind, the newest frame is processed and
nothing queues.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from avatar.errors import AvatarError
from avatar.io.live import Item, Mailbox, Source, open_source


@dataclass
class Drive:
    """Drive an avatar live: from a webcam, a video or image folder, or an iPhone (Live Link Face).
    The avatar (OUT's, or the plain head model) moves in the browser viewer, or headless with
    --no-viewer; --record writes what was driven as a tracking.npz that `avatar view`, `avatar render
    --drive` and `avatar export` replay."""

    out: tyro.conf.Positional[Path | None] = None
    """Output folder with a trained avatar (OUT/avatar) or a tracking (OUT/tracking.npz); without
    it, the plain head model (--model)."""
    source: str = tyro.MISSING
    """webcam[:INDEX], a video file or an image folder, or livelink[:PORT] (Live Link Face packets
    on UDP, default port 11111)."""
    model: Literal["anny", "flame"] = "anny"
    """Head model without OUT: the built-in AnnyHead or a FLAME .pkl (--model-path)."""
    model_path: Path | None = None
    """FLAME .pkl file; only with --model flame."""
    viewer: bool = True
    """Show the avatar in the browser viewer; --no-viewer runs headless."""
    host: str = "127.0.0.1"
    """Viewer address (127.0.0.1 unless you mean to share it)."""
    port: int = 8080
    """Viewer port (the next free one if taken)."""
    client_splats: bool = False
    """Let the browser draw the Gaussians (as `avatar view --client-splats`: see its --help for
    what differs) instead of streaming images rendered here."""
    realtime: bool = True
    """A video plays at its own frame rate (frames are dropped when processing falls behind);
    --no-realtime processes every frame as fast as possible."""
    duration: float | None = None
    """Stop after this many seconds (a video also stops at its end; Ctrl-C stops any source)."""
    record: Path | None = None
    """Write what was driven to this .npz, in tracking.npz's layout."""
    summary: Path | None = None
    """Write frames_in, frames_processed, frames_dropped, fps, latency_ms_p50/p95 to this .json."""
    send_livelink: str | None = None
    """HOST:PORT: stream the driven ARKit weights, head and eye rotations as Live Link Face packets
    (e.g. to Unreal's Live Link)."""
    livelink_host: str = "127.0.0.1"
    """Address a livelink source listens on; a phone on your network needs its interface or 0.0.0.0."""
    calibrate: float = 0.0
    """Seconds at the start during which the driver holds a neutral face: expressions then drive
    the avatar relative to it (avatar neutral + driver - driver neutral). 0: absolute."""
    same_person: bool = False
    """The driver is OUT's own person: use OUT/tracking.npz's identity and focal length instead of
    fitting them on the first seconds."""
    identity_seconds: float = 1.0
    """A new driver's identity is fitted on this many seconds of the first frames."""
    threads: int = 1
    """CPU threads of the landmark models."""

    def run(self) -> None:
        import torch

        self._check()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the per-frame solve is many small ops: one thread is fastest
        try:
            self._drive()
        finally:  # a command run in-process (tests, notebooks) leaves torch as it found it
            torch.set_num_threads(threads)

    def _drive(self) -> None:
        target = load_target(self.out, self.model, self.model_path)
        with contextlib.ExitStack() as stack:
            source = open_source(self.source, self.realtime, self.livelink_host)
            stack.callback(source.close)
            sink = self._sink(target)
            stack.callback(sink.close)
            driver = Driver(self, target, source, sink)
            stack.callback(driver.close)
            print(f"avatar drive: driving {self.out or 'the ' + self.model + ' head'} from {self.source} "
                  "(Ctrl+C to stop)", flush=True)
            stats = drive_loop(source, driver, self.duration)
        self._write(driver, stats)
        if stats.error is not None:
            raise stats.error

    def _check(self) -> None:
        if self.duration is not None and not self.duration > 0:
            raise AvatarError(f"--duration must be > 0 seconds (got {self.duration})")
        if self.calibrate < 0 or self.identity_seconds < 0:
            raise AvatarError("--calibrate and --identity-seconds must be >= 0 seconds")
        if self.record is not None and self.record.suffix != ".npz":
            raise AvatarError(f"--record {self.record}: the record is a tracking file; name it *.npz")
        if self.same_person and self.out is None:
            raise AvatarError("--same-person takes the identity from OUT/tracking.npz: pass OUT")
        if self.send_livelink is not None:
            host_port(self.send_livelink, "--send-livelink")

    def _sink(self, target: "Target"):
        if not self.viewer:
            return HeadlessSink(target)
        from avatar.viewer import is_loopback, open_viewer

        if not is_loopback(self.host):
            print(f"avatar drive: warning: serving on {self.host}; anyone who can reach it can see the avatar",
                  file=sys.stderr)  # fmt: skip
        viewer = open_viewer(self.out, model=self.model, model_path=self.model_path, host=self.host, port=self.port,
                             client_splats=self.client_splats)  # fmt: skip
        print(f"avatar drive: open {viewer.url} in a browser (Ctrl+C to stop)", flush=True)
        return ViewerSink(viewer)

    def _write(self, driver: "Driver", stats: "LoopStats") -> None:
        import json

        from avatar.fitting import save_tracking
        from avatar.utils.files import atomic_write

        summary = stats.summary()
        if self.record is not None:
            if driver.frames:
                save_tracking(driver.record(), self.record)
            else:
                print(f"avatar drive: nothing was driven; {self.record} not written", file=sys.stderr)
        if self.summary is not None:
            with atomic_write(self.summary, "w") as fh:
                json.dump(summary, fh, indent=2)
        print(f"avatar drive: {summary['frames_processed']} of {summary['frames_in']} frames processed "
              f"({summary['frames_dropped']} dropped), {summary['fps']:.1f} fps, latency p50 "
              f"{summary['latency_ms_p50']:.0f} ms, p95 {summary['latency_ms_p95']:.0f} ms")  # fmt: skip


def host_port(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; a bad one is a one-line error."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AvatarError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:11111")
    return host.strip("[]"), int(port)


# --- what is driven -----------------------------------------------------------------------------
@dataclass
class Target:
    """The head the tracker fits, and what is shown: a trained avatar, or the head with an identity."""

    head: Any  # head model with a landmark embedding
    avatar: Any | None  # avatar.representations.Avatar, or None for the plain head model
    shape: Any  # [S] identity shown (torch)
    tracking: Any | None  # OUT/tracking.npz (avatar.fitting.Tracking), if there is one


def load_target(out: Path | None, model: str, model_path: Path | None) -> Target:
    import torch

    from avatar.fitting import load_tracking

    avatar = tracking = None
    if out is not None:
        if not out.is_dir():
            raise AvatarError(f"{out}: no such folder; pass the output folder of `avatar reconstruct` / `avatar train`, "
                              "or no OUT to drive the plain head model")  # fmt: skip
        if (out / "avatar" / "avatar.json").is_file() or (out / "avatar.json").is_file():
            from avatar.representations import load_avatar

            avatar = load_avatar(out)
        if (out / "tracking.npz").is_file():
            tracking = load_tracking(out)
        if avatar is None and tracking is None:
            raise AvatarError(f"{out}: holds neither an avatar (OUT/avatar) nor a tracking (OUT/tracking.npz)")
    if avatar is not None:
        head, shape = avatar.head, avatar.shape
    else:
        from avatar.models import load_head_model
        from avatar.render.landmark_embedding import build_landmark_embedding

        if model != "flame" and model_path is not None:
            raise AvatarError("--model-path is only used with --model flame")
        head = load_head_model(model, None if model_path is None else str(model_path),
                               landmark_builder=build_landmark_embedding)  # fmt: skip
        shape = torch.zeros(head.num_shape) if tracking is None else torch.as_tensor(tracking.shape)
    if head.landmark_faces.numel() == 0:
        raise AvatarError(f"the {head.name} head model has no landmark embedding, which tracking needs: run "
                          f"`avatar track --model {head.name} --model-path MODEL` once (it builds and caches it)")  # fmt: skip
    return Target(head, avatar, shape.to(head.dtype), tracking)


class HeadlessSink:
    """No viewer: each update computes what the viewer would send (the head's vertices and, for a
    trained avatar, its Gaussians), so headless figures include that work."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def update(self, params: dict) -> None:
        import torch

        t = self.target
        local = {k: v for k, v in params.items() if k not in ("global_orient", "transl")}
        with torch.no_grad():
            if t.avatar is not None:
                t.avatar.splats(local, sh_degree=0)
            else:
                t.head(shape=t.shape[None], **local)

    def close(self) -> None:
        pass


class ViewerSink:
    """The browser viewer: the head turns in place (the viewer orbits a head at the origin; the
    driver's distance to its camera means nothing there). An update is waited for, so latency
    counts until it is sent."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer

    def update(self, params: dict) -> None:
        self.viewer.set_params(**{k: v for k, v in params.items() if k != "transl"})
        self.viewer.wait_idle(timeout=1.0)

    def close(self) -> None:
        self.viewer.close()


# --- the loop ------------------------------------------------------------------------------------
@dataclass
class LoopStats:
    """What the loop measured; :meth:`summary` is the --summary file."""

    frames_in: int = 0
    latencies: list = field(default_factory=list)  # seconds, from a frame read to its update sent
    wall: float = 0.0
    cpu: float = 0.0  # CPU seconds of the process (every thread) during the loop
    error: BaseException | None = None

    def summary(self) -> dict:
        n = len(self.latencies)
        ms = 1e3 * np.asarray(self.latencies) if n else np.full(1, np.nan)
        return {"frames_in": self.frames_in, "frames_processed": n, "frames_dropped": max(0, self.frames_in - n),
                "fps": n / self.wall if self.wall > 0 else 0.0, "latency_ms_p50": float(np.percentile(ms, 50)),
                "latency_ms_p95": float(np.percentile(ms, 95)), "seconds": self.wall, "cpu_seconds": self.cpu}  # fmt: skip


@dataclass(frozen=True)
class Update:
    """A tracked frame on its way to the viewer."""

    params: dict  # the head model's named parameters
    read_at: float  # Item.read_at of the frame it was tracked from


def drive_loop(source: Source, driver: "Driver", duration: float | None) -> LoopStats:
    """Take the newest frame and drive with it until the source ends, ``duration`` passes, or
    Ctrl-C / SIGTERM; the source's and the sink's threads are stopped and joined either way."""
    frames, updates, stop, stats = Mailbox(), Mailbox(), threading.Event(), LoopStats()
    reader = threading.Thread(target=source.pump, args=(frames, stop), name="avatar-drive-source", daemon=True)
    shower = threading.Thread(target=_show, args=(updates, driver, stats, stop), name="avatar-drive-sink", daemon=True)
    restore = _on_sigterm(stop.set)
    t0, cpu0 = time.perf_counter(), time.process_time()
    reader.start()
    shower.start()
    try:
        while not stop.is_set() and (duration is None or time.perf_counter() - t0 < duration):
            item = frames.take(timeout=0.05)
            if item is None:
                if frames.finished:
                    break
                continue
            update = driver.process(item)
            if not source.realtime:  # every frame is shown: wait for the last one to be taken
                updates.wait_empty(stop)
            updates.put(update)
    except KeyboardInterrupt:
        print("avatar drive: interrupted; writing what was driven", file=sys.stderr)
    finally:
        stop.set()
        updates.close()
        shower.join(timeout=5.0)  # shows the frame still waiting
        stats.wall, stats.cpu = time.perf_counter() - t0, time.process_time() - cpu0
        reader.join(timeout=5.0)
        source.close()
        restore()
    stats.frames_in, stats.error = source.frames_in, stats.error or source.error
    return stats


def _show(updates: Mailbox, driver: "Driver", stats: LoopStats, stop: threading.Event) -> None:
    """The sink's thread: show the newest tracked frame; latency is counted when it is sent."""
    try:
        while True:
            update = updates.take(timeout=0.05)
            if update is None:
                if updates.finished:
                    return
                continue
            driver.sink.update(update.params)
            stats.latencies.append(time.perf_counter() - update.read_at)
    except BaseException as e:  # handed to the main thread, which stops, writes what it has, then raises
        stats.error = e
        stop.set()


def _on_sigterm(handler) -> Any:
    """Call ``handler`` on SIGTERM (main thread only); returns what restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.signal(signal.SIGTERM, lambda *_: handler())
    return lambda: signal.signal(signal.SIGTERM, old)


class Driver:
    """Per frame: track (or decode a Live Link frame), calibrate and transfer, send, record; then, on
    the sink's thread, update the viewer."""

    def __init__(self, cfg: Drive, target: Target, source: Source, sink) -> None:
        from avatar.fitting.online import NeutralCalibrator

        self.cfg, self.target, self.source, self.sink = cfg, target, source, sink
        head = target.head
        self.tracker = None  # made on the first frame (it needs the frame size)
        self.face_tracker = None
        if source.kind != "livelink":  # the landmark models load now, not in the first frame's latency
            from avatar.fitting.online import make_face_tracker

            self.face_tracker = make_face_tracker(cfg.threads)
        self.calibrator = NeutralCalibrator(cfg.calibrate)
        self.avatar_neutral = avatar_neutral(target.tracking, cfg.calibrate, head.num_expressions)
        self.bounds = (0.0, 1.0) if head.name == "anny" else None
        self.frames: list = []  # the driven frames, kept only for --record
        self.sender = None
        if cfg.send_livelink is not None or source.kind == "livelink":
            _check_arkit(head)
        if cfg.send_livelink is not None:
            from avatar.io import LiveLinkSender

            self.sender = LiveLinkSender(*host_port(cfg.send_livelink, "--send-livelink"))

    def process(self, item: Item) -> Update:
        """Track ``item``, send it on over Live Link and record it; the viewer's update is returned
        for the sink's thread."""
        frame = self._track(item)
        if frame.found:
            self.calibrator.add(frame.expression, frame.timestamp)
        frame = self._transfer(frame)
        if self.sender is not None:
            self._send(frame)
        if self.cfg.record is not None:
            self.frames.append(frame)
        return Update(frame.head_params(self.target.head.dtype), item.read_at)

    def _track(self, item: Item):
        if self.source.kind == "livelink":
            return livelink_frame(item, self.target.head)
        if self.tracker is None:
            self.tracker = self._make_tracker(item.payload.shape[1], item.payload.shape[0])
        return self.tracker.process(item.payload, timestamp=item.timestamp, index=item.index)

    def _make_tracker(self, width: int, height: int):
        from avatar.fitting.online import OnlineConfig, OnlineTracker

        config = OnlineConfig(warmup_seconds=self.cfg.identity_seconds, identity_in_background=True,
                              detector_threads=self.cfg.threads)  # fmt: skip
        if self.cfg.same_person:
            if self.target.tracking is None:
                raise AvatarError(f"--same-person: {self.cfg.out} has no tracking.npz to take the identity from")
            return OnlineTracker.from_tracking(self.target.head, self.target.tracking, (width, height), config=config,
                                               fps=self.source.fps, face_tracker=self.face_tracker)  # fmt: skip
        return OnlineTracker(self.target.head, (width, height), fps=self.source.fps, config=config,
                             face_tracker=self.face_tracker)  # fmt: skip

    def _transfer(self, frame):
        from dataclasses import replace

        from avatar.fitting.online import transfer

        cal = self.calibrator.calibration
        if cal is None:
            return frame
        expression = transfer(self.avatar_neutral, frame.expression, cal.neutral, self.bounds)
        return replace(frame, expression=expression.astype(np.float32))

    def _send(self, frame) -> None:
        from avatar.io.livelink import matrix_to_ypr

        R = _matrices(np.concatenate([frame.global_orient[None], frame.eyes]))  # head, left eye, right eye
        self.sender.send_tracked(self.target.head.expression_names, frame.expression, head_ypr=matrix_to_ypr(R[0]),
                                 eyes_ypr=matrix_to_ypr(R[1:]))  # fmt: skip

    def record(self):
        """The driven frames as a Tracking (tracking.npz's layout)."""
        from avatar.fitting.energy import prior_focal
        from avatar.fitting.online import online_tracking

        if self.tracker is not None:
            shape, focal, size = self.tracker.shape, self.tracker.focal, self.tracker.image_size
        else:  # Live Link: no camera; a 512^2 frame at the tracker's prior field of view stands in
            shape, size = np.zeros(self.target.head.num_shape, np.float32), (512, 512)
            focal = prior_focal(*size, 40.0)
        return online_tracking(self.frames, self.target.head, shape, focal, size, self._record_fps(), self.cfg.source)

    def _record_fps(self) -> float:
        """The source's rate; where frames were dropped, the processed frames' own rate, so a replay
        lasts as long as the drive did."""
        t = [f.timestamp for f in self.frames]
        if len(t) > 1 and self.source.frames_in > len(t) and t[-1] > t[0]:
            return (len(t) - 1) / (t[-1] - t[0])
        return float(self.source.fps)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        if self.sender is not None:
            self.sender.close()


def avatar_neutral(tracking, seconds: float, num_expressions: int) -> np.ndarray:
    """The avatar's rest expression for relative transfer: the mean of its own tracking's first
    ``seconds`` (as the driver's is measured); zeros for the plain head model."""
    from avatar.fitting.online import Calibration

    if tracking is None or seconds <= 0:
        return np.zeros(num_expressions, np.float32)
    usable = np.nonzero(tracking.usable)[0]
    if len(usable) == 0:
        return np.zeros(num_expressions, np.float32)
    rows = usable[: max(1, round(seconds * (tracking.fps or 25.0)))]
    return Calibration.from_expressions(tracking.expression[rows]).neutral.astype(np.float32)


def _check_arkit(head) -> None:
    from avatar.io.livelink import ARKIT_NAMES

    if not set(head.expression_names) <= set(ARKIT_NAMES):
        raise AvatarError(f"Live Link speaks ARKit blendshapes; the {head.name} head model's expressions are not "
                          "ARKit channels: use --model anny")  # fmt: skip


def _matrices(axis_angle: np.ndarray) -> np.ndarray:
    import torch

    from avatar.models.rotations import axis_angle_to_matrix

    return axis_angle_to_matrix(torch.as_tensor(axis_angle, dtype=torch.float64)).numpy()


#: The eyeLook* blendshapes turn AnnyHead's eyeballs as the eye joints do: a Live Link frame's eye
#: rotations drive the joints (as the tracker does), so these are held at 0 to not turn them twice.
_EYE_LOOK = ("eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeLookDownRight",
             "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight")  # fmt: skip


def livelink_frame(item: Item, head):
    """A Live Link Face frame as an OnlineFrame: ARKit weights by name, head and eye rotations
    (yaw, pitch, roll) as axis-angle; the head at the tracker's rest distance."""
    import torch

    from avatar.fitting.online import OnlineFrame
    from avatar.io.livelink import ypr_to_matrix
    from avatar.models.rotations import matrix_to_axis_angle

    packet = item.payload
    names = list(head.expression_names)
    weights = packet.weights(names)
    weights[[names.index(n) for n in _EYE_LOOK if n in names]] = 0.0
    R = ypr_to_matrix(np.concatenate([packet.head_ypr[None], packet.eyes_ypr]))  # [3, 3, 3]
    aa = matrix_to_axis_angle(torch.as_tensor(R)).numpy().astype(np.float32)
    nan = np.full((478, 3), np.nan, np.float32)
    return OnlineFrame(item.index, item.timestamp, True, nan, weights.astype(np.float32), np.zeros(3, np.float32),
                       aa[1:], aa[0], np.array([0.0, 0.0, -0.6], np.float32))  # fmt: skip
