"""The Warp splat kernels (backend "gpu"), run on CPU tensors through Warp's CPU device, against
the C++ kernels (backend "cpu") and the dense pure-torch reference (backend "torch").

Every comparison renders the same float32 scene with "gpu" and "cpu", and with "torch" in float64
on the same values (the reference's own float32 round-off would hide ours), then back-propagates
the same fixed random projection of render and alpha. Tolerances (``_check``):
- render, alpha: 1e-5 absolute;
- means2d, depths, conics (where both sides draw the Gaussian): 1e-5 absolute + 1e-6 relative
  (pixel coordinates of off-screen centres exceed 100, where one float32 step is 8e-6);
- every gradient (means, quats, scales, opacities, colors, viewmats, means2d, backgrounds,
  absgrad): 1e-4 x the largest reference gradient of that input;
- radii: identical to the C++ kernels' (on Warp's CPU device); against float64, or with the
  kernels on another device, at most 1% of (camera, Gaussian) pairs may differ (a ceil landing
  on the other integer only adds or drops tiles where alpha is below 1/255).
``AVATAR_TEST_DEVICE`` (default cpu) sets where backend "gpu" runs in the comparisons.
Each edge-case test also asserts that its edge case really occurs. Without a GPU, the kernels are
still compiled for CUDA (sm_90 PTX, through Warp's bundled NVRTC); with one, they also run there
against the C++ kernels.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace

import pytest
import torch
from torch import Tensor

pytest.importorskip("warp")

from test_raster import _INPUTS, assert_close, head_scene, look_at  # noqa: E402
from test_raster_edge import _append, _drawn  # noqa: E402

from avatar.errors import AvatarError  # noqa: E402
from avatar.render import RasterOptions, has_cpu_kernels, rasterize  # noqa: E402
from avatar.render import gaussians as gaussians_mod  # noqa: E402

pytestmark = pytest.mark.skipif(not has_cpu_kernels(), reason="no C++ compiler to build the CPU kernels")

_F32, _F64 = torch.float32, torch.float64
# Where backend "gpu" runs in the comparisons: "cpu" (Warp's CPU device; CI) or e.g. "cuda" for a
# device check (bench/bench_gpu.py sets it).
_DEVICE = torch.device(os.environ.get("AVATAR_TEST_DEVICE", "cpu"))
_ATOL, _PROJ_RTOL, _GRAD_ATOL = 1e-5, 1e-6, 1e-4


def _run(scene: dict, backend: str, dtype: torch.dtype, *, grad: bool = True, absgrad: bool = False,
         **kwargs) -> dict:  # fmt: skip
    """Render the scene in ``dtype`` and back-propagate ``sum(w_r render) + sum(w_a alpha)`` with
    weights drawn in float64 (so float32 and float64 runs get the same loss). Backend "gpu" runs
    on ``$AVATAR_TEST_DEVICE`` (default cpu); everything returned is on the CPU."""
    dev = _DEVICE if backend == "gpu" else torch.device("cpu")
    opts = replace(kwargs.pop("options", RasterOptions()), backend=backend, absgrad=absgrad)
    t = {k: scene[k].to(dev, dtype).clone().requires_grad_(grad) for k in _INPUTS}
    bgs = kwargs.pop("backgrounds", None)
    if bgs is not None:
        bgs = bgs.to(dev, dtype).clone().requires_grad_(grad)
    render, alpha, meta = rasterize(
        t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], t["viewmats"],
        scene["Ks"].to(dev, dtype), scene["width"], scene["height"], backgrounds=bgs, options=opts, **kwargs,
    )  # fmt: skip
    grads = {}
    if grad:
        g = torch.Generator().manual_seed(1)
        w_r = torch.randn(render.shape, generator=g, dtype=_F64).to(dev, dtype)
        w_a = torch.randn(alpha.shape, generator=g, dtype=_F64).to(dev, dtype)
        meta["means2d"].retain_grad()
        ((render * w_r).sum() + (alpha * w_a).sum()).backward()
        grads = {k: v.grad for k, v in t.items()}
        grads["means2d"] = meta["means2d"].grad
        if bgs is not None:
            grads["backgrounds"] = bgs.grad
        if absgrad:
            grads["absgrad"] = meta["means2d"].absgrad
    cpu = {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in meta.items()}
    return {
        "render": render.detach().cpu(), "alpha": alpha.detach().cpu(), "meta": cpu,
        "grads": {k: (None if v is None else v.cpu()) for k, v in grads.items()},
    }  # fmt: skip


def _check(got: dict, ref: dict, name: str) -> None:
    """``got`` (the Warp kernels, float32) against ``ref`` at the tolerances of the module docstring."""
    r_got, r_ref = got["meta"]["radii"], ref["meta"]["radii"]
    if name == "cpu" and _DEVICE.type == "cpu":  # the same float32 operations, the same CPU maths library
        assert torch.equal(r_got, r_ref), f"radii differ from the C++ kernels' at {(r_got != r_ref).nonzero()[:5]}"
    else:
        assert (r_got != r_ref).any(-1).float().mean() < 0.01, "radii differ from the reference's"
    both = ((r_got > 0).all(-1) & (r_ref > 0).all(-1))[..., None]
    for key in ("means2d", "depths", "conics"):
        a, e = got["meta"][key].detach(), ref["meta"][key].detach()
        b = both if a.dim() == 3 else both[..., 0]
        a, e = torch.where(b, a, 0).double(), torch.where(b, e, 0).double()
        assert_close(a, e, rtol=_PROJ_RTOL, atol=_ATOL, name=f"{key} vs {name}")
    for key in ("render", "alpha"):
        assert_close(got[key].double(), ref[key].double(), rtol=0, atol=_ATOL, name=f"{key} vs {name}")
    assert set(got["grads"]) == set(ref["grads"]), f"gradients of {set(got['grads'])} vs {set(ref['grads'])}"
    for key, e in ref["grads"].items():
        a = got["grads"][key]
        if e is None or a is None:
            assert (a is None or not a.any()) and (e is None or not e.any()), f"grad {key} vs {name}"
            continue
        scale = float(e.abs().max()) or 1.0
        assert_close(a.double(), e.double(), rtol=0, atol=_GRAD_ATOL * scale, name=f"grad {key} vs {name}")


def compare(scene: dict, *, with_reference: bool = True, **kwargs) -> dict:
    """Warp kernels vs the C++ kernels and (unless ``with_reference=False``) the float64 reference;
    returns the Warp run. The scene is rounded to float32 first, so all three see the same values."""
    scene = {k: (v.to(_F32).to(_F64) if isinstance(v, Tensor) else v) for k, v in scene.items()}
    got = _run(scene, "gpu", _F32, **kwargs)
    _check(got, _run(scene, "cpu", _F32, **kwargs), "cpu")
    if with_reference:
        kwargs.pop("absgrad", None)  # the reference has no absgrad
        ref = _run(scene, "torch", _F64, **kwargs)
        got_no_abs = dict(got, grads={k: v for k, v in got["grads"].items() if k != "absgrad"})
        _check(got_no_abs, ref, "torch")
    for key, t in [("render", got["render"]), ("alpha", got["alpha"]), *got["grads"].items()]:
        assert t is None or torch.isfinite(t).all(), f"{key} has non-finite values"
    return got


# ------------------------------------------------------------------------------ ordinary scenes


@pytest.mark.parametrize("render_mode", ["RGB", "D", "ED", "RGB+D", "RGB+ED"])
def test_render_modes(render_mode):
    scene = head_scene(300, seed=3, n_cameras=2, width=48, height=40)
    out = compare(scene, render_mode=render_mode)
    assert out["alpha"].max() > 0.5  # the scene is actually drawn


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_spherical_harmonics(sh_degree):
    scene = head_scene(120, seed=6, n_cameras=2, width=32, height=32)
    scene["colors"] = 0.3 * torch.randn(120, 16, 3, generator=torch.Generator().manual_seed(1), dtype=_F64)
    compare(scene, sh_degree=sh_degree)


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_backgrounds_and_rasterize_modes(rasterize_mode):
    scene = head_scene(200, seed=4, n_cameras=2, width=40, height=40)
    bgs = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=_F64)
    opts = RasterOptions(rasterize_mode=rasterize_mode)
    out = compare(scene, backgrounds=bgs, render_mode="RGB+D", options=opts)
    assert out["grads"]["backgrounds"].abs().min() > 0
    assert (out["alpha"] < 0.5).any() and (out["alpha"] > 0.5).any()  # background shows somewhere


@pytest.mark.parametrize("dim", [1, 5, 70])
def test_feature_channels_and_per_camera_colors(dim):
    scene = head_scene(150, seed=5, n_cameras=2, width=32, height=32, colors_dim=dim)
    compare(scene)
    per_cam = dict(scene, colors=torch.rand(2, 150, dim, generator=torch.Generator().manual_seed(0), dtype=_F64))
    compare(per_cam)


def test_absgrad():
    scene = head_scene(200, seed=11, n_cameras=2, width=40, height=40)
    out = compare(scene, absgrad=True)
    absgrad, v_m2d = out["grads"]["absgrad"], out["grads"]["means2d"]
    assert (absgrad >= v_m2d.abs() * (1 - 1e-5)).all()
    assert (absgrad > v_m2d.abs() * 1.01 + 1e-9).any()  # signs cancel somewhere


def test_large_scene_binning_and_sort():
    # Many tiles per camera, long per-tile lists and many equal-tile keys: the binning must give
    # the C++ kernels' lists exactly (same tiles, same front-to-back order).
    from avatar.render import _cpu, _gpu

    scene = head_scene(2000, seed=40, n_cameras=2, width=96, height=80)
    s32 = {k: (v.float() if isinstance(v, Tensor) else v) for k, v in scene.items()}
    radii, means2d, depths, _, _ = _cpu.project(
        s32["means"], s32["quats"], s32["scales"], s32["opacities"], s32["viewmats"], s32["Ks"], 96, 80,
        eps2d=0.3, near=0.01, far=1e10, radius_clip=0.0, antialiased=False, n_threads=2,
    )  # fmt: skip
    off_c, ids_c = _cpu.bin_tiles(means2d, radii, depths, 96, 80, 16, 2)
    off_g, ids_g = _gpu.bin_tiles(means2d.to(_DEVICE), radii.to(_DEVICE), depths.to(_DEVICE), 96, 80, 16)
    assert torch.equal(off_g.cpu(), off_c) and torch.equal(ids_g.cpu(), ids_c)
    lengths = off_c.diff()
    assert ids_c.numel() > 10_000 and lengths.max() > 500 and (lengths > 0).sum() > 30
    compare(scene, with_reference=False)  # the dense reference with autograd would need GBs
    # Its forward pass alone, on one camera (seconds already).
    one = {k: (v.to(_F32).to(_F64) if isinstance(v, Tensor) else v) for k, v in scene.items()}
    one.update(viewmats=one["viewmats"][:1], Ks=one["Ks"][:1])
    got, ref = _run(one, "gpu", _F32, grad=False), _run(one, "torch", _F64, grad=False)
    assert_close(got["render"].double(), ref["render"], rtol=0, atol=_ATOL, name="render vs torch")
    assert_close(got["alpha"].double(), ref["alpha"], rtol=0, atol=_ATOL, name="alpha vs torch")


@pytest.mark.parametrize("output", ["render", "alpha"])
def test_loss_on_one_output_only(output):
    # The other output's gradient reaches the backward as None.
    scene = head_scene(150, seed=33, n_cameras=2, width=28, height=24, dtype=_F32)
    grads = {}
    for backend, dev in (("gpu", _DEVICE), ("cpu", torch.device("cpu"))):
        t = {k: scene[k].to(dev).clone().requires_grad_() for k in _INPUTS[:5]}
        render, alpha, _ = rasterize(
            t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], scene["viewmats"].to(dev),
            scene["Ks"].to(dev), scene["width"], scene["height"], options=RasterOptions(backend=backend),
        )  # fmt: skip
        out = render if output == "render" else alpha
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dev)).sum().backward()
        grads[backend] = {k: (None if v.grad is None else v.grad.cpu()) for k, v in t.items()}
    for key, ref in grads["cpu"].items():
        got = grads["gpu"][key]
        if output == "alpha" and key == "colors":
            assert (got is None or not got.any()) and (ref is None or not ref.any())
            continue
        scale = float(ref.abs().max())
        assert scale > 0, key
        assert_close(got, ref, rtol=0, atol=_GRAD_ATOL * scale, name=f"grad {key}")


# ------------------------------------------------------------------------------ edge cases


def test_behind_camera_and_beyond_far():
    # Camera at z = +0.6 looking down -z: world z > 0.6 is behind it; far = 0.6 culls the back half.
    scene = head_scene(120, seed=20, width=32, height=32)
    behind = [[0.0, 0.0, 0.9], [0.02, -0.01, 1.5], [0.0, 0.0, 0.6]]  # the last one: at the camera centre
    scene = _append(scene, behind, scales=torch.full((3, 3), 0.05, dtype=_F64))
    out = compare(scene, far=0.6)
    drawn = _drawn(out["meta"])
    assert not drawn[0, -3:].any() and 10 < drawn.sum() < 100
    culled = ~drawn[0]
    for key in ("means", "quats", "scales", "opacities", "colors"):
        assert (out["grads"][key][culled] == 0).all(), key


def test_near_plane():
    # Big Gaussians with centres just in front of near = 0.05 (their extent reaches behind the
    # camera) and one just behind it.
    scene = head_scene(100, seed=21, width=32, height=32)
    pts = [[0.0, 0.0, 0.6 - 0.051], [0.01, 0.005, 0.6 - 0.07], [0.0, 0.0, 0.6 - 0.049], [0.004, 0, 0.6 - 0.2]]
    scales = torch.tensor([[0.05, 0.05, 0.08], [0.002, 0.003, 0.2], [0.05, 0.05, 0.05], [0.01, 0.02, 0.3]], dtype=_F64)
    scene = _append(scene, pts, scales=scales, opacities=torch.tensor([0.3, 0.5, 0.9, 0.4], dtype=_F64))
    out = compare(scene, near=0.05)
    drawn = _drawn(out["meta"])
    assert drawn[0, -4] and drawn[0, -3] and not drawn[0, -2] and drawn[0, -1]
    assert out["meta"]["radii"][0, -4].min() > 32  # covers the whole image


def test_off_screen_clamped_jacobian():
    # Big off-screen centres (perspective Jacobian clamped on both axes) that reach into the
    # image, and small off-screen ones (culled).
    scene = head_scene(100, seed=23, width=32, height=24)
    scales = torch.cat([torch.full((4, 3), 0.12, dtype=_F64), torch.full((3, 3), 0.003, dtype=_F64)])
    pts = [[0.35, 0.0, 0.0], [-0.33, 0.05, 0.1], [0.0, 0.3, 0.0], [0.3, -0.28, -0.1],
           [0.28, 0.0, 0.0], [0.0, -0.22, 0.0], [-0.4, 0.4, 0.0]]  # fmt: skip
    out = compare(_append(scene, pts, scales=scales))
    drawn = _drawn(out["meta"])
    assert drawn[0, -7:-3].all() and not drawn[0, -3:].any()
    u, v = out["meta"]["means2d"][0, -7:-3].detach().unbind(-1)
    K = scene["Ks"][0]
    xz, yz = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    lim_x, lim_y = (32 - K[0, 2]) / K[0, 0] + 0.15 * 32 / K[0, 0], (24 - K[1, 2]) / K[1, 1] + 0.15 * 24 / K[1, 1]
    assert (xz.abs() > lim_x).any() and (yz.abs() > lim_y).any()  # clamped on both axes
    assert out["grads"]["means"][-7:-3].abs().sum(-1).min() > 0


@pytest.mark.parametrize("tiny", [0.0, 1e-8])
def test_huge_and_degenerate_scales(tiny):
    scene = head_scene(80, seed=24, width=32, height=32)
    huge = torch.tensor([[0.5, 0.4, 0.6], [2.0, 1.0, 0.5]], dtype=_F64)
    s = 0.01
    flat = torch.tensor([[tiny, s, s], [s, tiny, s], [s, s, tiny], [tiny, tiny, s], [tiny, tiny, tiny]], dtype=_F64)
    pts = [[0.0, 0.0, 0.05], [0.02, 0.0, -0.05],
           [0.0, 0.0, 0.11], [0.03, 0.02, 0.1], [-0.03, 0.0, 0.1], [0.0, -0.03, 0.1], [-0.02, 0.04, 0.1]]  # fmt: skip
    quats = torch.randn(7, 4, generator=torch.Generator().manual_seed(5), dtype=_F64)
    opac = torch.tensor([0.3, 0.6, 0.9, 0.9, 0.9, 0.9, 0.9], dtype=_F64)
    out = compare(_append(scene, pts, quats=quats, scales=torch.cat([huge, flat]), opacities=opac))
    radii = out["meta"]["radii"][0]
    assert (radii[-7:-5] > 64).all() and out["alpha"].min() > 0.2  # the huge ones cover every pixel
    assert _drawn(out["meta"])[0, -5:].all()  # the 0.3 px blur keeps even a point visible
    assert out["grads"]["means"][-5:].abs().sum(-1).min() > 0


def _world_at_pixel(scene: dict, u: float, v: float, depth: float) -> Tensor:
    """World point that camera 0 sees at pixel (u, v) at camera depth ``depth``."""
    K, V = scene["Ks"][0], scene["viewmats"][0]
    cam = torch.tensor([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth, 1.0], dtype=_F64)
    return (torch.linalg.inv(V) @ cam)[:3]


def test_tile_borders():
    # Centres on tile borders (x or y a multiple of 16 px, or a hair either side) and small radii:
    # each box straddles two or four tiles, and pixels on both sides of the border blend it.
    scene = head_scene(100, seed=34, width=48, height=40)
    uv = [(16, 16), (32, 16), (16, 32), (32, 32), (15.999, 20), (16.001, 24), (40, 15.999), (8, 16.001)]
    pts = torch.stack([_world_at_pixel(scene, u, v, 0.45) for u, v in uv])
    scales = torch.full((len(uv), 3), 0.0015, dtype=_F64)
    out = compare(_append(scene, pts, scales=scales, opacities=torch.full((len(uv),), 0.95, dtype=_F64)))
    m2d, radii = out["meta"]["means2d"][0, -len(uv):].detach(), out["meta"]["radii"][0, -len(uv):]
    assert (radii > 0).all() and (radii < 8).all()
    lo, hi = torch.floor((m2d - radii) / 16), torch.ceil((m2d + radii) / 16)
    assert ((hi - lo) >= 2).any(-1).all()  # every box spans a tile border
    assert out["grads"]["means"][-len(uv):].abs().sum(-1).min() > 0


def test_opaque_stack_terminates_early():
    # Eight opaque Gaussians stacked front to back: at the centre one already gives alpha 0.999,
    # so T would reach 1e-24 without early termination; with it a pixel stops after the first and
    # alpha stays below 1 - 1e-4. Behind the stack, the head is hidden at the centre only.
    scene = head_scene(60, seed=35, width=32, height=32)
    pts = [[0.0, 0.0, 0.15 - 0.002 * i] for i in range(8)]
    scene = _append(scene, pts, scales=torch.full((8, 3), 0.02, dtype=_F64), opacities=torch.ones(8, dtype=_F64))
    out = compare(scene)
    alpha = out["alpha"][0, ..., 0]
    assert alpha.max() > 0.998 and alpha.max() < 1 - 1e-4
    assert (alpha > 0.998).sum() > 4  # several pixels terminated
    assert out["grads"]["colors"][-8:].abs().sum(-1).min() > 0  # the stack's tails still blend


def test_zero_and_extreme_opacities():
    scene = head_scene(120, seed=26, width=32, height=32)
    opac = scene["opacities"].clone()
    opac[:20] = 0.0  # culled
    opac[20:30] = 1.0 / 255.0 * 0.999  # just below the threshold: culled
    opac[30:60] = 1.0  # alpha clamped to 0.999 at the centre: no gradient through the clamp there
    out = compare(dict(scene, opacities=opac))
    drawn = _drawn(out["meta"])
    assert not drawn[0, :30].any() and drawn[0, 30:].sum() > 40
    assert (out["grads"]["opacities"][:30] == 0).all() and (out["grads"]["means"][:30] == 0).all()


@pytest.mark.parametrize("with_bg", [False, True])
def test_all_culled(with_bg):
    # No intersections at all: empty tile lists, and the image is the background.
    scene = head_scene(50, seed=28, n_cameras=2, width=20, height=16)
    scene["means"] = scene["means"] + torch.tensor([0.0, 0.0, 5.0], dtype=_F64)  # behind the cameras
    bgs = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]], dtype=_F64) if with_bg else None
    out = compare(scene, backgrounds=bgs, render_mode="RGB+D")
    assert out["meta"]["n_isects"] == 0 and (out["alpha"] == 0).all()
    expected = torch.zeros(2, 16, 20, 4)
    if with_bg:
        expected[..., :3] = bgs[:, None, None, :].float()
    assert torch.equal(out["render"], expected)
    for key in ("means", "quats", "scales", "opacities", "colors", "viewmats", "means2d"):
        assert (out["grads"][key] == 0).all(), key


def test_many_cameras_one_empty():
    scene = head_scene(150, seed=27, n_cameras=6, width=24, height=20)
    scene["viewmats"][5] = look_at(torch.tensor([0.0, 0.0, 0.6]), torch.tensor([0.0, 0.0, 2.0]))  # looks away
    out = compare(scene)
    drawn = _drawn(out["meta"])
    assert (drawn[:5].sum(-1) > 50).all() and not drawn[5].any()
    assert out["grads"]["viewmats"][5].abs().max() == 0 and out["grads"]["viewmats"][:5].abs().amax() > 0


def test_kernel_knobs():
    # Tile size 8, radius_clip and an image that is not a multiple of the tile size.
    scene = head_scene(150, seed=32, n_cameras=2, width=37, height=21)
    out = compare(scene, options=RasterOptions(tile_size=8, radius_clip=2.0))
    assert _drawn(out["meta"]).sum() > 50 and (out["meta"]["radii"] > 0).any(-1).sum() < 300


# ------------------------------------------------------------------------------ backend selection


def _spy_gpu(monkeypatch) -> list:
    """Records the calls that reach the Warp blending op."""
    from avatar.render import _gpu

    calls: list = []
    original = _gpu.rasterize_to_pixels

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_gpu, "rasterize_to_pixels", spy)
    return calls


def _render_auto(scene: dict, backend: str = "auto") -> dict:
    t = {k: scene[k] for k in _INPUTS}
    _, _, meta = rasterize(
        t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], t["viewmats"], scene["Ks"],
        scene["width"], scene["height"], options=RasterOptions(backend=backend),
    )  # fmt: skip
    return meta


def test_env_var_overrides_auto(monkeypatch):
    scene = head_scene(40, seed=36, width=24, height=24, dtype=_F32)
    calls = _spy_gpu(monkeypatch)
    monkeypatch.setenv("AVATAR_RASTER_BACKEND", "gpu")
    _render_auto(scene)
    assert len(calls) == 1
    _render_auto(scene, backend="cpu")  # an explicit backend wins over the variable
    assert len(calls) == 1
    monkeypatch.setenv("AVATAR_RASTER_BACKEND", "torch")
    assert _render_auto(scene)["n_isects"] == -1  # the dense reference does not bin
    for value in ("cpu", "auto", ""):  # "auto" and empty: the default choice, CPU tensors -> "cpu"
        monkeypatch.setenv("AVATAR_RASTER_BACKEND", value)
        assert _render_auto(scene)["n_isects"] > 0
    assert len(calls) == 1
    monkeypatch.setenv("AVATAR_RASTER_BACKEND", "cuda")
    with pytest.raises(AvatarError, match="AVATAR_RASTER_BACKEND.*'auto', 'gpu', 'gsplat', 'cpu', 'torch'"):
        _render_auto(scene)


def test_auto_picks_by_device(monkeypatch):
    monkeypatch.delenv("AVATAR_RASTER_BACKEND", raising=False)
    cuda = torch.device("cuda", 0)  # a device name only: nothing runs on it
    assert gaussians_mod.resolve_backend("auto", torch.device("cpu")) == "cpu"
    monkeypatch.setitem(sys.modules, "gsplat", None)  # makes `import gsplat` raise ImportError
    assert gaussians_mod.resolve_backend("auto", cuda) == "gpu"
    monkeypatch.setitem(sys.modules, "gsplat", type(sys)("gsplat"))
    assert gaussians_mod.resolve_backend("auto", cuda) == "gsplat"
    monkeypatch.setenv("AVATAR_RASTER_BACKEND", "gpu")
    assert gaussians_mod.resolve_backend("auto", cuda) == "gpu"
    assert gaussians_mod.resolve_backend("cpu", cuda) == "cpu"  # explicit: unchanged (rasterize rejects it)


def test_gpu_backend_rejects_float64():
    scene = head_scene(20, seed=37, width=16, height=16)  # float64
    with pytest.raises(AvatarError, match=r"float32.*\.float\(\)"):
        _render_auto(scene, backend="gpu")
    s32 = {k: (v.float() if isinstance(v, Tensor) else v) for k, v in scene.items()}
    with pytest.raises(AvatarError, match="float32"):  # one float64 input is enough
        _render_auto(dict(s32, Ks=scene["Ks"]), backend="gpu")


def test_kernels_compile_for_cuda(tmp_path):
    # NVRTC (bundled with Warp) needs no GPU: CUDA-only code generation errors show up here too.
    from avatar.render._gpu import _kernels, _warp

    wp = _warp()
    if 90 not in wp.get_cuda_supported_archs():
        pytest.skip("this Warp build has no NVRTC for sm_90")
    project, binning, raster = _kernels()
    kernels = [k(d) for d in (1, 3, 4) for k in (raster.forward_kernel, raster.backward_kernel)]
    modules = [project, binning] + [k.module for k in kernels]
    for module in modules:
        (ptx,) = wp.compile_aot_module(module, arch=90, module_dir=tmp_path, use_ptx=True)
        assert ".entry" in ptx.read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_kernels():
    # The same kernels compiled by NVRTC, on CUDA tensors, against the C++ kernels. Looser than the
    # CPU-device tests: GPU atomics sum per-Gaussian gradients in any order, and the GPU's exp/log
    # round differently from the CPU's.
    scene = head_scene(3000, seed=12, n_cameras=2, width=128, height=96)
    s32 = {k: (v.to(_F32) if isinstance(v, Tensor) else v) for k, v in scene.items()}
    cpu = _run(s32, "cpu", _F32)
    cuda = _run({k: (v.cuda() if isinstance(v, Tensor) else v) for k, v in s32.items()}, "gpu", _F32)
    assert_close(cuda["render"].cpu(), cpu["render"], rtol=1e-4, atol=1e-4, name="render")
    assert_close(cuda["alpha"].cpu(), cpu["alpha"], rtol=1e-4, atol=1e-4, name="alpha")
    for key, e in cpu["grads"].items():
        scale = float(e.abs().max())
        assert_close(cuda["grads"][key].cpu(), e, rtol=1e-3, atol=1e-3 * scale, name=f"grad {key}")
