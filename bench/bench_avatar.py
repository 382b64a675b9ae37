"""Benchmark: track + train (preset fast-cpu by default) on each shared 512^2 video; prints wall
time and held-out (last 15% of frames) masked PSNR/SSIM per clip.

    python bench/bench_avatar.py [--preset fast-cpu] [--clips NAME ...] [--work /tmp/bench_avatar]
        [--set KEY=VALUE ...] [--limit FRAMES]

Tracking (avatar.fitting.pipeline.track) runs first when WORK/<clip>/tracking.npz is absent; its time is
printed separately. Timings are wall-clock on whatever else the machine is doing.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="fast-cpu")
    parser.add_argument("--clips", nargs="*", default=None, help="video file stems (default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_avatar"))
    parser.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    parser.add_argument("--limit", type=int, default=None, help="track only the first N frames")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: nothing to benchmark")
    from avatar.training import override, preset, train

    cfg = override(preset(args.preset), args.set)
    videos = sorted(p for p in SHARED.iterdir() if p.suffix == ".mp4" and (not args.clips or p.stem in args.clips))
    print(f"avatar bench | preset {args.preset} | overrides {args.set or '-'} | {len(videos)} clips")
    rows = []
    for video in videos:
        out = args.work / video.stem
        t0 = time.perf_counter()
        if not (out / "tracking.npz").is_file():
            from avatar.fitting.pipeline import track

            track(video, out, limit=args.limit, overlay=False)
        t_track = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = train(out, cfg, progress=False)
        t_train = time.perf_counter() - t1
        row = {
            "clip": video.stem, "track_s": round(t_track, 1), "train_s": round(t_train, 1),
            "frames_train": report["frames"]["train"], "frames_held_out": report["frames"]["held_out"],
            "psnr": round(report["held_out"]["psnr"], 2), "ssim": round(report["held_out"]["ssim"], 4),
            "psnr_init": round(report["held_out_initial"]["psnr"], 2), "psnr_train": round(report["train_sample"]["psnr"], 2),
            "gaussians": report["num_gaussians"], "size": report["image_size"],
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("clip                 track s  train s  held-out PSNR  SSIM    (init PSNR)")
    for r in rows:
        print(f"{r['clip']:<20} {r['track_s']:>7} {r['train_s']:>8} {r['psnr']:>13} {r['ssim']:>7} ({r['psnr_init']})")


if __name__ == "__main__":
    main()
