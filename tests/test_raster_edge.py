"""Edge cases of the CPU splat kernels vs the dense pure-torch reference (forward and gradients).

Every test builds a small scene with the awkward Gaussians mixed into ordinary ones, then checks
the kernels against the reference with ``compare`` from test_raster: identical radii, projection
outputs, image, alpha and the gradient of every input (means, quats, scales, opacities, colors,
viewmats, means2d, backgrounds).

Tolerances: float64 everywhere at F64 (rtol 1e-9 / atol 1e-10 on values; gradients rtol 1e-7 and
atol 1e-9 x the largest reference gradient of that input): the two paths differ only by summation
order. One float32 case at the float32 tolerances of test_raster (1e-4 / 2e-5; gradients 2e-3).
Each test also asserts that its edge case is really exercised (something drawn, something culled,
...), so a scene that silently stops testing the case fails.
"""
from __future__ import annotations

import math

import pytest
import torch
from test_raster import F64, assert_close, compare, head_scene, look_at, run

from avatar.render import RasterOptions, has_cpu_kernels, rasterize

pytestmark = pytest.mark.skipif(not has_cpu_kernels(), reason="no C++ compiler to build the CPU kernels")

_F64 = torch.float64


def _append(scene: dict, means, quats=None, scales=None, opacities=None, colors=None) -> dict:
    """The scene with extra Gaussians appended (defaults: identity rotation, 1 cm, opacity 0.8)."""
    means = torch.as_tensor(means, dtype=_F64).reshape(-1, 3)
    m = means.shape[0]
    D = scene["colors"].shape[-1]
    g = torch.Generator().manual_seed(123)
    extra = {
        "means": means,
        "quats": torch.tensor([[1.0, 0, 0, 0]], dtype=_F64).expand(m, 4) if quats is None else quats,
        "scales": torch.full((m, 3), 0.01, dtype=_F64) if scales is None else scales,
        "opacities": torch.full((m,), 0.8, dtype=_F64) if opacities is None else opacities,
        "colors": torch.rand(m, D, generator=g, dtype=_F64) if colors is None else colors,
    }
    out = dict(scene)
    for k, v in extra.items():
        out[k] = torch.cat([scene[k], torch.as_tensor(v, dtype=_F64).reshape(m, *scene[k].shape[1:])])
    return out


def _drawn(meta: dict) -> torch.Tensor:
    return (meta["radii"] > 0).all(-1)  # [C, N]


def _no_nan(out: dict) -> None:
    for name, t in [("render", out["render"]), ("alpha", out["alpha"]), *out["grads"].items()]:
        if t is not None:
            assert torch.isfinite(t).all(), f"{name} has non-finite values"


def test_behind_camera():
    # Camera at z = +0.6 looking at the origin (down -z): points with world z > 0.6 are behind it.
    scene = head_scene(120, seed=20, width=32, height=32)
    behind = [[0.0, 0.0, 0.9], [0.02, -0.01, 1.5], [0.0, 0.0, 0.6]]  # the last one: at the camera centre
    scene = _append(scene, behind, scales=torch.full((3, 3), 0.05, dtype=_F64))
    out = compare(scene, **F64)
    _no_nan(out)
    drawn = _drawn(out["meta"])
    assert not drawn[0, -3:].any() and drawn[0, :-3].sum() > 50
    for key in ("means", "quats", "scales", "opacities", "colors"):
        assert (out["grads"][key][-3:] == 0).all(), key


def test_partially_behind_and_near_plane():
    # Big Gaussians whose centres sit just in front of the near plane (their 3D extent reaches
    # behind the camera) and one just behind it; near = 0.05 m from a camera 0.6 m from the head.
    scene = head_scene(100, seed=21, width=32, height=32)
    # camera-space z = 0.6 - world z
    near_pts = [[0.0, 0.0, 0.6 - 0.051], [0.01, 0.005, 0.6 - 0.07], [0.0, 0.0, 0.6 - 0.049], [0.004, 0, 0.6 - 0.2]]
    scales = torch.tensor([[0.05, 0.05, 0.08], [0.002, 0.003, 0.2], [0.05, 0.05, 0.05], [0.01, 0.02, 0.3]], dtype=_F64)
    opac = torch.tensor([0.3, 0.5, 0.9, 0.4], dtype=_F64)
    scene = _append(scene, near_pts, scales=scales, opacities=opac)
    out = compare(scene, near=0.05, **F64)
    _no_nan(out)
    drawn = _drawn(out["meta"])
    assert drawn[0, -4] and drawn[0, -3] and not drawn[0, -2] and drawn[0, -1]
    assert out["meta"]["radii"][0, -4].min() > 32  # covers the whole image


def test_far_plane():
    scene = head_scene(100, seed=22, width=32, height=32)
    out = compare(scene, far=0.6, **F64)  # the back half of the head is beyond the far plane
    drawn = _drawn(out["meta"])
    assert 10 < drawn.sum() < 90
    assert (out["grads"]["means"][~drawn[0]] == 0).all()


def test_off_screen():
    # Centres outside the image: far enough that the perspective Jacobian is clamped (|x/z| beyond
    # 1.3x the half field of view) but big enough to reach into the image; and small ones that
    # are entirely off-screen (culled).
    scene = head_scene(100, seed=23, width=32, height=24)
    big = torch.full((4, 3), 0.12, dtype=_F64)
    small = torch.full((3, 3), 0.003, dtype=_F64)
    pts = [[0.35, 0.0, 0.0], [-0.33, 0.05, 0.1], [0.0, 0.3, 0.0], [0.3, -0.28, -0.1],  # big, clamped
           [0.28, 0.0, 0.0], [0.0, -0.22, 0.0], [-0.4, 0.4, 0.0]]  # small, off-screen  # fmt: skip
    scene = _append(scene, pts, scales=torch.cat([big, small]))
    out = compare(scene, **F64)
    _no_nan(out)
    m = out["meta"]
    drawn = _drawn(m)
    assert drawn[0, -7:-3].all() and not drawn[0, -3:].any()
    u, v = m["means2d"][0, -7:-3].unbind(-1)
    assert ((u < 0) | (u > 32) | (v < 0) | (v > 24)).all()  # centres really off-screen
    K, W, H = scene["Ks"][0], 32, 24
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    xz, yz = (u - cx) / fx, (v - cy) / fy
    clamped_x = (xz > (W - cx) / fx + 0.15 * W / fx) | (xz < -(cx / fx + 0.15 * W / fx))
    clamped_y = (yz > (H - cy) / fy + 0.15 * H / fy) | (yz < -(cy / fy + 0.15 * H / fy))
    assert clamped_x.any() and clamped_y.any()  # the Jacobian clamp is exercised on both axes
    assert out["grads"]["means"][-7:-3].abs().sum(-1).min() > 0


def test_huge_gaussians_cover_the_image():
    scene = head_scene(60, seed=24, width=32, height=32)
    scene = _append(
        scene,
        [[0.0, 0.0, 0.05], [0.02, 0.0, -0.05]],
        scales=torch.tensor([[0.5, 0.4, 0.6], [2.0, 1.0, 0.5]], dtype=_F64),
        opacities=torch.tensor([0.3, 0.6], dtype=_F64),
    )
    out = compare(scene, **F64)
    _no_nan(out)
    assert (out["meta"]["radii"][0, -2:] > 64).all()
    assert out["alpha"].min() > 0.2  # every pixel sees them


@pytest.mark.parametrize("tiny", [0.0, 1e-8])
def test_degenerate_scales(tiny):
    scene = head_scene(80, seed=25, width=32, height=32)
    s = 0.01
    scales = torch.tensor(
        [[tiny, s, s], [s, tiny, s], [s, s, tiny], [tiny, tiny, s], [tiny, s, tiny], [tiny, tiny, tiny]], dtype=_F64
    )
    pts = torch.tensor([[0.0, 0.0, 0.11], [0.03, 0.02, 0.1], [-0.03, 0.0, 0.1], [0.0, -0.03, 0.1],
                        [0.04, -0.04, 0.08], [-0.02, 0.04, 0.1]], dtype=_F64)  # fmt: skip
    g = torch.Generator().manual_seed(5)
    quats = torch.randn(6, 4, generator=g, dtype=_F64)
    scene = _append(scene, pts, quats=quats, scales=scales, opacities=torch.full((6,), 0.9, dtype=_F64))
    out = compare(scene, **F64)
    _no_nan(out)
    assert _drawn(out["meta"])[0, -6:].all()  # the 0.3 px blur keeps even a point visible
    assert out["grads"]["means"][-6:].abs().sum(-1).min() > 0


def test_zero_and_extreme_opacities():
    scene = head_scene(120, seed=26, width=32, height=32)
    n = scene["means"].shape[0]
    opac = scene["opacities"].clone()
    opac[:20] = 0.0  # culled
    opac[20:30] = 1.0 / 255.0 * 0.999  # just below the threshold: culled
    opac[30:60] = 1.0  # alpha clamped to 0.999 at the centre
    scene["opacities"] = opac
    out = compare(scene, **F64)
    _no_nan(out)
    drawn = _drawn(out["meta"])
    assert not drawn[0, :30].any() and drawn[0, 30:].sum() > 40
    assert (out["grads"]["opacities"][:30] == 0).all() and (out["grads"]["means"][:30] == 0).all()
    assert n == 120


def test_many_cameras():
    scene = head_scene(150, seed=27, n_cameras=6, width=24, height=20)
    # Camera 5 looks away from the head: it sees nothing.
    scene["viewmats"][5] = look_at(torch.tensor([0.0, 0.0, 0.6]), torch.tensor([0.0, 0.0, 2.0]))
    out = compare(scene, **F64)
    _no_nan(out)
    drawn = _drawn(out["meta"])
    assert (drawn[:5].sum(-1) > 50).all() and not drawn[5].any()
    assert out["alpha"][5].abs().max() == 0 and out["alpha"][:5].amax(dim=(1, 2, 3)).min() > 0.5
    assert out["grads"]["viewmats"][5].abs().max() == 0 and out["grads"]["viewmats"][:5].abs().amax() > 0


@pytest.mark.parametrize("with_bg", [False, True])
def test_all_culled(with_bg):
    scene = head_scene(50, seed=28, n_cameras=2, width=20, height=16)
    scene["means"] = scene["means"] + torch.tensor([0.0, 0.0, 5.0], dtype=_F64)  # all behind the cameras
    bgs = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]], dtype=_F64) if with_bg else None
    out = compare(scene, backgrounds=bgs, render_mode="RGB+D", **F64)
    _no_nan(out)
    assert out["meta"]["n_isects"] == 0 and not _drawn(out["meta"]).any()
    assert (out["alpha"] == 0).all()
    expected = torch.zeros(2, 16, 20, 4, dtype=_F64)
    if with_bg:
        expected[..., :3] = bgs[:, None, None, :]
    assert torch.equal(out["render"], expected)
    for key in ("means", "quats", "scales", "opacities", "colors", "viewmats", "means2d"):
        assert (out["grads"][key] == 0).all(), key
    if with_bg:  # the image is the background: d loss / d background = the summed weights
        assert out["grads"]["backgrounds"].abs().min() > 0


def test_non_normalised_quaternions():
    scene = head_scene(120, seed=29, width=32, height=32)
    g = torch.Generator().manual_seed(2)
    norms = torch.exp(torch.empty(120, 1, dtype=_F64).uniform_(math.log(1e-3), math.log(1e3), generator=g))
    q = scene["quats"] / scene["quats"].norm(dim=-1, keepdim=True)
    scene["quats"] = q * norms
    out = compare(scene, **F64)
    _no_nan(out)
    # The image must not depend on the norm: same render as with unit quaternions.
    unit = dict(scene, quats=q)
    r_unit = run(unit, "cpu")[0]
    assert_close(out["render"], r_unit, rtol=1e-9, atol=1e-12, name="render vs unit quaternions")
    # ... and the quaternion gradient is orthogonal to q (d/dq of a function of q/|q|).
    radial = (out["grads"]["quats"] * scene["quats"]).sum(-1).abs()
    assert radial.max() <= 1e-9 * (out["grads"]["quats"].norm(dim=-1) * scene["quats"].norm(dim=-1)).max()


@pytest.mark.parametrize("dim", [3, 6])
def test_backgrounds(dim):
    scene = head_scene(150, seed=30, n_cameras=3, width=28, height=24, colors_dim=dim)
    g = torch.Generator().manual_seed(3)
    bgs = torch.rand(3, dim, generator=g, dtype=_F64) * 2 - 0.5  # outside [0, 1] too
    out = compare(scene, backgrounds=bgs, **F64)
    assert (out["alpha"] < 0.5).any() and (out["alpha"] > 0.5).any()  # both covered and background pixels
    assert out["grads"]["backgrounds"].abs().min() > 0
    # Depth-only modes ignore the colour background (it is replaced by 0 depth).
    out_d = compare(scene, backgrounds=bgs, render_mode="ED", **F64)
    assert out_d["render"].shape[-1] == 1


def test_edge_mix_float32():
    # All of the above at once, in float32 at test_raster's float32 tolerances.
    scene = head_scene(400, seed=31, n_cameras=3, width=40, height=32)
    scene = _append(
        scene,
        [[0.0, 0.0, 0.9], [0.0, 0.0, 0.6 - 0.011], [0.35, 0.0, 0.0], [0.0, 0.0, -0.05], [0.0, 0.02, 0.1], [0, 0, 0.1]],
        quats=torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [3, 1, 2, 0], [1e-3, 0, 2e-3, 0], [100, 5, 0, 3], [1, 1, 1, 1]], dtype=_F64),
        scales=torch.tensor([[0.05] * 3, [0.02] * 3, [0.12] * 3, [0.8, 0.5, 0.6], [0.0, 0.01, 1e-8], [0.01] * 3], dtype=_F64),
        opacities=torch.tensor([0.9, 0.5, 0.7, 0.3, 1.0, 0.0], dtype=_F64),
    )  # fmt: skip
    scene = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    bgs = torch.tensor([[0.2, 0.4, 0.6], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    r1, a1, m1, g1 = run(scene, "cpu", grad=True, backgrounds=bgs)
    r2, a2, m2, g2 = run(scene, "torch", grad=True, backgrounds=bgs)
    assert (m1["radii"] != m2["radii"]).any(-1).float().mean() < 0.01
    assert_close(r1, r2, rtol=1e-4, atol=2e-5, name="render")
    assert_close(a1, a2, rtol=1e-4, atol=2e-5, name="alpha")
    for key in g2:
        assert torch.isfinite(g1[key]).all(), key
        scale = float(g2[key].abs().max())
        assert_close(g1[key], g2[key], rtol=2e-3, atol=2e-3 * scale, name=f"grad {key}")


def test_kernel_knobs():
    # Non-default tile size, radius_clip and an image that is not a multiple of the tile size.
    scene = head_scene(150, seed=32, n_cameras=2, width=37, height=21)
    out = compare(scene, options=RasterOptions(tile_size=8, radius_clip=2.0), **F64)
    assert _drawn(out["meta"]).sum() > 50


@pytest.mark.parametrize("output", ["render", "alpha"])
def test_loss_on_one_output_only(output):
    # A loss on only one output leaves the other's gradient None in the backward (the kernels are
    # then handed no array for it).
    scene = head_scene(150, seed=33, n_cameras=2, width=28, height=24)
    grads = {}
    for backend in ("cpu", "torch"):
        t = {k: scene[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")}
        render, alpha, _ = rasterize(
            t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], scene["viewmats"], scene["Ks"],
            scene["width"], scene["height"], options=RasterOptions(backend=backend),
        )  # fmt: skip
        out = render if output == "render" else alpha
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=out.dtype)
        (out * w).sum().backward()
        grads[backend] = {k: v.grad for k, v in t.items()}
    for key, ref in grads["torch"].items():
        if output == "alpha" and key == "colors":
            assert grads["cpu"][key] is None or not grads["cpu"][key].any()
            continue
        scale = float(ref.abs().max())
        assert scale > 0, key
        assert_close(grads["cpu"][key], ref, rtol=1e-7, atol=1e-9 * scale, name=f"grad {key}")
