"""Texture baking: photographs of a head with known vertex colours, baked back onto the UV atlas."""
from __future__ import annotations

import numpy as np
import torch

from avatar.export.texture import bake_texture_from_frames, fill_holes, texture_from_vertex_colors, uv_rasterize
from avatar.render.mesh import intrinsics, orbit_viewmat, rasterize_triangles


def _colors(vertices: np.ndarray) -> np.ndarray:
    """A smooth colour field over the head (a few cm wavelength), so every region differs."""
    p = vertices * 40.0
    return 0.5 + 0.4 * np.stack([np.sin(p[:, 0] + 0.3), np.sin(p[:, 1] * 0.8 + 1.0), np.cos(p[:, 2] + p[:, 0] * 0.5)], 1)


def _unlit_render(v: np.ndarray, faces: np.ndarray, colors: np.ndarray, view: np.ndarray, K: np.ndarray, size: int) -> np.ndarray:
    """Albedo only: render_mesh shades (lights) the colours, which no bake could undo; the bake is
    about geometry, visibility and blending, so the synthetic photos carry the plain albedo."""
    frags = rasterize_triangles(v, faces, view, K, size, size)
    img = np.zeros((size, size, 3))
    m = frags.mask
    img[m] = (colors[faces[frags.face_id[m]]] * frags.bary[m][..., None]).sum(1)
    return img.astype(np.float32)


def test_bake_reproduces_vertex_colours(anny_head) -> None:
    rng = np.random.default_rng(0)
    n, res, tex = 7, 320, 256
    params = {
        "jaw": np.c_[rng.uniform(0, 0.1, n), np.zeros((n, 2))],
        "global_orient": rng.normal(0, 0.05, (n, 3)),
        "transl": rng.normal(0, 0.005, (n, 3)),
    }
    with torch.no_grad():
        posed = anny_head(**{k: torch.as_tensor(v, dtype=torch.float32) for k, v in params.items()}).vertices.double().numpy()
        rest = anny_head().vertices[0].double().numpy()
    colors = _colors(rest)
    faces = anny_head.faces.numpy()
    K = intrinsics(res, res, 25.0)
    centre = 0.5 * (rest.min(0) + rest.max(0))
    yaws = np.linspace(-75, 75, n)
    views = np.stack([orbit_viewmat(centre, 0.75, y, 5.0) for y in yaws])
    frames = [_unlit_render(posed[i], faces, colors, views[i], K, res) for i in range(n)]

    bake = bake_texture_from_frames(anny_head, frames, views, np.repeat(K[None], n, 0), params, tex, max_frames=5, progress=False)
    expected = texture_from_vertex_colors(anny_head, colors, tex)
    covered = uv_rasterize(anny_head.uvs.double().numpy(), anny_head.uv_faces.numpy(), tex).mask
    seen = covered & (bake.weight > 0)
    err = np.abs(bake.image - expected).max(-1)
    print(f"bake: {seen.sum()}/{covered.sum()} covered texels seen in {len(bake.frames_used)} frames "
          f"{bake.frames_used}; |error| median {np.median(err[seen]):.4f}, p95 {np.percentile(err[seen], 95):.4f}, "
          f"max {err[seen].max():.3f}")
    assert bake.frames_used[0] == n // 2  # the frontal view comes first
    assert {0, n - 1} <= set(bake.frames_used)  # and both extreme sides are used
    assert seen.sum() > 0.5 * covered.sum()  # yaw within ±75°: the back of the head is unseen
    assert np.median(err[seen]) < 0.005 and np.percentile(err[seen], 95) < 0.02
    assert np.isfinite(bake.image).all() and bake.image.min() >= 0 and bake.image.max() <= 1
    # A bake from a wrong colour field must fail the same bound: the check can fail.
    assert np.median(np.abs(bake.image - texture_from_vertex_colors(anny_head, colors[::-1], tex)).max(-1)[seen]) > 0.05


def test_fill_holes_continues_surroundings() -> None:
    img = np.zeros((32, 32, 3))
    img[:, :16] = 0.2
    img[:, 16:] = 0.8
    known = np.ones((32, 32), bool)
    known[10:20, 4:12] = False  # a hole inside the dark half
    known[:, 30:] = False  # a gutter on the bright side
    filled = fill_holes(np.where(known[..., None], img, 0.0), known)
    assert np.allclose(filled[10:20, 4:12], 0.2) and np.allclose(filled[:, 30:], 0.8)
    assert np.array_equal(filled[known], img[known])
