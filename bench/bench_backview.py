"""Benchmark: does the face show through the back of the head? The held-out frames of a phone clip
face the camera as the training frames do, so they cannot tell whether an avatar trained its
unseen back as an opaque shell or as a see-through second layer of the face; a view from behind
can. For each trained avatar this renders the head at rest from behind (yaw 180) and prints the
mean luminance gradient (0-255 per pixel) inside its silhouette: blotches of face colour (eyes,
lips) seen through the scalp raise it, a smooth shell of hair colour keeps it low.

    python bench/bench_backview.py OUT [OUT ...] [--size 256] [--save DIR]

OUT: a training output folder (its avatar/ bundle), e.g. WORK/<clip> of bench_avatar.py. Compare
avatars trained with one setting changed (``cull_backfacing``) clip by clip, and look at the
images ``--save`` writes (front | back): the figure is a proxy, the images are the evidence.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from avatar.io import write_image
from avatar.render.mesh import intrinsics, orbit_viewmat
from avatar.representations import load_avatar
from avatar.viewer.camera import FRONTAL_FOV_DEG, FRONTAL_PITCH_DEG, frontal_framing

LUMA = np.array([0.299, 0.587, 0.114])
YAWS = (0.0, 180.0)  # front, back


def views(av, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(rgb [H, W, 3], alpha [H, W])]`` of the avatar ``av`` at rest for each of :data:`YAWS`."""
    with torch.no_grad():
        centre, dist = frontal_framing(av.vertices({})[0])
    K = torch.tensor(intrinsics(size, size, FRONTAL_FOV_DEG), dtype=torch.float32)[None]
    result = []
    for yaw in YAWS:
        vm = torch.tensor(orbit_viewmat(centre, dist, yaw, FRONTAL_PITCH_DEG), dtype=torch.float32)[None]
        rgb, alpha = av.render({}, vm, K, size, size, (1.0, 1.0, 1.0))
        result.append((rgb[0].clamp(0, 1).numpy(), alpha[0, ..., 0].numpy()))
    return result


def detail(rgb: np.ndarray, alpha: np.ndarray) -> float:
    """Mean luminance gradient magnitude (x 255) over the pixels with ``alpha`` above 0.9."""
    gy, gx = np.gradient(rgb @ LUMA)
    return float(np.hypot(gx, gy)[alpha > 0.9].mean() * 255.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outs", type=Path, nargs="+")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--save", type=Path, default=None, help="write front | back of each avatar as a PNG here")
    args = parser.parse_args()
    print("| avatar | trained with culling | detail behind the head |")
    print("|---|---|---|")
    for out in args.outs:
        av = load_avatar(out / "avatar")
        front, back = views(av, args.size)
        culled = getattr(av.representation, "cull_backfacing", None)
        print(f"| {out.parent.name}/{out.name} | {'-' if culled is None else 'yes' if culled else 'no'} | {detail(*back):.1f} |", flush=True)
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            write_image(args.save / f"{out.parent.name}_{out.name}.png", np.concatenate([front[0], back[0]], axis=1))


if __name__ == "__main__":
    main()
