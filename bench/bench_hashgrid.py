"""Benchmark of hash-table blendshapes (avatar.representations.hash_blendshapes) on the CPU.

Prints, in one process with one torch thread (as `avatar train` runs):
1. the field of a ~30k-Gaussian HashBlendshapes per frame, forward + backward, split into the
   grids' blend, the gather (our C++ kernel, and its torch twin for comparison), the MLP and the
   Adam step of the field's parameters, for each number of levels asked (F features, 52 ARKit
   grids or a learnt basis of --rank);
2. how far the groups of triangles that share expression channels stray from each triangle's own
   channels, for 8, 16 and 32 groups;
3. a whole fast-cpu training step on a synthetic 256^2 clip (avatar.training.synthetic) with
   MeshGaussians and with HashBlendshapes (steps interleaved), at the preset's Gaussians and at
   ~30k (per_face=2, per_face_face=5), so the field's share of a step can be read off.

    python bench/bench_hashgrid.py [--levels 8 12 16] [--log2-size 12] [--features 2] [--rank 0]
        [--groups 16] [--repeats 7] [--steps 16] [--no-steps]

Timings are medians, wall-clock on whatever else the machine is doing.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (builds caches and kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def field_figures(head, levels: int, log2_size: int, features: int, rank: int, groups: int, repeats: int) -> dict[str, float]:
    """Per-frame costs (ms) of the field of a ~30k-Gaussian avatar (see the module docstring)."""
    from avatar.representations.hash_blendshapes import HashBlendshapes
    from avatar.representations.hashgrid import HashGridSpec, _encode, blend_tables, encode

    grid = HashGridSpec(levels=levels, log2_size=log2_size, features=features)
    rep = HashBlendshapes.on_surface(head, grid=grid, rank=rank, groups=groups, per_face=2, per_face_face=5)
    with torch.no_grad():  # a trained-like state: the output layer no longer zero
        rep.hash_mlp_w2.normal_(0.0, 0.1)
    g = torch.Generator().manual_seed(0)
    expr = torch.rand(1, rep.channels, generator=g) * 0.3
    params = list(rep.shared_parameters().values())
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-15, fused=True)
    rows, weights, group = rep.corners()
    coef = rep.basis_weights(expr).detach()  # [1, K, G]: one blended grid per group of triangles

    def field_fb() -> None:
        rep.field_deltas(expr).square().sum().backward()

    def blend_fb() -> None:
        blend_tables(rep.hash_tables, coef).sum().backward()

    table = blend_tables(rep.hash_tables, coef).detach().requires_grad_()

    def gather_fb(fn=encode) -> None:
        fn(table, rows, weights, group).sum().backward()

    feats = rep.field(expr).detach()

    def mlp_fb() -> None:
        (torch.relu(feats @ rep.hash_mlp_w1 + rep.hash_mlp_b1) @ rep.hash_mlp_w2).sum().backward()

    field_fb()

    def adam() -> None:
        opt.step()

    out = {"gaussians": rep.num_gaussians, "groups": coef.shape[1], "params_M": sum(p.numel() for p in params) / 1e6,
           "field_fb": median_ms(field_fb, repeats), "blend_fb": median_ms(blend_fb, repeats),
           "gather_fb": median_ms(gather_fb, repeats), "gather_fb_torch": median_ms(lambda: gather_fb(_encode), repeats),
           "mlp_fb": median_ms(mlp_fb, repeats), "adam": median_ms(adam, repeats)}  # fmt: skip
    opt.zero_grad(set_to_none=True)
    return out


def group_figures(head, groups: int) -> dict[str, float]:
    """How far :func:`expression_groups` strays from each triangle's own channels (expression_reach):
    (triangle, channel) pairs heard beyond the reach and reach pairs not heard, in % of the reach."""
    from avatar.representations.hash_blendshapes import expression_groups
    from avatar.representations.mesh_gaussians import expression_reach

    reach = expression_reach(head) > 0
    face_group, channels = expression_groups(reach.float(), groups)
    heard = channels[face_group] > 0
    total = float(reach.sum())
    return {"granted": 100.0 * float((heard & ~reach).sum()) / total, "dropped": 100.0 * float((~heard & reach).sum()) / total}


def step_ms(clip: Path, steps: int, **overrides) -> tuple[int, dict[str, float]]:
    """Median time of a fast-cpu training step of each representation (after two unmeasured ones),
    the two runs' steps interleaved so that both see the same load; and the Gaussian count."""
    from avatar.training import trainer
    from avatar.training.config import preset

    runs = {}
    for kind in ("mesh-gaussians", "hash-blendshapes"):
        cfg = preset("fast-cpu", eval_video=False, representation=kind, **overrides)
        run = trainer._setup(clip, cfg, torch.device("cpu"), False)
        state = trainer._initialise(run)
        run.frames.pose_fixed_vertices()
        runs[kind] = (run, state, [])
    for step in range(steps + 2):
        for run, state, times in runs.values():
            t0 = time.perf_counter()
            trainer._train_step(run, state, step)
            times.append(time.perf_counter() - t0)
    n = runs["mesh-gaussians"][1].rep.num_gaussians
    return n, {kind: 1000.0 * statistics.median(times[2:]) for kind, (_, _, times) in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[8, 12, 16])
    ap.add_argument("--log2-size", type=int, default=12)
    ap.add_argument("--features", type=int, default=2)
    ap.add_argument("--rank", type=int, default=0, help="0: one grid per ARKit channel (52); r: a learnt basis of r")
    ap.add_argument("--groups", type=int, default=16, help="groups of triangles hearing the same channels")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=16, help="measured training steps per configuration")
    ap.add_argument("--no-steps", action="store_true", help="skip the training-step timings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from avatar.models import load_head_model

    head = load_head_model("anny")
    bases = args.rank or len(head.expression_names)
    print(f"field per frame, ms (1 thread; T = 2^{args.log2_size}, F = {args.features}, {bases} expression grids + neutral, "
          f"{args.groups} groups of triangles)")  # fmt: skip
    print("| L | Gaussians | field params (M) | field fwd+bwd | blend | gather (C++) | gather (torch twin) | MLP | Adam |")
    print("|---|---|---|---|---|---|---|---|---|")
    for levels in args.levels:
        f = field_figures(head, levels, args.log2_size, args.features, args.rank, args.groups, args.repeats)
        print(f"| {levels} | {f['gaussians']} | {f['params_M']:.2f} | {f['field_fb']:.1f} | {f['blend_fb']:.1f} | "
              f"{f['gather_fb']:.1f} | {f['gather_fb_torch']:.1f} | {f['mlp_fb']:.1f} | {f['adam']:.1f} |")  # fmt: skip
    print("\nexpression groups: (triangle, channel) pairs heard beyond each triangle's reach / not heard, % of the reach")
    print("| groups | granted | dropped |")
    print("|---|---|---|")
    for groups in (8, 16, 32):
        f = group_figures(head, groups)
        print(f"| {groups} | {f['granted']:.1f} | {f['dropped']:.1f} |")
    if args.no_steps:
        return
    from avatar.training.synthetic import make_synthetic_clip

    print("\nfast-cpu training step, ms (synthetic 256^2 clip; hash-blendshapes at its defaults)")
    print("| Gaussians | mesh-gaussians | hash-blendshapes |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_synthetic_clip(Path(tmp) / "clip", head, num_frames=24, size=256)
        for overrides in ({}, {"per_face": 2, "per_face_face": 5}):
            n, ms = step_ms(clip, args.steps, **overrides)
            print(f"| {n} | {ms['mesh-gaussians']:.0f} | {ms['hash-blendshapes']:.0f} |")


if __name__ == "__main__":
    main()
