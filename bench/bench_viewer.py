"""Viewer speed per mode, as one browser tab sees it.

    python bench/bench_viewer.py [--gaussians 30000] [--seconds 5] [--changes 30] [--threads N] [--modes server client]

A made-up avatar (avatar.viewer.synthetic.shaded_representation: a MeshGaussians bundle with
view-dependent colour and back-face culling, saved to a temporary OUT and opened by
`avatar view`'s own loader) is served on 127.0.0.1; a websocket client stands in for a browser
tab: it sends camera messages as viser's page does and records when each message arrives.

server (the default mode: the server renders the tab's camera and sends a JPEG)
  moving   the camera orbits (a camera message every 20 ms, as the page sends while dragging):
           images received per second, and their size
  slider   a jawOpen change with the camera still, one every 0.6 s: time from the change to the
           tab receiving the first image that shows it (reduced resolution) and the settled
           full-resolution one
  drag     a jawOpen change every 30 ms: time from each change to the first image showing it
client (--client-splats: the browser draws the splats)
  moving   nothing to measure here: the browser draws every frame itself, the server sends nothing
           while the camera moves; the colour/culling re-bake when it stops is reported in bytes
  slider   time from the change to the tab receiving the last re-sent splat chunk

"Shows it" is read from the viewer's records (which scene frame an update made, which frame each
image drew); an image counts as received at the first message the tab gets after the server
queued it. Wall-clock times on a shared machine: run it alone for figures to compare.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


class Tab:
    """A websocket client in place of a browser tab: sends camera messages, records arrivals."""

    def __init__(self, url: str) -> None:
        import viser
        from websockets.sync.client import connect

        self.ws = connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None)
        self.bytes = 0
        self.arrivals: list[tuple[float, int]] = []  # every message: (arrival, bytes received so far)
        self.images: list[tuple[float, bytes]] = []  # background images: (arrival, JPEG bytes)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import msgspec
        import zstandard

        try:
            while True:
                msg = self.ws.recv()
                now = time.monotonic()
                n, c = int.from_bytes(msg[:8], "little"), int.from_bytes(msg[8:16], "little")
                inner = msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(msg[16 : 16 + c], max_output_size=n))
                with self._lock:
                    self.bytes += len(msg)
                    self.arrivals.append((now, self.bytes))
                    for m in inner["messages"]:
                        if m.get("type") == "BackgroundImageMessage" and m.get("rgb_data"):
                            self.images.append((now, m["rgb_data"]))
        except Exception:  # the server closed the connection
            return

    def look(self, position, look_at, width: int = 1280, height: int = 720, fov: float = math.radians(20.0)) -> None:
        """Send the camera of a page whose canvas is ``width`` x ``height``, at ``position`` looking at ``look_at``."""
        import msgspec

        from avatar.render.mesh import look_at as look
        from avatar.representations.geometry import matrix_to_quat

        R = look(np.asarray(position, float), np.asarray(look_at, float))[:3, :3].T  # camera -> world, OpenCV axes
        wxyz = matrix_to_quat(torch.as_tensor(R)).tolist()
        self.ws.send(msgspec.msgpack.encode({
            "type": "ViewerCameraMessage", "wxyz": wxyz, "position": [float(x) for x in position], "fov": float(fov),
            "near": 0.01, "far": 100.0, "image_height": int(height), "image_width": int(width),
            "look_at": [float(x) for x in look_at], "up_direction": [0.0, 1.0, 0.0],
        }))  # fmt: skip

    def image_after(self, t: float, timeout: float = 30.0) -> tuple[float, bytes] | None:
        """``(arrival, JPEG)`` of the first image received at or after ``t`` (waits for it)."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                hit = next(((a, jpeg) for a, jpeg in self.images if a >= t), None)
            if hit is not None or time.monotonic() > end:
                return hit
            time.sleep(0.002)

    def bytes_reached(self, total: int, timeout: float = 30.0) -> float | None:
        """Arrival time of the message with which ``total`` bytes had been received."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                hit = next((a for a, b in self.arrivals if b >= total), None)
            if hit is not None:
                return hit
            time.sleep(0.002)
        return None

    def quiet(self, seconds: float = 0.3, timeout: float = 30.0) -> None:
        """Wait until nothing arrived for ``seconds``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                last = self.arrivals[-1][0] if self.arrivals else 0.0
            if time.monotonic() - last >= seconds:
                return
            time.sleep(0.02)

    def close(self) -> None:
        self.ws.close()


def orbit_position(centre, distance: float, yaw_deg: float, pitch_deg: float = 5.0) -> np.ndarray:
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    return np.asarray(centre) + distance * np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])


def shows(viewer, request: int, timeout: float = 30.0):
    """The viewer's record of the first update that showed request number ``request``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        hit = next((a for a in list(viewer.applied) if a.request >= request), None)
        if hit is not None:
            return hit
        time.sleep(0.002)
    return None


def image_showing(viewer, tab: Tab, version: int, final: bool = False, timeout: float = 30.0) -> float | None:
    """Arrival time at ``tab`` of the first image of scene frame ``version`` or later."""
    shown = viewer.drawable.stream.wait_shown(version, final=final, timeout=timeout)
    hit = None if shown is None else tab.image_after(shown.at, timeout)
    return None if hit is None else hit[0]


def _stats(ms: list[float]) -> str:
    if not ms:
        return "none"
    return f"median {statistics.median(ms):6.1f} ms  p95 {float(np.percentile(ms, 95)):6.1f} ms  (n={len(ms)})"


def _jaw(viewer, value: float) -> int:
    expr = viewer.params()["expression"]
    expr[0, viewer.head.expression_names.index("jawOpen")] = value
    return viewer.set_params(expression=expr)


def bench_server(viewer, tab: Tab, seconds: float, changes: int, width: int, height: int) -> None:
    stream = viewer.drawable.stream
    centre, dist = viewer.scene_centre, viewer.scene_distance
    tab.look(orbit_position(centre, dist, 0.0), centre, width, height)
    stream.wait_shown(stream.version, final=True, timeout=60)

    # moving: a camera message every 20 ms, the yaw sweeping +-40 degrees
    start, count_from = time.monotonic(), len(tab.images)
    log_from = len(stream.shown)
    while (t := time.monotonic() - start) < seconds:
        tab.look(orbit_position(centre, dist, 40.0 * math.sin(2 * math.pi * t / 4.0)), centre, width, height)
        time.sleep(0.02)
    got = [a for a, _ in tab.images[count_from:] if a - start >= 0.5]  # steady state
    sizes = [s.width * s.height for s in list(stream.shown)[log_from:] if not s.final]
    side = int(math.sqrt(statistics.median(sizes))) if sizes else 0
    print(f"  moving   {len(got) / (seconds - 0.5):5.1f} images/s received while the camera moves "
          f"(canvas {width}x{height}, moving images ~{side}^2 px, median render+encode "
          f"{1e3 * statistics.median([s.seconds for s in list(stream.shown)[log_from:]]):.0f} ms)")  # fmt: skip
    stream.wait_shown(stream.version, final=True, timeout=60)

    first, final, parts = [], [], []
    for k in range(changes):
        time.sleep(0.6)
        t0 = time.monotonic()
        hit = shows(viewer, _jaw(viewer, 0.8 if k % 2 == 0 else 0.0))
        if hit is None:
            continue
        shown = stream.wait_shown(hit.version, timeout=30)
        a = image_showing(viewer, tab, hit.version)
        b = image_showing(viewer, tab, hit.version, final=True)
        if a is not None and shown is not None:
            first.append(1e3 * (a - t0))
            parts.append((hit.at - t0, shown.at - hit.at, a - shown.at))
        if b is not None:
            final.append(1e3 * (b - t0))
    print(f"  slider   first image {_stats(first)};  settled full-resolution image {_stats(final)}")
    if parts:
        pose, draw, send = (1e3 * statistics.median(p) for p in zip(*parts))
        print(f"           first image, medians: pose {pose:.0f} ms (head model + representation), render "
              f"{draw:.0f} ms (waiting for the worker, rasterizer, JPEG), to the tab {send:.0f} ms")  # fmt: skip

    lat = []
    pending: list[tuple[float, int]] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        pending.append((time.monotonic(), _jaw(viewer, 0.5 + 0.5 * math.sin(8.0 * (time.monotonic() - start)))))
        time.sleep(0.03)
    for t0, request in pending:
        hit = shows(viewer, request)
        a = None if hit is None else image_showing(viewer, tab, hit.version)
        if a is not None:
            lat.append(1e3 * (a - t0))
    print(f"  drag     change to first image showing it {_stats(lat)} ({len(pending)} changes in {seconds:.0f} s)")


def bench_client(viewer, tab: Tab, changes: int, width: int, height: int) -> None:
    centre, dist = viewer.scene_centre, viewer.scene_distance
    tab.look(orbit_position(centre, dist, 0.0), centre, width, height)
    time.sleep(0.5)
    tab.quiet()
    before = tab.bytes
    tab.look(orbit_position(centre, dist, 30.0), centre, width, height)
    time.sleep(0.5)  # the view settles (0.25 s) and is re-baked
    tab.quiet()
    print(f"  moving   (the browser draws each frame; nothing is sent while the camera moves) re-bake when it "
          f"stops: {(tab.bytes - before) / 1e3:.0f} KB to the tab")  # fmt: skip
    lat, sent = [], []
    for k in range(changes):
        tab.quiet()
        b0 = tab.bytes
        t0 = time.monotonic()
        if shows(viewer, _jaw(viewer, 0.8 if k % 2 == 0 else 0.0)) is None:
            continue
        queued = viewer.timings[-1].bytes_sent  # the splat buffers of that update
        last = tab.bytes_reached(b0 + queued)
        if last is not None:
            lat.append(1e3 * (last - t0))
            sent.append(queued)
    print(f"  slider   change to the last splat chunk received {_stats(lat)}, {statistics.fmean(sent) / 1e3:.0f} KB of "
          "splats per change")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gaussians", type=int, default=30_000, help="about this many (whole Gaussians per triangle)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--size", type=int, nargs=2, default=[1280, 720], metavar=("W", "H"), help="the tab's canvas")
    ap.add_argument("--threads", type=int, default=0, help="torch (and rasterizer) threads; 0: torch's default")
    ap.add_argument("--modes", nargs="+", default=["server", "client"], choices=["server", "client"])
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from avatar.models.anny_head import AnnyHead
    from avatar.representations import save_avatar
    from avatar.viewer import open_viewer
    from avatar.viewer.synthetic import shaded_representation

    head = AnnyHead.load()
    from avatar.representations.mesh_gaussians import FACE, face_regions

    faces, face = head.faces.shape[0], int((face_regions(head, None) == FACE).sum())
    per_face = max(1, args.gaussians // faces)  # the rest goes to the face region, as training does
    extra = max(0, round((args.gaussians - per_face * faces) / max(face, 1)))
    rep = shaded_representation(head, per_face=per_face, per_face_face=per_face + extra, sh_degree=1)
    print(f"{rep.num_gaussians} Gaussians (SH degree 1, back-face culling); torch threads {torch.get_num_threads()}; "
          "wall-clock on a shared machine")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        save_avatar(out / "avatar", rep, model="anny", shape=torch.zeros(head.num_shape))
        for mode in args.modes:
            viewer = open_viewer(out, port=args.port, client_splats=mode == "client")
            tab = Tab(f"ws://127.0.0.1:{viewer.port}")
            try:
                print(f"{mode}: {'rendered on the server' if viewer.renders_on_server else 'splats drawn by the browser'}")
                if mode == "server":
                    bench_server(viewer, tab, args.seconds, args.changes, *args.size)
                else:
                    bench_client(viewer, tab, args.changes, *args.size)
            finally:
                tab.close()
                viewer.close()


if __name__ == "__main__":
    main()
