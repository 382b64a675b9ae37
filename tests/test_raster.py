"""CPU splat kernels vs the dense pure-torch reference, forward and backward.

The helpers at the top (assert_close, head_scene) are also imported by tests/test_raster_*.py.
Tolerances: float64 comparisons at rtol=1e-9/atol=1e-10 (the two paths differ only by summation
order); float32 at the values stated next to each test.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float, atol: float, name: str = "") -> None:
    """torch.testing-style check that names the worst element: where, both values, and how far."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    assert not nan_mismatch.any(), f"{name}: NaN pattern differs at {nan_mismatch.nonzero()[:5].tolist()}"
    diff = (a - e).abs().nan_to_num(0.0)
    excess = diff - (atol + rtol * e.abs().nan_to_num(0.0))
    if excess.numel() == 0 or excess.max() <= 0:
        return
    flat = int(torch.argmax(excess))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    n_bad = int((excess > 0).sum())
    raise AssertionError(
        f"{name}: {n_bad}/{a.numel()} elements out of tolerance (rtol={rtol}, atol={atol}); worst at "
        f"{idx}: actual={a[idx].item():.9g} expected={e[idx].item():.9g} |diff|={diff[idx].item():.3g}; "
        f"max |expected|={e.abs().max().item():.3g}"
    )


def look_at(eye: Tensor, target: Tensor, up: Tensor = torch.tensor([0.0, 1.0, 0.0])) -> Tensor:
    """World->camera 4x4 (OpenCV: x right, y down, z forward) for a camera at eye looking at target."""
    eye, target, up = eye.double(), target.double(), up.double()
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, -up)  # y points down in OpenCV
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    V = torch.eye(4, dtype=torch.float64)
    V[:3, :3] = R
    V[:3, 3] = -R @ eye
    return V


def intrinsics(width: int, height: int, fov_deg: float = 40.0) -> Tensor:
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float64)


def head_scene(
    n: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    n_cameras: int = 1,
    width: int = 64,
    height: int = 64,
    colors_dim: int = 3,
    scale_range: tuple[float, float] = (0.002, 0.012),
) -> dict[str, Tensor | int]:
    """A head-sized blob: Gaussians on and inside a 0.1 m-radius ellipsoid 0.6 m in front of the
    cameras (which sit on a small arc, all looking at the head)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    radius = 0.1 * (0.85 + 0.15 * torch.rand(n, 1, generator=g, dtype=torch.float64))
    means = dirs * radius * torch.tensor([0.8, 1.0, 0.9], dtype=torch.float64)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64))
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opacities = torch.rand(n, generator=g, dtype=torch.float64) * 0.95 + 0.05
    colors = torch.rand(n, colors_dim, generator=g, dtype=torch.float64)
    viewmats, Ks = [], []
    for c in range(n_cameras):
        angle = 0.0 if n_cameras == 1 else math.radians(-30 + 60 * c / (n_cameras - 1))
        eye = torch.tensor([0.6 * math.sin(angle), 0.02 * c, 0.6 * math.cos(angle)])
        viewmats.append(look_at(eye, torch.zeros(3)))
        Ks.append(intrinsics(width, height))
    out: dict[str, Tensor | int] = {
        "means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
        "viewmats": torch.stack(viewmats), "Ks": torch.stack(Ks),
    }  # fmt: skip
    out = {k: v.to(dtype) for k, v in out.items()}
    out["width"], out["height"] = width, height
    return out


# ---------------------------------------------------------------------------------------- tests
import pytest  # noqa: E402

from avatar.errors import AvatarError  # noqa: E402
from avatar.render import RasterOptions, has_cpu_kernels, rasterize  # noqa: E402

pytestmark = pytest.mark.skipif(not has_cpu_kernels(), reason="no C++ compiler to build the CPU kernels")

_INPUTS = ("means", "quats", "scales", "opacities", "colors", "viewmats")


def run(scene: dict, backend: str, *, grad: bool = False, seed: int = 1, **kwargs):
    """Render the scene and, with grad=True, backprop a fixed random projection of the outputs.

    Returns (render, alpha, meta, grads) with grads a dict name -> gradient (None without grad)."""
    opts = kwargs.pop("options", RasterOptions())
    opts = RasterOptions(**{**opts.__dict__, "backend": backend})
    tensors = {k: scene[k].clone().requires_grad_(grad) for k in _INPUTS}
    bgs = kwargs.pop("backgrounds", None)
    if bgs is not None:
        bgs = bgs.clone().requires_grad_(grad)
    render, alpha, meta = rasterize(
        tensors["means"], tensors["quats"], tensors["scales"], tensors["opacities"], tensors["colors"],
        tensors["viewmats"], scene["Ks"], scene["width"], scene["height"], backgrounds=bgs,
        options=opts, **kwargs,
    )  # fmt: skip
    grads = None
    if grad:
        g = torch.Generator().manual_seed(seed)
        w_r = torch.randn(render.shape, generator=g, dtype=render.dtype)
        w_a = torch.randn(alpha.shape, generator=g, dtype=alpha.dtype)
        meta["means2d"].retain_grad()
        ((render * w_r).sum() + (alpha * w_a).sum()).backward()
        grads = {k: t.grad for k, t in tensors.items()}
        grads["means2d"] = meta["means2d"].grad
        if bgs is not None:
            grads["backgrounds"] = bgs.grad
    return render, alpha, meta, grads


def compare(scene: dict, *, rtol: float, atol: float, grad_rtol: float, grad_atol: float, **kwargs) -> dict:
    """Kernels vs reference: images, alpha, projection outputs and every gradient.
    Gradient atol is relative to the largest reference gradient of that input."""
    r1, a1, m1, g1 = run(scene, "cpu", grad=True, **kwargs)
    r2, a2, m2, g2 = run(scene, "torch", grad=True, **kwargs)
    assert torch.equal(m1["radii"], m2["radii"]), "radii differ"
    for key in ("means2d", "depths", "conics"):
        assert_close(m1[key], m2[key], rtol=rtol, atol=atol, name=key)
    assert_close(r1, r2, rtol=rtol, atol=atol, name="render")
    assert_close(a1, a2, rtol=rtol, atol=atol, name="alpha")
    for key in g2:
        if g2[key] is None:
            assert g1[key] is None or not g1[key].any(), key
            continue
        scale = float(g2[key].abs().max()) or 1.0
        assert_close(g1[key], g2[key], rtol=grad_rtol, atol=grad_atol * scale, name=f"grad {key}")
    return {"render": r1, "alpha": a1, "meta": m1, "grads": g1}


F64 = {"rtol": 1e-9, "atol": 1e-10, "grad_rtol": 1e-7, "grad_atol": 1e-9}


@pytest.mark.parametrize("render_mode", ["RGB", "RGB+D", "RGB+ED", "D", "ED"])
def test_matches_reference_float64(render_mode):
    scene = head_scene(300, seed=3, n_cameras=2, width=48, height=40)
    out = compare(scene, render_mode=render_mode, **F64)
    assert out["alpha"].max() > 0.5  # the scene is actually drawn


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_backgrounds_and_modes_float64(rasterize_mode):
    scene = head_scene(200, seed=4, n_cameras=2, width=40, height=40)
    bgs = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)
    out = compare(
        scene, backgrounds=bgs, render_mode="RGB+D", options=RasterOptions(rasterize_mode=rasterize_mode), **F64
    )
    assert out["grads"]["backgrounds"].abs().sum() > 0


@pytest.mark.parametrize("dim", [1, 5, 70])
def test_feature_channels_and_per_camera_colors(dim):
    scene = head_scene(150, seed=5, n_cameras=2, width=32, height=32, colors_dim=dim)
    compare(scene, **F64)
    per_cam = dict(scene)
    per_cam["colors"] = torch.rand(2, 150, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    compare(per_cam, **F64)


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_spherical_harmonics(sh_degree):
    scene = head_scene(120, seed=6, n_cameras=2, width=32, height=32)
    g = torch.Generator().manual_seed(1)
    scene["colors"] = 0.3 * torch.randn(120, 16, 3, generator=g, dtype=torch.float64)
    compare(scene, sh_degree=sh_degree, **F64)


def test_sh_basis_values():
    from avatar.render._sh import spherical_harmonics

    # Along +z only the zonal terms survive: Y00 = 0.2821, Y10 = 0.4886 z.
    coeffs = torch.zeros(1, 4, 3, dtype=torch.float64)
    coeffs[0, 0] = 1.0
    coeffs[0, 2] = 2.0
    out = spherical_harmonics(1, torch.tensor([[0.0, 0.0, 5.0]], dtype=torch.float64), coeffs)
    assert torch.allclose(out, torch.full((1, 3), 0.28209479177387814 + 2 * 0.4886025119029199, dtype=torch.float64))


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_sh_rotation_turns_the_function(sh_degree):
    from avatar.models.rotations import axis_angle_to_matrix
    from avatar.render._sh import sh_rotation, spherical_harmonics

    g = torch.Generator().manual_seed(2)
    R = axis_angle_to_matrix(torch.randn(3, 3, generator=g, dtype=torch.float64))  # [3, 3, 3]
    k = (sh_degree + 1) ** 2
    coeffs = torch.randn(k, 3, generator=g, dtype=torch.float64)
    d = torch.randn(3, 40, 3, generator=g, dtype=torch.float64)
    M = sh_rotation(sh_degree, R)
    assert M.shape == (3, k, k)
    turned = spherical_harmonics(sh_degree, d, (M @ coeffs)[:, None])  # world coefficients, world dirs
    torch.testing.assert_close(turned, spherical_harmonics(sh_degree, d @ R, coeffs), atol=1e-10, rtol=0)
    torch.testing.assert_close(sh_rotation(sh_degree, torch.eye(3, dtype=torch.float64)), torch.eye(k, dtype=torch.float64), atol=1e-12, rtol=0)


def test_matches_reference_float32():
    # Bigger scene in float32: the two paths sum in different orders, so allow float32 round-off
    # amplified by the blending (rtol 1e-4, atol 2e-5 on images; gradients 2e-3 of their max).
    scene = head_scene(1200, seed=7, n_cameras=2, width=64, height=56, dtype=torch.float32)
    r1, a1, m1, g1 = run(scene, "cpu", grad=True)
    r2, a2, m2, g2 = run(scene, "torch", grad=True)
    # A ceil() on float32 may land on the other integer for a handful of radii; such a Gaussian
    # only gains/loses tiles where its alpha is below 1/255, which does not change the image.
    assert (m1["radii"] != m2["radii"]).any(-1).float().mean() < 0.01
    assert_close(r1, r2, rtol=1e-4, atol=2e-5, name="render")
    assert_close(a1, a2, rtol=1e-4, atol=2e-5, name="alpha")
    for key in g2:
        scale = float(g2[key].abs().max())
        assert_close(g1[key], g2[key], rtol=2e-3, atol=2e-3 * scale, name=f"grad {key}")


def test_gradcheck_kernels():
    scene = head_scene(4, seed=8, n_cameras=2, width=14, height=12, scale_range=(0.01, 0.03))
    scene["opacities"] = torch.tensor([0.9, 0.6, 0.7, 0.5], dtype=torch.float64)
    Ks, W, H = scene["Ks"], scene["width"], scene["height"]

    def fn(means, quats, scales, opacities, colors, viewmats):
        r, a, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H, render_mode="RGB+D")
        return r, a

    inputs = tuple(scene[k].clone().requires_grad_() for k in _INPUTS)
    assert fn(*inputs)[1].max() > 0.3
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_reference():
    scene = head_scene(3, seed=9, n_cameras=1, width=10, height=10, scale_range=(0.01, 0.03))
    scene["opacities"] = torch.tensor([0.9, 0.6, 0.7], dtype=torch.float64)
    Ks, W, H = scene["Ks"], scene["width"], scene["height"]
    opts = RasterOptions(backend="torch", rasterize_mode="antialiased")

    def fn(means, quats, scales, opacities, colors):
        r, a, _ = rasterize(means, quats, scales, opacities, colors, scene["viewmats"], Ks, W, H, options=opts)
        return r, a

    inputs = tuple(scene[k].clone().requires_grad_() for k in _INPUTS[:5])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_threads_do_not_change_results():
    scene = head_scene(3000, seed=10, n_cameras=2, width=80, height=64, dtype=torch.float32)
    outs = [run(scene, "cpu", grad=True, options=RasterOptions(num_threads=n)) for n in (1, 3)]
    assert torch.equal(outs[0][0], outs[1][0])
    for key in outs[0][3]:
        assert torch.equal(outs[0][3][key], outs[1][3][key]), key


def test_absgrad_and_means2d_grad():
    scene = head_scene(200, seed=11, width=40, height=40)
    _, _, meta, grads = run(scene, "cpu", grad=True, options=RasterOptions(absgrad=True))
    absgrad = meta["means2d"].absgrad
    assert absgrad.shape == meta["means2d"].shape
    assert (absgrad >= grads["means2d"].abs() - 1e-12).all()
    assert (absgrad > grads["means2d"].abs() + 1e-9).any()  # signs cancel somewhere
    drawn = (meta["radii"] > 0).all(-1)
    assert (grads["means2d"][~drawn] == 0).all() and grads["means2d"][drawn].abs().sum() > 0


def test_gsplat_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gsplat", None)  # makes `import gsplat` raise ImportError
    scene = head_scene(10)
    with pytest.raises(AvatarError, match="pip install gsplat"):
        run(scene, "gsplat")


def test_bad_shapes_are_rejected():
    scene = head_scene(10)
    bad = dict(scene)
    bad["quats"] = scene["quats"][:, :3]
    with pytest.raises(AvatarError, match="quats"):
        run(bad, "cpu")
    with pytest.raises(AvatarError, match="render_mode"):
        run(scene, "cpu", render_mode="RGBD")


def test_import_compiles_nothing(tmp_path):
    import subprocess
    import sys

    env = {"AVATAR_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = "import avatar.render, avatar.render.gaussians"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gsplat_on_cuda_matches_cpu_kernels():
    pytest.importorskip("gsplat")
    scene = head_scene(5000, seed=12, n_cameras=2, width=128, height=96, dtype=torch.float32)
    r_cpu, a_cpu, m_cpu, g_cpu = run(scene, "cpu", grad=True)
    cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in scene.items()}
    r_gpu, a_gpu, m_gpu, g_gpu = run(cuda, "gsplat", grad=True)
    assert_close(r_gpu.cpu(), r_cpu, rtol=1e-3, atol=1e-3, name="render")
    assert_close(a_gpu.cpu(), a_cpu, rtol=1e-3, atol=1e-3, name="alpha")
    for key in ("means", "quats", "scales", "opacities", "colors"):
        scale = float(g_cpu[key].abs().max())
        assert_close(g_gpu[key].cpu(), g_cpu[key], rtol=1e-2, atol=1e-2 * scale, name=f"grad {key}")


def test_mix_kernel_matches_the_torch_reference_forward_and_backward():
    from avatar.render._cpu import mix
    from avatar.representations.mesh_gaussians import _mix_reference

    gen = torch.Generator().manual_seed(11)
    # N not a multiple of the kernel's 4096-row work items, B > 1: every loop bound is exercised.
    B, N, R, C = 3, 5000, 4, 3
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        w = torch.randn(B, N, R, generator=gen, dtype=dtype).requires_grad_()
        s = torch.randn(N, R, C, generator=gen, dtype=dtype).requires_grad_()
        g = torch.randn(B, N, C, generator=gen, dtype=dtype)
        out = mix(w, s, n_threads=2)
        # The gradient arrives non-contiguous (through a transpose), as it does from the trainer's
        # colour concatenation: the kernel must read a copy that is still alive.
        (out.transpose(0, 1) * g.transpose(0, 1)).sum().backward()
        got = (out.detach(), w.grad.clone(), s.grad.clone())
        w.grad = s.grad = None
        ref = _mix_reference(w, s)
        (ref * g).sum().backward()
        for name, a, e in zip(("out", "grad weights", "grad shapes"), got, (ref.detach(), w.grad, s.grad)):
            assert_close(a, e, rtol=tol, atol=tol, name=f"{dtype} {name}")
    small = (torch.randn(2, 5, 3, generator=gen, dtype=torch.float64).requires_grad_(),
             torch.randn(5, 3, 2, generator=gen, dtype=torch.float64).requires_grad_())  # fmt: skip
    assert torch.autograd.gradcheck(lambda a, b: mix(a, b), small)


def test_mesh_pose_kernel_matches_mesh_gaussians_forward():
    """The fused inference kernel (a loaded bundle's path) against MeshGaussians' torch ops."""
    from avatar.representations.mesh_gaussians import EYE, FACE, HAIR, MeshGaussians

    gen = torch.Generator().manual_seed(5)
    B, V, F = 2, 300, 500
    # Triangles of three distinct vertices (a degenerate one has no frame to agree on); the first
    # axis-aligned, so its frame is the identity.
    faces = torch.stack([torch.randperm(V, generator=gen)[:3] for _ in range(F)])
    faces[0] = torch.tensor([0, 1, 2])
    face_id = torch.randint(0, F, (5000,), generator=gen)  # not a multiple of the kernel's work items
    face_id[0] = 0
    region = torch.tensor([FACE, HAIR, EYE, 4])[torch.randint(0, 4, (5000,), generator=gen)]
    # Rounding, amplified by the thinnest of the random triangles.
    for dtype, tol in ((torch.float64, 1e-11), (torch.float32, 2e-6)):
        verts = torch.randn(B, V, 3, generator=gen, dtype=dtype)
        verts[:, :3] = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=dtype)
        rep = MeshGaussians(faces, face_id, region, sh_degree=1, cull_backfacing=True).to(dtype)
        with torch.no_grad():
            for p in (rep.offset, rep.rot, rep.log_scale, rep.static_pos, rep.follow_logit):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
            want = rep(verts)
            rep.inference_kernels = True
            got = rep(verts)
            offsets = rep.offset[None] + 0.1 * torch.randn(B, 5000, 3, generator=gen, dtype=dtype)
            local = rep.local_state()._replace(offset=offsets)
            got_b = rep(verts, local=local)
            rep.inference_kernels = False
            want_b = rep(verts, local=local)
        for name in ("means", "quats", "scales", "normals"):
            assert_close(getattr(got, name), getattr(want, name), rtol=tol, atol=tol, name=f"{dtype} {name}")
            assert_close(getattr(got_b, name), getattr(want_b, name), rtol=tol, atol=tol, name=f"{dtype} per-frame {name}")
        assert torch.equal(got.colors, want.colors) and torch.equal(got.opacities, want.opacities)
    rep.inference_kernels = True
    assert rep(verts.requires_grad_()).means.requires_grad  # with a gradient wanted, the torch ops run
