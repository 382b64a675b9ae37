"""Posing a trained avatar's Gaussians per frame: `Avatar.splats` with the fused CPU kernel
(`avatar.render._cpu.mesh_pose`, what a loaded bundle uses) against the torch ops training uses.

    python bench/bench_splats.py OUT [--frames 60] [--repeats 6] [--no-pose]

OUT holds a trained avatar (OUT/avatar) and its tracking (OUT/tracking.npz); the first FRAMES
tracked frames are posed one at a time, as live driving and the viewer do, on one torch thread,
without gradient. Prints the largest difference between the two paths and, per path, the median and
fastest of REPEATS passes in CPU milliseconds per frame (thread time: less sensitive to other load
than wall time, not immune to it), then their ratio. ``--no-pose``: without the head's rigid pose (as
the headless drive evaluates it; body-fixed hair then stays at rest).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--no-pose", action="store_true")
    args = ap.parse_args()
    from avatar.fitting import load_tracking
    from avatar.representations import load_avatar

    torch.set_num_threads(1)
    av = load_avatar(args.out)
    tr = load_tracking(args.out / "tracking.npz")
    n = min(args.frames, tr.num_frames)
    skip = {"shape"} | ({"global_orient", "transl"} if args.no_pose else set())
    params = {k: torch.as_tensor(v) for k, v in tr.head_params(np.arange(n)).items() if k not in skip}
    frames = [{k: v[i : i + 1] for k, v in params.items()} for i in range(n)]
    rep = av.representation

    def run(kernel: bool) -> list:
        rep.inference_kernels = kernel
        with torch.no_grad():
            return [av.splats(p, sh_degree=0) for p in frames]

    worst = 0.0
    for a, b in zip(run(False), run(True)):
        for name in ("means", "quats", "scales", "normals"):
            x, y = getattr(a, name), getattr(b, name)
            worst = worst if x is None else max(worst, float((x - y).abs().max()))
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for kernel in (False, True):
            t0 = time.thread_time()
            run(kernel)
            times[kernel].append(1e3 * (time.thread_time() - t0) / n)
    print(f"{args.out}: {rep.num_gaussians} Gaussians, {n} frames{' without pose' if args.no_pose else ''}; "
          f"largest difference between the paths {worst:.2g}")  # fmt: skip
    for kernel, name in ((False, "torch ops"), (True, "fused kernel")):
        print(f"{name:>13}: median {statistics.median(times[kernel]):.1f} ms, fastest {min(times[kernel]):.1f} ms per frame")
    print(f"torch / kernel (medians): {statistics.median(times[False]) / statistics.median(times[True]):.2f}")


if __name__ == "__main__":
    main()
