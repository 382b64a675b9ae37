"""The viewer in a real browser: Debian chromium, headless, driven over the DevTools protocol (a
few lines of CDP over a websocket; no browser is downloaded). Skips when chromium or viser is
absent. WebGL runs on SwiftShader (CPU)."""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("viser")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install -y chromium)")

SHOTS = Path(os.environ.get("AVATAR_TEST_SHOTS", tempfile.gettempdir())) / "avatar-viewer-shots"
WIDTH, HEIGHT = 1300, 640  # wide: the GUI panel (right) and the notices (left) leave the head alone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Headless chromium with one page, controlled through the DevTools protocol."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="avatar-chromium-")
        port = _free_port()
        self.proc = subprocess.Popen(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
                f"--window-size={width},{height}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.devtools = f"http://127.0.0.1:{port}"
        self._ids = itertools.count(1)
        self._attach(timeout=30)

    def _attach(self, timeout: float) -> None:
        """Connect to the page target (again: a navigation can swap the renderer and detach us)."""
        from websockets.sync.client import connect

        if getattr(self, "ws", None) is not None:
            self.ws.close()
            self.ws = None
        end = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.devtools}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > end or self.proc.poll() is not None:
                self.close()
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)

    def call(self, method: str, **params):
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _viewport(self) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)

    def open(self, url: str) -> None:
        self._viewport()
        self.call("Page.navigate", url=url)

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        try:
            result = self.call("Page.captureScreenshot", format="png")
        except RuntimeError as e:
            if "Not attached" not in str(e):
                raise
            self._attach(timeout=10)
            self._viewport()
            result = self.call("Page.captureScreenshot", format="png")
        data = base64.b64decode(result["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def _save(image: np.ndarray, name: str) -> Path:
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    Image.fromarray(image).save(path)
    return path


def _foreground(image: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background (the colour of the bottom-left corner)."""
    background = image[-5, 5].astype(np.int32)
    return np.abs(image.astype(np.int32) - background).sum(-1) > 30


def _head_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right) of the foreground between the viewport's left quarter
    (viser's notices and axes) and its right quarter (the GUI panel)."""
    fg = _foreground(image)
    fg[:, int(0.72 * fg.shape[1]):] = False
    fg[:, :int(0.25 * fg.shape[1])] = False
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    assert rows.size and cols.size, "nothing drawn"
    return rows[0], rows[-1], cols[0], cols[-1]


def _wait_for_head(browser: Browser, timeout: float = 120.0) -> np.ndarray:
    """Screenshots until the centre of the view shows the head (WebGL on SwiftShader is slow to start)."""
    end = time.monotonic() + timeout
    while True:
        image = browser.screenshot()
        h, w = image.shape[:2]
        centre = _foreground(image)[int(0.35 * h):int(0.65 * h), int(0.42 * w):int(0.58 * w)]
        if centre.mean() > 0.6:  # splats leave a few see-through specks
            return image
        if time.monotonic() > end:
            path = _save(image, "timeout.png")
            pytest.fail(f"the head never appeared in the centre of the page (last screenshot: {path})")
        time.sleep(1.0)


def _settled_screenshot(browser: Browser, previous: np.ndarray | None = None, timeout: float = 60.0) -> np.ndarray:
    """The first screenshot that equals the one taken a second before it (the page has stopped
    changing) and, given ``previous``, differs from it. Without ``previous`` a page that never
    holds still fails the test; with it, the last screenshot is returned for the caller to judge."""
    end = time.monotonic() + timeout
    last = browser.screenshot() if previous is None else previous
    while time.monotonic() < end:
        time.sleep(1.0)
        image = browser.screenshot()
        if (previous is None or not np.array_equal(image, previous)) and np.array_equal(image, last):
            return image
        last = image
    if previous is None:
        pytest.fail("the page never held still for a second")
    return last


def _check_jaw(browser: Browser, viewer, tag: str) -> None:
    _wait_for_head(browser)
    # Splats fade in on the client; on a loaded machine that outlasts any fixed wait (a mid-fade
    # "before" once made the brow change as much as the mouth), so wait until the page holds still.
    before = _settled_screenshot(browser)
    _save(before, f"{tag}-neutral.png")
    top, bottom, left, right = _head_box(before)

    viewer.sliders["jawOpen"].value = 1.0  # viser's Python API; its callback schedules the update
    assert viewer.wait_idle(30)
    after = _settled_screenshot(browser, before)
    _save(after, f"{tag}-jawOpen.png")

    diff = np.abs(after.astype(np.int32) - before.astype(np.int32)).sum(-1) > 30
    hh, ww = bottom - top, right - left
    # the face looks at the camera: the mouth is in the lower part of the head's box, the brow high up
    mouth = diff[top + int(0.55 * hh):bottom + int(0.1 * hh), left + int(0.3 * ww):right - int(0.3 * ww)]
    brow = diff[top:top + int(0.3 * hh), left + int(0.2 * ww):right - int(0.2 * ww)]
    assert mouth.mean() > 0.03, f"jawOpen changed {mouth.mean():.3%} of the mouth region"
    assert mouth.mean() > 5 * brow.mean(), f"change not concentrated at the mouth: {mouth.mean():.3%} vs brow {brow.mean():.3%}"


@pytest.fixture
def browser():
    """A fresh browser per test (a page whose server went away detaches from DevTools)."""
    b = Browser()
    yield b
    b.close()


@pytest.mark.slow  # ~30 s: the browser draws on SwiftShader (CPU) until the page holds still
def test_mesh_view_in_browser(anny_head, browser, tmp_path):
    from avatar.viewer import open_viewer

    with open_viewer(head=anny_head, port=_free_port(), save_dir=tmp_path) as viewer:
        browser.open(viewer.url)
        _check_jaw(browser, viewer, "mesh")
        # the screenshot button's path: the browser renders the view and sends it back
        grabbed = viewer.grab(height=240, width=320)
        assert grabbed.shape == (240, 320, 3)
        assert _foreground(grabbed)[80:160, 110:210].mean() > 0.5, "client-side render shows no head"
        path = viewer.screenshot()
        assert path.is_file() and path.is_relative_to(tmp_path)


@pytest.mark.slow  # ~30 s: SwiftShader sorts and draws 20k splats
def test_client_splat_view_in_browser(anny_head, browser, tmp_path):
    from avatar.viewer import open_viewer

    with open_viewer(head=anny_head, port=_free_port(), synthetic_gaussians=20_000, chunk_size=1024, save_dir=tmp_path,
                     client_splats=True) as viewer:  # fmt: skip
        assert viewer.drawable.num_gaussians == 20_000
        browser.open(viewer.url)
        _check_jaw(browser, viewer, "splats")


@pytest.fixture(scope="module")
def avatar_out(anny_head, tmp_path_factory) -> Path:
    """OUT with a made-up Gaussian avatar (shaded, view-dependent colour, back-face culling) and no
    tracking: what `avatar render` and `avatar view` both read."""
    import torch

    from avatar.representations import save_avatar
    from avatar.viewer.synthetic import shaded_representation

    out = tmp_path_factory.mktemp("served")
    rep = shaded_representation(anny_head, per_face=1, per_face_face=2, sh_degree=1, seed=0)
    save_avatar(out / "avatar", rep, model="anny", shape=torch.zeros(anny_head.num_shape))
    return out


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64))[mask] ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_served_view_matches_avatar_render(avatar_out, tmp_path):
    """The default viewer (rendered on the server) opens on exactly the image of `avatar render
    OUT --camera frontal --neutral`: PSNR over the head, after the browser's JPEG. A jawOpen slider
    change then shows at the mouth."""
    from avatar.viewer import open_viewer
    from avatar_apps.cli import main

    width, height = WIDTH, HEIGHT
    still = tmp_path / "still.png"
    assert main(["render", str(avatar_out), "--camera", "frontal", "--neutral", "--size", str(height), "-o", str(still)]) == 0
    from PIL import Image

    want = np.asarray(Image.open(still).convert("RGB"))
    assert want.shape == (height, height, 3)
    browser = Browser(width, height)
    try:
        with open_viewer(avatar_out, port=_free_port(), save_dir=tmp_path) as viewer:
            assert viewer.renders_on_server
            browser.open(viewer.url)
            _wait_for_head(browser)
            stream = viewer.drawable.stream
            shown = stream.wait_shown(stream.version, final=True, timeout=60)
            assert shown is not None and (shown.width, shown.height) == (width, height)
            page = _settled_screenshot(browser)
            _save(page, "served-start.png")
            left = (width - height) // 2
            got = page[:, left:left + height]
            head = _dilate((want < 250).any(-1), 3)
            psnr = _psnr(got, want, head)
            print(f"viewer vs avatar render: {psnr:.2f} dB over the head")
            assert psnr >= 35.0, f"viewer vs avatar render: {psnr:.1f} dB over the head (shots in {SHOTS})"
            # screenshots of a served view are the server's own render: the file itself
            np.testing.assert_array_equal(viewer.grab(height=height, width=height), want)
            _check_jaw(browser, viewer, "served")
    finally:
        browser.close()
