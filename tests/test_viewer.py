"""Viewer without a browser: paths confined to OUT, clear errors for missing/corrupt folders,
tracking playback, splat packing against viser's own packing, change-only sending."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from avatar.errors import AvatarError
from avatar.viewer import OutFolder, load_motion, open_out, pack_splats


def _tracking(path, n=4, names=("jawOpen", "eyeBlinkLeft"), seed=0):
    """A small tracking file with every field of the fitting stage's Tracking (npz keys = fields)."""
    rng = np.random.default_rng(seed)
    np.savez(
        path, expression=rng.random((n, len(names))).astype(np.float32), expression_names=np.array(names),
        jaw=np.zeros((n, 3), np.float32), neck=0.1 * rng.standard_normal((n, 3)).astype(np.float32),
        eyes=np.zeros((n, 2, 3), np.float32), global_orient=np.zeros((n, 3), np.float32),
        transl=np.zeros((n, 3), np.float32), fps=np.float32(25.0), tracked=np.ones(n, bool),
        frame_index=np.arange(n), interpolated=np.zeros(n, bool), landmarks=np.zeros((n, 478, 3), np.float32),
        K=np.tile(np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]], np.float32), (n, 1, 1)),
        viewmat=np.eye(4, dtype=np.float32),
        shape=np.zeros(0, np.float32), model=np.array("anny"), image_size=np.array([640, 480]),
        source=np.array("synthetic"),
    )  # fmt: skip
    return path


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    _tracking(folder / "tracking.npz")
    return folder


# --- paths and errors --------------------------------------------------------------------------
def test_missing_out_is_a_clear_error(tmp_path):
    with pytest.raises(AvatarError, match="does not exist.*avatar view --model anny"):
        open_out(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AvatarError, match="is not a folder"):
        open_out(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AvatarError, match="neither tracking.npz nor avatar/"):
        open_out(tmp_path / "empty")


def test_corrupt_tracking_is_a_clear_error(tmp_path):
    bad = tmp_path / "tracking.npz"
    bad.write_bytes(b"not a zip file at all")
    # (the message comes from avatar.fitting.load_tracking, the one reader)
    for content in (None, dict(something=np.zeros(3)),
                    dict(expression=np.zeros((3, 2)), expression_names=np.array(["a", "b", "c"]))):  # fmt: skip
        if content is not None:
            np.savez(bad, **content)
        with pytest.raises(AvatarError, match="tracking.npz: .*(tracking|match|missing|expression)"):
            load_motion(bad)


def test_paths_outside_out_are_refused(out, tmp_path):
    other = _tracking(tmp_path / "other.npz")
    folder = open_out(out)
    assert folder.resolve("tracking.npz") == (out / "tracking.npz").resolve()
    assert folder.resolve(out / "tracking.npz") == (out / "tracking.npz").resolve()
    for escape in (str(other), "../other.npz", "/etc/passwd"):
        with pytest.raises(AvatarError, match="refused"):
            folder.resolve(escape)
    (out / "link.npz").symlink_to(other)  # a symlink inside OUT that points out of it
    with pytest.raises(AvatarError, match="refused"):
        folder.resolve("link.npz")
    with pytest.raises(AvatarError, match="no such file"):
        folder.resolve("missing.npz")
    # a file named on the command line is allowed
    assert open_out(out, (other,)).resolve(str(other)) == other.resolve()
    # without OUT, only explicit files
    with pytest.raises(AvatarError, match="refused"):
        OutFolder(None).resolve(str(other))


def test_motion_params_match_channels_by_name(tmp_path):
    m = load_motion(_tracking(tmp_path / "t.npz", names=("eyeBlinkLeft", "jawOpen", "notInHead")))
    assert m.num_frames == 4 and m.fps == 25.0
    p = m.params_for(2, ["jawOpen", "browInnerUp", "eyeBlinkLeft"])
    assert p["expression"].shape == (1, 3)
    assert p["expression"][0, 0] == pytest.approx(m.expression[2, 1])
    assert p["expression"][0, 1] == 0
    assert p["expression"][0, 2] == pytest.approx(m.expression[2, 0])
    assert "transl" not in p and "global_orient" not in p
    assert "transl" in m.params_for(0, ["jawOpen"], head_pose=True)


# --- splats --------------------------------------------------------------------------------------
def test_pack_splats_matches_viser_packing():
    viser = pytest.importorskip("viser")
    from viser._scene_handles import GaussianSplatHandle

    g = torch.Generator().manual_seed(0)
    n = 257
    means = torch.randn(n, 3, generator=g) * 0.1
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.01 + 1e-3
    rgb, op = torch.rand(n, 3, generator=g), torch.rand(n, generator=g)
    unit = 1.0
    buf = pack_splats(means, quats, scales, op, rgb, unit=unit)
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.T
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(n, 3, 3)  # fmt: skip
    cov = (R * scales[:, None, :] ** 2) @ R.transpose(1, 2)
    ref = np.zeros((n, 8), np.uint32)
    GaussianSplatHandle._pack_centers(ref, means.numpy())
    GaussianSplatHandle._pack_covariances(ref, cov.numpy())
    GaussianSplatHandle._pack_rgba(ref, rgbs=rgb.numpy(), opacities=op.numpy()[:, None])
    np.testing.assert_array_equal(buf[:, :4], ref[:, :4])
    np.testing.assert_allclose(buf[:, 4:7].view(np.float16).astype(np.float32),
                               ref[:, 4:7].view(np.float16).astype(np.float32), rtol=2e-3, atol=1e-8)  # fmt: skip
    assert np.abs(buf[:, 7:8].view(np.uint8).astype(int) - ref[:, 7:8].view(np.uint8).astype(int)).max() <= 1
    assert viser is not None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_splat_viewer_sends_only_changed_chunks(anny_head):
    pytest.importorskip("viser")
    from avatar.viewer import open_viewer

    with open_viewer(head=anny_head, port=_port(), synthetic_gaussians=8000, chunk_size=500, client_splats=True) as viewer:
        total = viewer.drawable.splats.num_chunks
        idle = viewer.update_now()
        assert idle.bytes_sent == 0  # nothing changed: nothing sent
        i = anny_head.expression_names.index("eyeBlinkLeft")
        expr = viewer.params()["expression"]
        expr[0, i] = 1.0
        viewer.set_params(expression=expr)
        assert viewer.wait_idle(30)
        blink = viewer.timings[-1]
        # exactly the chunks holding a Gaussian whose triangle moved are re-sent, and not all of them
        with torch.no_grad():
            rest = anny_head().vertices[0]
            v = anny_head(expression=expr).vertices[0]
        scene = viewer.drawable
        moved = (v != rest).any(1)[scene.faces].any(1)[scene.parent_face].numpy()
        expected = np.unique(scene.splats.position[np.flatnonzero(moved)] // scene.splats.chunk_size)
        assert 0 < blink.messages == len(expected) < total
        assert blink.bytes_sent == 32 * sum(min(scene.splats.chunk_size, 8000 - k * scene.splats.chunk_size) for k in expected)
        # the server's buffer equals a full re-pack of the current pose (subset updates lose nothing)
        from avatar.viewer.splats import pack_geometry

        s = viewer.drawable.splats
        full = pack_geometry(*(t[s._order_t] for t in viewer.drawable.deform(v)))
        np.testing.assert_array_equal(s._buffer[:, :7], full[:, :7])
        for k, h in enumerate(s._handles):
            np.testing.assert_array_equal(h.buffer, s._buffer[k * s.chunk_size:(k + 1) * s.chunk_size])


def test_viewer_out_playback_and_refusal(anny_head, out, tmp_path):
    pytest.importorskip("viser")
    from avatar.viewer import open_viewer

    other = _tracking(tmp_path / "other.npz", n=6, seed=1)
    _tracking(tmp_path / "third.npz")
    with open_viewer(out, head=anny_head, port=_port(), reenact=(other,)) as viewer:
        assert set(viewer.motions) == {"tracking.npz", f"reenact: {other.resolve()}"}
        viewer.motion_choice.value = "tracking.npz"
        viewer.frame.value = 2
        assert viewer.wait_idle(30)
        m = viewer.motions["tracking.npz"]
        j = anny_head.expression_names.index("jawOpen")
        assert viewer.params()["expression"][0, j] == pytest.approx(float(m.expression[2, 0]))
        with pytest.raises(AvatarError, match="refused"):
            viewer.load_motion_path("../third.npz")  # relative to OUT, escaping it
        assert viewer.load_motion_path(str(other)).num_frames == 6  # named on the command line: allowed
        viewer.motion_path.value = "/etc/hostname"
        viewer._gui_load_motion()
        assert "refused" in viewer._message.content


def test_head_pose_moves_the_parent_frame_not_the_splats(anny_head):
    """A tracked head turning (global_orient/transl) is one frame transform: no splat is re-sent."""
    pytest.importorskip("viser")
    from avatar.models.rotations import axis_angle_to_matrix
    from avatar.representations.geometry import quat_to_matrix
    from avatar.viewer import open_viewer

    with open_viewer(head=anny_head, port=_port(), synthetic_gaussians=4000, chunk_size=500, client_splats=True) as viewer:
        viewer.update_now()
        turn = torch.tensor([[0.1, 0.5, -0.2]])
        viewer.set_params(global_orient=turn, transl=torch.tensor([[0.0, 0.1, -0.6]]))
        assert viewer.wait_idle(30)
        assert viewer.timings[-1].bytes_sent == 0 and viewer.timings[-1].messages == 0
        root = viewer._root
        rot = quat_to_matrix(torch.from_numpy(np.asarray(root.wxyz, np.float64))[None])[0]
        assert torch.allclose(rot, axis_angle_to_matrix(turn.double())[0], atol=1e-6)
        assert np.allclose(root.position, (0.0, 0.1, -0.6), atol=1e-6)


def test_splat_scene_shows_expression_blendshapes(anny_head):
    """An avatar with expression blendshapes changes colour (and shape) in the viewer with the
    expression; without an expression the update is the plain mesh-following one."""
    from types import SimpleNamespace

    from avatar.representations import MeshGaussians
    from avatar.viewer.scene import splat_scene_from_representation
    from avatar.viewer.splats import pack_geometry, pack_rgba

    class Scene:  # viser's scene API, as much as ChunkedSplats uses
        def add_gaussian_splats(self, name, **kw):
            return SimpleNamespace(buffer=None, remove=lambda: None)

    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1, expr_rank=4)
    with torch.no_grad():
        rep.expr_color.normal_(generator=torch.Generator().manual_seed(0))
        rep.expr_offset.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rest = anny_head().vertices[0]
    scene = splat_scene_from_representation(Scene(), rep, rest, chunk_size=1000)
    scene.update(rest)
    before = scene.splats._buffer.copy()
    expr = torch.zeros(1, len(anny_head.expression_names))
    expr[0, anny_head.expression_names.index("jawOpen")] = 0.7
    with torch.no_grad():
        v = anny_head(expression=expr).vertices[0]
        want = rep(v[None], sh_degree=0, expression=expr)
    sent = scene.update(v, expression=expr)
    s = scene.splats
    rgb = (0.5 + 0.28209479177387814 * want.colors[0, :, 0]).clamp(0, 1)
    np.testing.assert_array_equal(s._buffer[:, 7], pack_rgba(rgb.numpy()[s.order], want.opacities.detach().numpy()[s.order]))
    np.testing.assert_array_equal(s._buffer[:, :7], pack_geometry(*(t[0][s._order_t] for t in (want.means, want.quats, want.scales)))[:, :7])
    changed = (s._buffer[:, 7] != before[:, 7])
    assert sent.bytes_sent > 0 and 0 < changed.mean() < 1  # the jaw's Gaussians, not all
    assert scene.update(v, expression=expr).bytes_sent == 0  # nothing new: nothing sent


# --- rendered on the server (the default for an avatar) -----------------------------------------
@pytest.fixture(scope="module")
def avatar_out(anny_head, tmp_path_factory):
    """OUT with a made-up Gaussian avatar (shaded, SH degree 1, back-face culling), no tracking."""
    from avatar.representations import save_avatar
    from avatar.viewer.synthetic import shaded_representation

    out = tmp_path_factory.mktemp("served")
    rep = shaded_representation(anny_head, per_face=1, per_face_face=1, sh_degree=1, seed=0)
    save_avatar(out / "avatar", rep, model="anny", shape=torch.zeros(anny_head.num_shape))
    return out


@pytest.fixture(scope="module")
def bench_viewer(load_bench):
    return load_bench("bench_viewer")


@pytest.fixture
def tab_client(bench_viewer):
    """``open(url) -> Tab``: websocket clients that stand in for browser tabs (bench_viewer.Tab)."""
    tabs = []

    def open_tab(url):
        tabs.append(bench_viewer.Tab(url))
        return tabs[-1]

    yield open_tab
    for tab in tabs:
        tab.close()


def _decode(jpeg: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def _tab_id(viewer, tab, timeout=30.0) -> int:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        stream = viewer.drawable.stream
        ids = [cid for cid in viewer.server.get_clients() if stream.camera_of(cid) is not None]
        if ids:
            return max(ids)
        time.sleep(0.02)
    raise AssertionError("the tab's camera never reached the viewer")


def test_served_start_view_is_avatar_render(avatar_out, tmp_path, tab_client):
    """The default viewer draws a tab's camera with the renderer of `avatar render`: at the
    starting (frontal, neutral) view the server's image is `avatar render --camera frontal
    --neutral`'s file, and the JPEG the tab receives is close to it."""
    from avatar.viewer import open_viewer
    from avatar_apps.cli import main

    size = 96
    still = tmp_path / "still.png"
    assert main(["render", str(avatar_out), "--camera", "frontal", "--neutral", "--size", str(size), "-o", str(still)]) == 0
    from PIL import Image

    want = np.asarray(Image.open(still).convert("RGB"))
    with open_viewer(avatar_out, port=_port()) as viewer:
        assert viewer.renders_on_server
        cam = viewer.server.initial_camera  # where a new browser tab starts
        tab = tab_client(viewer.url.replace("http", "ws"))
        tab.look(cam.position, cam.look_at, size, size, cam.fov)
        cid = _tab_id(viewer, tab)
        stream = viewer.drawable.stream
        shown = stream.wait_shown(stream.version, final=True, client_id=cid)
        assert shown is not None and (shown.width, shown.height) == (size, size)
        served = viewer.grab(viewer.server.get_clients()[cid])
        assert np.abs(served.astype(int) - want.astype(int)).max() <= 1  # float noise of the camera's round trip
        arrived = tab.image_after(shown.at)
        assert arrived is not None
        jpeg = _decode(arrived[1])
        err = (jpeg.astype(float) - want.astype(float)) ** 2
        assert 10 * np.log10(255.0**2 / err.mean()) > 35.0


def test_served_tabs_have_their_own_camera_and_latest_wins(avatar_out, tab_client, bench_viewer):
    """Two tabs, two cameras, two images; a burst of camera messages is coalesced (the last camera
    is the one drawn in full, and a change is first drawn at a reduced size); a slider change
    redraws every tab."""
    import time

    from avatar.viewer import open_viewer
    from avatar.viewer.stream import StreamSettings

    settings = StreamSettings(move_pixels=64 * 48, min_pixels=32 * 24)
    with open_viewer(avatar_out, port=_port(), stream=settings) as viewer:
        stream = viewer.drawable.stream
        centre, dist = viewer.scene_centre, viewer.scene_distance
        front, side = tab_client(viewer.url.replace("http", "ws")), tab_client(viewer.url.replace("http", "ws"))
        front.look(bench_viewer.orbit_position(centre, dist, 0.0), centre, 160, 120)
        a = _tab_id(viewer, front)
        side.look(bench_viewer.orbit_position(centre, dist, 70.0), centre, 160, 120)
        b = next(cid for cid in _wait_ids(viewer, 2) if cid != a)
        shots = {}
        for cid in (a, b):
            shown = stream.wait_shown(stream.version, final=True, client_id=cid)
            assert (shown.width, shown.height) == (160, 120)
            shots[cid] = viewer.grab(viewer.server.get_clients()[cid])
        assert np.abs(shots[a].astype(int) - shots[b].astype(int)).mean() > 5  # not the same view

        start = time.monotonic()
        for k in range(40):  # a drag: faster than images are made
            front.look(bench_viewer.orbit_position(centre, dist, k), centre, 160, 120)
        last = bench_viewer.orbit_position(centre, dist, 39)
        while not np.allclose(_eye(stream.camera_of(a)), last, atol=1e-6):
            assert time.monotonic() < start + 30, "the last camera never arrived"
            time.sleep(0.02)
        final = stream.wait_shown(stream.version, final=True, client_id=a, after=start)
        burst = [s for s in list(stream.shown) if s.client == a and s.at > start]
        assert len(burst) < 40 and burst[-1] is final  # coalesced, and the last camera drawn last
        assert not burst[0].final and burst[0].width * burst[0].height <= 64 * 48  # reduced while moving

        version = stream.version
        expr = viewer.params()["expression"]
        expr[0, viewer.head.expression_names.index("jawOpen")] = 1.0
        viewer.set_params(expression=expr)
        assert viewer.wait_idle(30) and stream.version > version
        for cid in (a, b):
            assert stream.wait_shown(stream.version, final=True, client_id=cid) is not None


def _eye(camera) -> np.ndarray:
    return -camera.viewmat[:3, :3].T @ camera.viewmat[:3, 3]


def _wait_ids(viewer, n: int, timeout: float = 30.0) -> list[int]:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ids = [cid for cid in viewer.server.get_clients() if viewer.drawable.stream.camera_of(cid) is not None]
        if len(ids) >= n:
            return ids
        time.sleep(0.02)
    raise AssertionError(f"{n} tabs never reported their cameras")


def test_served_screenshot_and_recording(avatar_out, tmp_path, tab_client):
    """Screenshots and recordings of a served view are the server's renders of the tab's camera."""
    import time

    from avatar.io import FrameReader
    from avatar.viewer import open_viewer

    with open_viewer(avatar_out, port=_port(), save_dir=tmp_path) as viewer:
        cam = viewer.server.initial_camera
        tab = tab_client(viewer.url.replace("http", "ws"))
        tab.look(cam.position, cam.look_at, 64, 48, cam.fov)
        cid = _tab_id(viewer, tab)
        client = viewer.server.get_clients()[cid]
        shot = viewer.screenshot(client)
        assert shot.is_file() and shot.is_relative_to(tmp_path)
        viewer.record.value = True  # the GUI's checkbox: records the (only) connected tab
        time.sleep(1.0)
        viewer.record.value = False
        videos = list((tmp_path / "recordings").glob("*.mp4"))
        assert len(videos) == 1
        with FrameReader(videos[0]) as frames:
            assert frames.info.width == 64 and frames.info.height == 48
            assert sum(1 for _ in frames) >= 2


# --- browser splats (--client-splats): colour and culling baked for a still view ------------------
def test_view_appearance_is_the_renderers_per_view_colour_and_culling(anny_head):
    from avatar.render._sh import sh_bases
    from avatar.render.mesh import orbit_viewmat
    from avatar.viewer.camera import frontal_framing
    from avatar.viewer.scene import view_appearance
    from avatar.viewer.synthetic import shaded_representation

    rep = shaded_representation(anny_head, per_face=1, per_face_face=1, sh_degree=1)
    with torch.no_grad():
        rest = anny_head().vertices[0]
        s = rep(rest[None])
    centre, dist = frontal_framing(rest)
    rgb0, op0 = view_appearance(s)
    np.testing.assert_allclose(rgb0.numpy(), (0.5 + 0.28209479177387814 * s.colors[:, 0]).clamp(0, 1).numpy())
    assert torch.equal(op0, s.opacities)
    facing_front = (s.normals[0, :, 2] > 0.5)  # surface Gaussians turned toward +Z (the face)
    assert facing_front.sum() > 100
    for yaw, shown in ((0.0, True), (180.0, False)):
        view = orbit_viewmat(centre, dist, yaw, 5.0)
        rgb, op = view_appearance(s, view)
        campos = torch.as_tensor(-view[:3, :3].T @ view[:3, 3], dtype=torch.float32)
        dirs = s.means[0] - campos
        want = (sh_bases(1, dirs / dirs.norm(dim=-1, keepdim=True))[..., None] * s.colors[:, :4]).sum(1) + 0.5
        np.testing.assert_allclose(rgb.numpy(), want.clamp(0, 1).numpy(), atol=1e-5)
        assert bool((op[facing_front] > 0).all()) == shown and bool((op[facing_front] == 0).all()) != shown
    assert not torch.allclose(view_appearance(s, orbit_viewmat(centre, dist, 60.0, 5.0))[0], view_appearance(s, orbit_viewmat(centre, dist, -60.0, 5.0))[0])


def test_client_splats_bake_the_settled_view(avatar_out, tab_client, bench_viewer):
    """With --client-splats, a tab's camera that holds still is baked: seen from behind, the
    face's Gaussians are culled in the splat buffer the browser draws."""
    import time

    from avatar.viewer import open_viewer

    with open_viewer(avatar_out, port=_port(), client_splats=True) as viewer:
        assert not viewer.renders_on_server
        s = viewer.drawable.splats
        rgba = lambda: s._buffer[:, 7:8].view(np.uint8)  # noqa: E731 - rows in buffer order
        face = viewer.drawable._current.normals[0, :, 2].numpy()[s.order] > 0.5
        assert (rgba()[face, 3] > 0).all()  # before any view: all shown
        centre, dist = viewer.scene_centre, viewer.scene_distance
        tab = tab_client(viewer.url.replace("http", "ws"))
        tab.look(bench_viewer.orbit_position(centre, dist, 180.0), centre, 160, 120)
        end = time.monotonic() + 30
        while viewer.last_bake is None:
            assert time.monotonic() < end, "the still view was never baked"
            time.sleep(0.05)
        assert viewer.last_bake.bytes_sent > 0 and (rgba()[face, 3] == 0).all()
        np.testing.assert_array_equal(s._handles[0].buffer, s._buffer[: s.chunk_size])  # what the browser got


@pytest.mark.parametrize("client_splats", [False, True])
def test_live_driving_in_both_modes(avatar_out, client_splats):
    """`avatar drive`'s viewer sink (expressions and a turning head, no translation) shows each
    update in either mode: the server renders the turned head, or the browser's parent frame turns."""
    from avatar.models.rotations import axis_angle_to_matrix
    from avatar.viewer import open_viewer
    from avatar_apps.drive import ViewerSink

    with open_viewer(avatar_out, port=_port(), client_splats=client_splats) as viewer:
        names = viewer.head.expression_names
        expr = torch.zeros(1, len(names))
        expr[0, names.index("jawOpen")] = 0.7
        turn = torch.tensor([[0.0, 0.4, 0.0]])
        ViewerSink(viewer).update({"expression": expr, "global_orient": turn, "transl": torch.tensor([[0.0, 0.0, -0.8]])})
        assert viewer.wait_idle(30)
        assert torch.equal(viewer.params()["expression"], expr) and viewer.params()["transl"].abs().max() == 0
        R = axis_angle_to_matrix(turn.double())[0].numpy()
        if client_splats:
            from avatar.representations.geometry import quat_to_matrix

            wxyz = torch.from_numpy(np.asarray(viewer._root.wxyz, np.float64))
            np.testing.assert_allclose(quat_to_matrix(wxyz[None])[0].numpy(), R, atol=1e-6)
        else:
            splats, root = viewer.drawable.stream._frame
            np.testing.assert_allclose(root[:3, :3], R, atol=1e-6)
            with torch.no_grad():
                want = viewer.drawable.splats_of(viewer.head(shape=viewer._shape, expression=expr).vertices[0], expr)
            assert torch.equal(splats.means, want.means)


def test_stream_budget_follows_the_render_cost_line():
    """The size a change is drawn at: the pixels that fit 1 / target_fps on the line fitted to the
    recent renders; when the fixed part alone overruns, pixels may cost as much again."""
    from types import SimpleNamespace

    from avatar.viewer.stream import StreamSettings, ViewStreamer

    server = SimpleNamespace(on_client_connect=lambda f: f, on_client_disconnect=lambda f: f, get_clients=dict)
    settings = StreamSettings(target_fps=20.0, move_pixels=10**6, min_pixels=1000)
    stream = ViewStreamer(server, lambda frame, camera: None, settings)
    try:
        assert stream._budget_pixels() == 10**6  # nothing rendered yet
        for fixed in (0.01, 0.08):
            stream._costs.clear()
            stream._costs.extend((p, fixed + 1e-7 * p) for p in (100_000, 100_000, 900_000))
            want = max(0.05 - fixed, fixed) / 1e-7
            assert stream._budget_pixels() == pytest.approx(want, rel=1e-3)
        stream._costs.clear()
        stream._costs.extend([(200_000, 0.1)] * 3)  # one size: all of the time on the pixels
        assert stream._budget_pixels() == pytest.approx(100_000, rel=1e-3)
    finally:
        stream.close()


def _expressive(kind: str, head):
    """A made-up avatar of each kind whose appearance changes with the expression."""
    from avatar.representations import HashBlendshapes
    from avatar.representations.hashgrid import HashGridSpec
    from avatar.viewer.synthetic import shaded_representation

    if kind == "mesh_gaussians":  # with expression blendshapes
        return shaded_representation(head, per_face=1, per_face_face=1, sh_degree=1, expr_rank=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        rest = head().vertices[0]
    rep = HashBlendshapes.from_mesh_gaussians(shaded_representation(head, per_face=1, per_face_face=1, sh_degree=1), rest,
                                              len(head.expression_names), grid=HashGridSpec(levels=6))  # fmt: skip
    with torch.no_grad():  # away from the start, whose output layer is zero
        rep.hash_tables.normal_(0.0, 0.5, generator=g)
        rep.hash_mlp_w2.normal_(0.0, 0.3, generator=g)
    return rep


@pytest.mark.parametrize("kind", ["mesh_gaussians", "hash_blendshapes"])
def test_served_view_is_each_representations_own_render(anny_head, tmp_path, kind):
    """For every representation kind, the served image of a jawOpen change is what
    Avatar.render (the path of `avatar render`) draws for that expression at that camera."""
    from avatar.representations import load_avatar, save_avatar
    from avatar.viewer import open_viewer
    from avatar.viewer.camera import frontal_camera

    save_avatar(tmp_path / "avatar", _expressive(kind, anny_head), model="anny", shape=torch.zeros(anny_head.num_shape))
    av = load_avatar(tmp_path)
    expr = torch.zeros(1, len(anny_head.expression_names))
    expr[0, anny_head.expression_names.index("jawOpen")] = 0.8
    with open_viewer(tmp_path, port=_port()) as viewer:
        viewer.set_params(expression=expr)
        assert viewer.wait_idle(30)
        camera = frontal_camera(viewer.rest_vertices, 80, 64)
        served = viewer.drawable.draw(viewer.drawable.stream._frame, camera)
        neutral = viewer.drawable.draw((viewer.drawable.splats_of(viewer.rest_vertices, None), np.eye(4)), camera)
    rgb, _ = av.render({"expression": expr}, torch.tensor(camera.viewmat, dtype=torch.float32),
                       torch.tensor(camera.K, dtype=torch.float32), 80, 64)  # fmt: skip
    np.testing.assert_array_equal(served, np.rint(rgb[0].clamp(0, 1).numpy() * 255).astype(np.uint8))
    assert np.abs(served.astype(int) - neutral.astype(int)).max() > 30
