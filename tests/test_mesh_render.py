"""CPU mesh preview: rasterizer geometry, z-buffer, culling; the show-model and demo commands."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from avatar.render.mesh import intrinsics, look_at, rasterize_triangles, render_mesh

VIEW = np.eye(4)  # camera at the origin looking along +z (OpenCV axes)


def test_look_at_is_opencv():
    view = look_at(np.array([0.0, 0.0, 2.0]), np.zeros(3))
    # A point in front of the camera has positive z; world +X is image right, world +Y image up (y down).
    p = view[:3, :3] @ np.array([0.1, 0.2, 0.0]) + view[:3, 3]
    assert p[2] == pytest.approx(2.0) and p[0] > 0 and p[1] < 0


def test_triangle_coverage_and_perspective_depth():
    K = intrinsics(64, 64, 60.0)
    # A square (two triangles) on the plane z = 2, counter-clockwise as seen from the camera.
    s = 0.5
    v = np.array([[-s, -s, 2.0], [s, -s, 2.0], [s, s, 2.0], [-s, s, 2.0]])
    f = np.array([[0, 2, 1], [0, 3, 2]])
    fr = rasterize_triangles(v, f, VIEW, K, 64, 64, cull_backfaces=False)
    side = 2 * s * K[0, 0] / 2.0  # projected side length in pixels
    assert abs(fr.mask.sum() - side**2) < 4 * side  # area within a one-pixel border
    assert np.allclose(fr.depth[fr.mask], 2.0)
    assert np.allclose(fr.bary[fr.mask].sum(-1), 1.0)
    # A slanted plane: depth at each covered pixel equals the ray-plane intersection.
    v2 = v.copy()
    v2[:, 2] = 2.0 + 0.5 * v2[:, 0]
    fr2 = rasterize_triangles(v2, f, VIEW, K, 64, 64, cull_backfaces=False)
    ys, xs = np.nonzero(fr2.mask)
    dx = (xs + 0.5 - K[0, 2]) / K[0, 0]
    expected = 2.0 / (1.0 - 0.5 * dx)  # z = 2 + 0.5 x with x = z * dx
    assert np.allclose(fr2.depth[ys, xs], expected, rtol=1e-9)


def test_zbuffer_and_backface_culling():
    K = intrinsics(32, 32, 60.0)
    near = np.array([[-1, -1, 3.0], [1, -1, 3.0], [0, 1, 3.0]])
    far = near + [0, 0, 2.0]
    v = np.concatenate([far, near])
    for f in (np.array([[0, 2, 1], [3, 5, 4]]), np.array([[3, 5, 4], [0, 2, 1]])):
        fr = rasterize_triangles(v, f, VIEW, K, 32, 32)
        ids = np.unique(fr.face_id[fr.mask])
        nearest = [k for k in range(2) if f[k, 0] == 3]
        assert list(ids) == nearest  # the nearer triangle wins whatever the order
    flipped = np.array([[3, 4, 5]])  # clockwise as seen from the camera: a back face
    assert not rasterize_triangles(v, flipped, VIEW, K, 32, 32).mask.any()
    assert rasterize_triangles(v, flipped, VIEW, K, 32, 32, cull_backfaces=False).mask.any()


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(0)
    v = rng.uniform(-1, 1, (60, 3)) + [0, 0, 4.0]
    f = rng.integers(0, 60, (40, 3))
    K = intrinsics(48, 48, 50.0)
    a = rasterize_triangles(v, f, VIEW, K, 48, 48, cull_backfaces=False)
    b = rasterize_triangles(v, f, VIEW, K, 48, 48, cull_backfaces=False, chunk_pairs=50)
    assert np.array_equal(a.face_id, b.face_id) and np.allclose(a.depth[a.mask], b.depth[b.mask])


def test_render_head_preview(anny_head):
    from avatar.render.mesh import orbit_viewmat

    v = anny_head().vertices[0].double().numpy()
    img = render_mesh(v, anny_head.faces.numpy(), orbit_viewmat(v.mean(0), 1.0), intrinsics(96, 96, 25), 96, 96)
    assert img.shape == (96, 96, 3) and img.dtype == np.float32
    centre = img[32:64, 32:64]
    assert (np.abs(centre - 1.0).sum(-1) > 0.1).mean() > 0.75  # the head covers most of the centre
    assert np.allclose(img[0, 0], 1.0)  # background in the corner


def test_show_model_cli(tmp_path, anny_head, capsys):
    from avatar_apps.cli import main

    out = tmp_path / "h.png"
    assert main(["show-model", "-o", str(out), "--size", "64", "--expression", "jawOpen=1"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (64, 64, 3) and (img < 250).any()
    neutral = tmp_path / "n.png"
    assert main(["show-model", "-o", str(neutral), "--size", "64"]) == 0
    assert not np.array_equal(np.asarray(Image.open(neutral)), img)  # the expression changed the picture
    assert main(["show-model", "-o", str(tmp_path / "x.png"), "--expression", "jawOpne=1"]) == 2
    assert "unknown expression channel 'jawOpne'" in capsys.readouterr().err
    assert main(["show-model", "-o", str(tmp_path / "x.gif")]) == 2
    assert main(["show-model", "--model", "flame", "-o", str(tmp_path / "f.png")]) == 2  # no FLAME file given
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "f.png").exists()


def test_demo_cli(tmp_path, anny_head):
    from avatar_apps.cli import main

    assert main(["demo", "-o", str(tmp_path), "--size", "48", "--no-reconstruct"]) == 0
    for name in ("head.png", "expressions.png", "turntable.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert Image.open(tmp_path / "expressions.png").size == (4 * 48, 2 * 48)
