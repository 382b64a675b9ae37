"""Benchmark of the Gaussian-splat rasterizer: our CPU kernels vs the dense pure-torch reference.

Prints forward fps and forward+backward it/s at 256^2 and 512^2 for a head-sized scene, the thread
count, and the reference's figures where it fits in memory/time (says so when skipped).
A second table times our kernels on an "opaque shell" scene that mimics a trained avatar (flat
splats tiling a closed surface at opacity ~1, so pixels terminate after a few layers), since the
first scene's random splats make every pixel walk hundreds of Gaussians.
On a CUDA machine with gsplat installed it also prints gsplat's figures at 512^2.

    python bench/bench_raster.py [--quick]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch

from avatar.render import RasterOptions, has_cpu_kernels, rasterize

HEAD_RADIUS = 0.1  # m: a ~0.2 m head
DISTANCE = 0.6  # m from the camera
FOV_DEG = 30.0


def head_scene(n: int, size: int, seed: int = 0, device: str = "cpu") -> dict:
    """Gaussians on a head-sized shell, shaped like a trained head avatar's: mostly thin
    surface-aligned splats with sigma ~0.5-4 mm (log-normal around 1.5 mm, one axis 3-10x
    thinner), opacities mostly high (60% in [0.8, 1], the rest uniform), RGB colours."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    shell = HEAD_RADIUS * (1.0 + 0.03 * torch.randn(n, 1, generator=g))
    means = dirs * shell * torch.tensor([0.8, 1.0, 0.9])
    sigma = torch.exp(math.log(1.5e-3) + 0.5 * torch.randn(n, 3, generator=g)).clamp(5e-4, 4e-3)
    sigma[:, 2] /= 3.0 + 7.0 * torch.rand(n, generator=g)
    quats = torch.randn(n, 4, generator=g)
    high = torch.rand(n, generator=g) < 0.6
    opacities = torch.where(high, 0.8 + 0.2 * torch.rand(n, generator=g), torch.rand(n, generator=g))
    colors = torch.rand(n, 3, generator=g)
    f = 0.5 * size / math.tan(math.radians(FOV_DEG) / 2)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    viewmat = torch.eye(4)
    viewmat[2, 3] = DISTANCE  # camera at z = -0.6 looking along +z at the head (OpenCV axes)
    scene = dict(means=means, quats=quats, scales=sigma, opacities=opacities, colors=colors,
                 viewmats=viewmat[None], Ks=K[None])  # fmt: skip
    return {k: v.to(device) for k, v in scene.items()}


def shell_scene(n: int, size: int, seed: int = 0, device: str = "cpu") -> dict:
    """An opaque shell, like a trained head avatar's surface: n flat splats centred on the head
    ellipsoid, each lying in the tangent plane (normal-axis sigma 1/10 of the tangent ones), tangent
    sigma sized so the splats cover the surface about four times over, opacity 0.97-1, smooth colours.
    Same camera as :func:`head_scene`."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.tensor([0.8, 1.0, 0.9]) * HEAD_RADIUS
    dirs = torch.randn(n, 3, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    means = dirs * axes
    normals = means / axes**2  # gradient of the ellipsoid's implicit function
    normals = normals / normals.norm(dim=-1, keepdim=True)
    # Quaternion (wxyz) turning +z into the normal: half-way vector construction.
    z = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    half = normals + z
    half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    quats = torch.cat([(z * half).sum(-1, keepdim=True), torch.linalg.cross(z, half)], dim=-1)
    flip = half.norm(dim=-1) < 0.5  # normal ~ -z: any 180 deg turn about x
    quats[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    p = 1.6075  # Knud Thomsen's ellipsoid surface area approximation
    a, b, c = axes.tolist()
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    # A splat is nearly opaque within ~1.5 sigma (pi (1.5 sigma)^2 of surface); aim for ~4x cover
    # so that random placement leaves almost no holes.
    sigma_t = math.sqrt(4.0 * area / (n * math.pi * 1.5**2))
    jitter = torch.exp(0.2 * torch.randn(n, 2, generator=g))
    scales = torch.cat([sigma_t * jitter, torch.full((n, 1), sigma_t / 10)], dim=-1)
    opacities = 0.97 + 0.03 * torch.rand(n, generator=g)
    colors = (0.5 + 0.4 * torch.sin(means * torch.tensor([40.0, 55.0, 70.0]))).clamp(0, 1)
    base = head_scene(1, size)
    scene = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                 viewmats=base["viewmats"], Ks=base["Ks"])  # fmt: skip
    return {k: v.to(device) for k, v in scene.items()}


def isects_per_pixel(scene: dict, size: int) -> float:
    """Tile-list entries per pixel: how many Gaussians a pixel's tile offers it (before early stop)."""
    with torch.no_grad():
        _, _, meta = rasterize(**scene, width=size, height=size, options=RasterOptions(backend="cpu"))
    return meta["n_isects"] * meta["tile_size"] ** 2 / (size * size)


def timeit(fn: Callable[[], None], min_time: float, max_iters: int, sync: Callable[[], None]) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_calls(scene: dict, size: int, backend: str) -> tuple[Callable[[], None], Callable[[], None]]:
    opts = RasterOptions(backend=backend)

    def forward() -> None:
        with torch.no_grad():
            rasterize(**scene, width=size, height=size, options=opts)

    params = {k: scene[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")}
    weights = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1)).to(scene["means"].device)

    def forward_backward() -> None:
        for p in params.values():
            p.grad = None
        render, _, _ = rasterize(**{**scene, **params}, width=size, height=size, options=opts)
        (render * weights).sum().backward()

    return forward, forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (noisier figures)")
    args = parser.parse_args()
    min_time = 0.5 if args.quick else 2.0
    if not has_cpu_kernels():
        raise SystemExit("the CPU kernels could not be built (no C++ compiler?)")
    threads = torch.get_num_threads()
    print(f"avatar rasterizer benchmark | torch {torch.__version__} | CPU threads: {threads}")
    print(
        f"scene: a {2 * HEAD_RADIUS:.1f} m head {DISTANCE} m in front of a {FOV_DEG:.0f} deg camera; Gaussians "
        "on its surface with sigma ~0.5-4 mm (thin surface splats), opacities mostly 0.8-1 (a trained head "
        "avatar's sizes); loss for backward = weighted sum of the RGB image"
    )
    no_sync = lambda: None  # noqa: E731
    # The dense reference evaluates every Gaussian at every pixel: forward-only runs keep a
    # pixel chunk x N slab in memory, autograd keeps all of them; cap both.
    ref_fwd_max_pairs, ref_bwd_max_pairs = 1e9, 4e7
    cases = [(256, 10_000), (256, 30_000), (256, 50_000), (256, 100_000),
             (512, 10_000), (512, 50_000), (512, 100_000), (128, 2_000)]  # fmt: skip
    header = f"{'size':>5} {'N':>7} | {'ours fwd fps':>12} {'ours f+b it/s':>13} | {'ref fwd fps':>11} {'ref f+b it/s':>12} | {'fwd x':>7} {'f+b x':>7}"
    print(header)
    print("-" * len(header))
    for size, n in cases:
        scene = head_scene(n, size)
        fwd, fwdbwd = make_calls(scene, size, "cpu")
        t_f = timeit(fwd, min_time, 200, no_sync)
        t_fb = timeit(fwdbwd, min_time, 100, no_sync)
        pairs = size * size * n
        ref_f = ref_fb = None
        if pairs <= ref_fwd_max_pairs:
            rf, rfb = make_calls(scene, size, "torch")
            ref_f = timeit(rf, 0.0, 1, no_sync)
            if pairs <= ref_bwd_max_pairs:
                ref_fb = timeit(rfb, 0.0, 1, no_sync)
        fmt = lambda t: f"{1 / t:.2f}" if t else "skipped"  # noqa: E731
        ratio = lambda r, o: f"{r / o:.0f}" if r else "-"  # noqa: E731
        print(
            f"{size:>4}² {n:>7} | {1 / t_f:>12.1f} {1 / t_fb:>13.1f} | {fmt(ref_f):>11} {fmt(ref_fb):>12} | "
            f"{ratio(ref_f, t_f):>7} {ratio(ref_fb, t_fb):>7}"
        )
    print(
        f"reference skipped where size² x N > {ref_fwd_max_pairs:.0e} (forward) or > {ref_bwd_max_pairs:.0e} "
        "(forward+backward): its memory grows with pixels x Gaussians. 'x' = how many times faster ours is."
    )
    print("goals (2-core machine): forward >= 30 fps at 512² / 50k; forward+backward >= 8 it/s at 256² / 30k")

    print()
    print(
        "opaque-shell scene (mimics a trained avatar: flat splats tiling the head surface ~4x, opacity "
        "0.97-1; ours only)"
    )
    header2 = f"{'size':>5} {'N':>7} | {'ours fwd fps':>12} {'ours f+b it/s':>13} | {'list/pixel':>10} (first scene)"
    print(header2)
    print("-" * len(header2))
    for size, n in cases[:-1]:
        scene = shell_scene(n, size)
        fwd, fwdbwd = make_calls(scene, size, "cpu")
        t_f = timeit(fwd, min_time, 200, no_sync)
        t_fb = timeit(fwdbwd, min_time, 100, no_sync)
        lists = f"{isects_per_pixel(scene, size):.0f} ({isects_per_pixel(head_scene(n, size), size):.0f})"
        print(f"{size:>4}² {n:>7} | {1 / t_f:>12.1f} {1 / t_fb:>13.1f} | {lists:>10}")
    print("list/pixel: tile-list entries per pixel (Gaussians a pixel may walk before its early stop)")

    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401
        except ImportError:
            print("CUDA available but gsplat is not installed: no GPU figures")
            return
        sync = torch.cuda.synchronize
        print(f"gsplat on {torch.cuda.get_device_name()}:")
        for n in (10_000, 50_000, 100_000):
            scene = head_scene(n, 512, device="cuda")
            fwd, fwdbwd = make_calls(scene, 512, "gsplat")
            print(f"  512² {n:>7}: fwd {1 / timeit(fwd, min_time, 500, sync):.0f} fps, "
                  f"fwd+bwd {1 / timeit(fwdbwd, min_time, 500, sync):.0f} it/s")  # fmt: skip


if __name__ == "__main__":
    main()
