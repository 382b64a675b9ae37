"""`avatar drive` end to end: a frame folder driven headless and in the viewer (record + summary),
the record replayed by `avatar render --drive`, the viewer's reader and `avatar export`, a Live Link
source fed by our sender (and sent on), relative transfer, frames dropped instead of queued,
SIGTERM, a missing webcam."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from avatar_apps.cli import main

SIZE = 96
FRAMES = 12
SUMMARY_KEYS = {"frames_in", "frames_processed", "frames_dropped", "fps", "latency_ms_p50", "latency_ms_p95"}


@pytest.fixture(scope="module")
def clip(anny_head, tmp_path_factory) -> Path:
    """A rendered AnnyHead clip (frames/ + its exact tracking.npz): the head opens its jaw, turns."""
    from avatar.training.synthetic import make_synthetic_clip

    return make_synthetic_clip(tmp_path_factory.mktemp("drive"), anny_head, num_frames=FRAMES, size=SIZE)


@pytest.fixture(scope="module")
def headless_drive(clip: Path, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("drive_out")
    record, summary = out / "r.npz", out / "s.json"
    args = ["drive", "--source", str(clip / "frames"), "--no-viewer", "--no-realtime", "--record", str(record),
            "--summary", str(summary), "--identity-seconds", "0.3"]  # fmt: skip
    assert main(args) == 0
    return record, summary


def test_drive_frames_headless(headless_drive, clip: Path, anny_head) -> None:
    from avatar.fitting import load_tracking

    record, summary = headless_drive
    s = json.loads(summary.read_text())
    assert SUMMARY_KEYS <= set(s)
    assert s["frames_in"] == s["frames_processed"] == FRAMES and s["frames_dropped"] == 0  # --no-realtime: every frame
    assert s["fps"] > 0 and 0 < s["latency_ms_p50"] <= s["latency_ms_p95"]
    rec, truth = load_tracking(record), load_tracking(clip)
    assert rec.num_frames == FRAMES and rec.tracked.all() and rec.model == "anny"
    assert list(rec.expression_names) == list(anny_head.expression_names)
    # The drive follows the rendered jaw (truth: jawOpen 0 -> 0.7 -> 0) and head turn (yaw +-0.25 rad).
    jaw = list(anny_head.expression_names).index("jawOpen")
    assert np.corrcoef(rec.expression[:, jaw], truth.expression[:, jaw])[0, 1] > 0.8
    assert np.corrcoef(rec.global_orient[:, 1], truth.global_orient[:, 1])[0, 1] > 0.8


def test_recorded_drive_replays(headless_drive, clip: Path, tmp_path: Path) -> None:
    """The record is a tracking file: `avatar render --drive` renders it on a trained avatar, and
    the viewer's reader (`avatar view --reenact`) loads it."""
    from avatar.viewer.motion import load_motion

    record, _ = headless_drive
    assert load_motion(record).num_frames == FRAMES
    out = trained_avatar(clip, tmp_path)
    video = tmp_path / "drive.mp4"
    assert main(["render", str(out), "--camera", "frontal", "--drive", str(record), "--size", "48",
                 "-o", str(video)]) == 0  # fmt: skip
    assert video.stat().st_size > 0
    # Driving the trained avatar itself (headless: its Gaussians are evaluated each frame), with
    # the identity of its own tracking.
    summary = tmp_path / "s.json"
    assert main(["drive", str(out), "--source", str(clip / "frames"), "--no-viewer", "--no-realtime", "--same-person",
                 "--summary", str(summary)]) == 0  # fmt: skip
    assert json.loads(summary.read_text())["frames_processed"] == FRAMES


def test_recorded_drive_exports(headless_drive, tmp_path: Path) -> None:
    """`avatar export` animates the head with a record placed as OUT/tracking.npz."""
    record, _ = headless_drive
    out = tmp_path / "out"
    out.mkdir()
    (out / "tracking.npz").write_bytes(record.read_bytes())
    assert main(["export", str(out), "--texture-size", "64"]) == 0
    from pygltflib import GLTF2

    glb = GLTF2().load(str(out / "exports" / "head.glb"))
    assert glb.animations and glb.accessors[glb.animations[0].samplers[0].input].count == FRAMES


def trained_avatar(clip: Path, tmp_path: Path) -> Path:
    out = tmp_path / "avatar_out"
    out.mkdir()
    for name in ("tracking.npz", "mattes.npz"):
        (out / name).write_bytes((clip / name).read_bytes())
    assert main(["train", str(out), "--steps", "2", "--resolution", "64", "--quiet", "--set", "eval_video=false"]) == 0
    return out


@pytest.mark.parametrize("mode", [[], ["--client-splats"]])
def test_drive_in_the_viewer(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: list[str]) -> None:
    """With the viewer, in either mode: every update reaches it (the last frame's expression is the viewer's)."""
    pytest.importorskip("viser")
    import avatar.viewer
    from avatar.viewer.app import AvatarViewer

    opened, open_viewer = {}, avatar.viewer.open_viewer

    def spy(*args, **kwargs):
        opened.update(kwargs)
        return open_viewer(*args, **kwargs)

    monkeypatch.setattr(avatar.viewer, "open_viewer", spy)
    shown, original = {}, AvatarViewer.close

    def close(self) -> None:  # what the viewer shows when the drive ends
        shown.update(self.params())
        original(self)

    monkeypatch.setattr(AvatarViewer, "close", close)
    summary = tmp_path / "s.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["drive", "--source", str(clip / "frames"), "--no-realtime", "--port", str(port), "--summary",
                 str(summary), "--record", str(tmp_path / "r.npz"), "--identity-seconds", "0.3", *mode]) == 0  # fmt: skip
    assert opened["client_splats"] == bool(mode)
    assert json.loads(summary.read_text())["frames_processed"] == FRAMES
    from avatar.fitting import load_tracking

    last = load_tracking(tmp_path / "r.npz").expression[-1]
    np.testing.assert_allclose(shown["expression"][0].numpy(), last, atol=1e-6)


def test_realtime_drops_instead_of_queueing(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame folder at 25 fps, paced in real time, while each frame takes 100 ms to process (held
    there, whatever this machine's speed): frames are dropped (the newest is processed), and every
    frame read is accounted for."""
    from avatar_apps import drive

    process = drive.Driver.process

    def slow(self, item):
        time.sleep(0.1)
        return process(self, item)

    monkeypatch.setattr(drive.Driver, "process", slow)
    summary = tmp_path / "s.json"
    assert main(["drive", "--source", str(clip / "frames"), "--no-viewer", "--summary", str(summary),
                 "--identity-seconds", "0.2"]) == 0  # fmt: skip
    s = json.loads(summary.read_text())
    assert s["frames_in"] == FRAMES and s["frames_processed"] + s["frames_dropped"] == FRAMES
    assert s["frames_dropped"] > 0 and s["frames_processed"] >= 1


def test_mailbox_keeps_the_newest() -> None:
    from avatar.io.live import Item, Mailbox

    box = Mailbox()
    for i in range(3):
        box.put(Item(i, 0.0, 0.0, None))
    assert box.dropped == 2 and box.take(0.01).index == 2 and box.take(0.01) is None
    box.close()
    assert box.finished


def test_next_frame_is_tracked_while_the_last_is_shown() -> None:
    """The loop is a pipeline: showing frame 0 (the sink's thread) blocks until frame 1 has been
    tracked (the main thread). Run serially, the sink would wait for ever and time out."""
    from avatar.io.live import Item, Source
    from avatar_apps.drive import Update, drive_loop

    tracked = {i: threading.Event() for i in range(3)}

    class Frames(Source):
        realtime = False

        def _pump(self, box, stop) -> None:
            for i in range(3):
                box.wait_empty(stop)
                self._read += 1
                box.put(Item(i, i / 25.0, time.perf_counter(), None))

    class Sink:
        shown: list = []
        overlapped: list = []

        def update(self, params: dict) -> None:
            i = params["index"]
            if i + 1 in tracked:
                self.overlapped.append(tracked[i + 1].wait(timeout=10.0))
            self.shown.append((i, threading.current_thread() is threading.main_thread()))

    class FakeDriver:
        sink = Sink()

        def process(self, item: Item) -> Update:
            tracked[item.index].set()
            return Update({"index": item.index}, item.read_at)

    driver = FakeDriver()
    stats = drive_loop(Frames(), driver, duration=None)
    assert stats.error is None and len(stats.latencies) == 3
    assert driver.sink.shown == [(0, False), (1, False), (2, False)]  # every frame, in order, off the main thread
    assert driver.sink.overlapped == [True, True]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(port: int, stop: threading.Event, jaw: float, yaw: float) -> threading.Thread:
    """Our sender as a stand-in phone: a packet every 10 ms until ``stop``."""
    from avatar.io import LiveLinkSender

    def run() -> None:
        with LiveLinkSender("127.0.0.1", port) as tx:
            while not stop.is_set():
                tx.send_tracked(["jawOpen", "eyeBlinkLeft"], [jaw, 0.25], head_ypr=[yaw, 0.1, 0.0],
                                eyes_ypr=[[0.2, -0.1, 0.0], [0.2, -0.1, 0.0]])  # fmt: skip
                time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_livelink_source_and_sending_on(tmp_path: Path, anny_head) -> None:
    """Packets from our sender drive the head (weights by name, head and eye rotations), and
    --send-livelink streams what was driven to a receiver, eyeLook* filled from the eyes."""
    from avatar.fitting import load_tracking
    from avatar.io import LiveLinkReceiver
    from avatar.io.livelink import matrix_to_ypr
    from avatar_apps.drive import _matrices

    port, stop = _free_port(), threading.Event()
    record, summary = tmp_path / "r.npz", tmp_path / "s.json"
    with LiveLinkReceiver("127.0.0.1", 0) as unreal:
        sender = _stream(port, stop, jaw=0.6, yaw=0.3)
        try:
            assert main(["drive", "--source", f"livelink:{port}", "--no-viewer", "--duration", "1.0", "--record",
                         str(record), "--summary", str(summary), "--send-livelink", f"127.0.0.1:{unreal.port}"]) == 0  # fmt: skip
        finally:
            stop.set()
            sender.join()
        forwarded = unreal.latest()
    s = json.loads(summary.read_text())
    assert s["frames_processed"] > 5 and s["frames_in"] >= s["frames_processed"]
    rec = load_tracking(record)
    names = list(rec.expression_names)
    np.testing.assert_allclose(rec.expression[:, names.index("jawOpen")], 0.6, atol=1e-6)
    np.testing.assert_allclose(rec.expression[:, names.index("eyeBlinkLeft")], 0.25, atol=1e-6)
    np.testing.assert_allclose(matrix_to_ypr(_matrices(rec.global_orient)), [[0.3, 0.1, 0.0]] * rec.num_frames, atol=1e-5)
    np.testing.assert_allclose(matrix_to_ypr(_matrices(rec.eyes[:, 0])), [[0.2, -0.1, 0.0]] * rec.num_frames, atol=1e-5)
    assert forwarded is not None and forwarded["jawOpen"] == pytest.approx(0.6, abs=1e-6)
    np.testing.assert_allclose(forwarded.head_ypr, [0.3, 0.1, 0.0], atol=1e-5)
    assert forwarded["eyeLookOutLeft"] > 0.3  # the left eye turned 0.2 rad to its own left (out)


def test_livelink_calibrated_transfer(tmp_path: Path) -> None:
    """--calibrate: a driver resting with jawOpen 0.3 drives the plain head (neutral 0) with 0 once
    calibrated."""
    from avatar.fitting import load_tracking

    port, stop = _free_port(), threading.Event()
    record = tmp_path / "r.npz"
    sender = _stream(port, stop, jaw=0.3, yaw=0.0)
    try:
        assert main(["drive", "--source", f"livelink:{port}", "--no-viewer", "--duration", "1.0", "--calibrate", "0.2",
                     "--record", str(record)]) == 0  # fmt: skip
    finally:
        stop.set()
        sender.join()
    rec = load_tracking(record)
    jaw = rec.expression[:, list(rec.expression_names).index("jawOpen")]
    assert jaw[0] == pytest.approx(0.3, abs=1e-6) and jaw[-1] == pytest.approx(0.0, abs=1e-6)


def test_sigterm_stops_cleanly_and_writes(tmp_path: Path) -> None:
    port = _free_port()
    record, summary = tmp_path / "r.npz", tmp_path / "s.json"
    stop = threading.Event()
    sender = _stream(port, stop, jaw=0.5, yaw=0.0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "avatar_apps.cli", "drive", "--source", f"livelink:{port}",
                             "--no-viewer", "--record", str(record), "--summary", str(summary)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        started = proc.stdout.readline()  # printed when the loop starts
        assert "driving" in started, proc.communicate()[1]
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        sender.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(summary.read_text())["frames_processed"] > 0 and record.is_file()
    assert "frames processed" in out


def test_missing_webcam_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["drive", "--source", "webcam:57", "--no-viewer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avatar: error: webcam:57") and "video57" in err[0]


@pytest.mark.parametrize("args", [["--record", "r.txt"], ["--duration", "0"], ["--send-livelink", "nohost"],
                                  ["--source", "webcam:x"], ["--source", "livelink:99999"]])  # fmt: skip
def test_bad_options_are_one_line(args: list[str], clip: Path, capsys: pytest.CaptureFixture) -> None:
    base = {"--source": str(clip / "frames")}
    flags = dict(base, **dict(zip(args[::2], args[1::2])))
    assert main(["drive", "--no-viewer", *[x for kv in flags.items() for x in kv]]) == 2
    assert capsys.readouterr().err.startswith("avatar: error:")


def test_drive_leaves_torch_threads_as_found(clip: Path, tmp_path: Path) -> None:
    """Run in-process, the drive restores torch's thread count (it solves on one thread); the
    identity fit it runs on a thread is over when it returns."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["drive", "--source", str(clip / "frames"), "--no-viewer", "--no-realtime",
                     "--identity-seconds", "0.3"]) == 0  # fmt: skip
        assert torch.get_num_threads() == 2
        fits = [t for t in threading.enumerate() if t.name.startswith("avatar-identity")]
        for t in fits:  # done with its job: the thread only has to wind down
            t.join(timeout=0.5)
        assert not any(t.is_alive() for t in fits)
    finally:
        torch.set_num_threads(before)
