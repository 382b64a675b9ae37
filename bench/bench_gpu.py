"""Device check of the GPU path, one script (about 8 minutes on one H100):

1. our GPU kernels' tests on the device (``tests/test_raster_gpu.py`` with ``AVATAR_TEST_DEVICE``);
2. rasterizer throughput at 512²/50k and 1024²/100k Gaussians: forward fps and forward+backward
   it/s, our Warp kernels (backend "gpu") beside gsplat when it is installed;
3. ``quality-gpu`` on one clip: tracking, then training for ``--steps`` steps; wall time, steps
   per second (and the preset's full length projected from it), held-out PSNR;
4. the trained avatar's render fps at 512².

    python bench/bench_gpu.py [--clip VIDEO] [--work DIR] [--steps 3000]
    python bench/bench_gpu.py --dry-run     # tiny sizes on the CPU, a synthetic clip: what a test runs

Without CUDA everything runs on the CPU, where our GPU kernels run through Warp's CPU device and
the C++ kernels stand in for gsplat; those figures say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_raster import head_scene, make_calls, timeit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "data" / "video" / "liveportrait_d11.mp4"  # 9.0 s


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def kernel_tests(dev: str) -> str:
    """Runs our kernels' tests with their tensors on ``dev``; returns pytest's summary line."""
    env = {**os.environ, "AVATAR_TEST_DEVICE": dev}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_raster_gpu.py")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else f"pytest exited {done.returncode}: {done.stderr.strip()[-300:]}"


def comparison_backend(dev: str) -> str | None:
    """What our kernels are timed against: gsplat on CUDA (when installed), the C++ kernels on the CPU."""
    if dev == "cpu":
        return "cpu"
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return None
    return "gsplat"


def throughput(cases: list[tuple[int, int]], dev: str, min_time: float) -> list[dict]:
    """Forward fps and forward+backward it/s of backend "gpu" and the comparison backend."""
    rows = []
    other = comparison_backend(dev)
    for size, n in cases:
        scene = head_scene(n, size, device=dev)
        row: dict = {"size": size, "gaussians": n}
        for name in ("gpu", other):
            if name is None:
                continue
            fwd, fwdbwd = make_calls(scene, size, name)
            row[f"{name}_fwd_fps"] = round(1 / timeit(fwd, min_time, 200, sync), 1)
            row[f"{name}_fwdbwd_its"] = round(1 / timeit(fwdbwd, min_time, 100, sync), 1)
        if other is not None:
            row[f"fwd_ratio_vs_{other}"] = round(row["gpu_fwd_fps"] / row[f"{other}_fwd_fps"], 2)
        rows.append(row)
    return rows


def quality_run(clip: Path | None, work: Path, steps: int, dev: str, dry_run: bool) -> dict:
    """Tracks ``clip`` (or makes a synthetic one) into ``work`` and trains quality-gpu on it."""
    from avatar.training import override, preset, train

    t0 = time.perf_counter()
    if dry_run:
        from avatar.models.anny_head import AnnyHead
        from avatar.training.synthetic import make_synthetic_clip

        make_synthetic_clip(work, AnnyHead.load(), num_frames=12, size=48)
        cfg = override(preset("fast-cpu"), ["resolution=48", "per_face_face=1", "eval_video=false",
                                            "color_init_frames=4", "eval_refine_iters=0", "pose_fit_frames=0"])  # fmt: skip
    else:
        from avatar.fitting.pipeline import track

        if not (work / "tracking.npz").is_file():
            track(clip, work, overlay=False)
        cfg = preset("quality-gpu")
    t_track = time.perf_counter() - t0
    full_steps = cfg.steps
    cfg = dataclasses.replace(cfg, steps=steps, device=dev, checkpoint_every=max(steps, 1))
    t1 = time.perf_counter()
    report = train(work, cfg, progress=False)
    seconds = time.perf_counter() - t1
    loop = report.get("seconds_train_loop") or seconds
    return {"clip": "synthetic" if dry_run else clip.stem, "track_s": round(t_track, 1), "steps": steps,
            "train_s": round(seconds, 1), "steps_per_s": round(steps / max(loop, 1e-9), 1),
            "projected_full_preset_min": round(full_steps * loop / max(steps, 1) / 60, 1),
            "held_out_psnr": round(report["held_out"].get("psnr", float("nan")), 2),
            "held_out_psnr_refined_pose": round((report.get("held_out_refined_pose") or {}).get("psnr", float("nan")), 2),
            "gaussians": report["num_gaussians"]}  # fmt: skip


def avatar_fps(work: Path, size: int, dev: str, frames: int) -> dict:
    """Render fps of the avatar trained in ``work`` at ``size``² on ``dev`` (the tracked
    performance's poses, one frame per call, as the viewer draws)."""
    from avatar.representations import load_avatar, render_splats

    av = load_avatar(work / "avatar", dev)
    W0, H0 = av.config.get("image_size", [size, size])
    K = torch.tensor(av.config["K"], dtype=torch.float32, device=dev)
    K[:2] *= size / H0
    viewmat = torch.tensor(av.config["viewmat"], dtype=torch.float32, device=dev)
    bg = torch.ones(3, device=dev)
    n = next(iter(av.performance.values())).shape[0]
    params = [{k: v[i % n : i % n + 1].to(dev) for k, v in av.performance.items()} for i in range(frames)]
    width = round(W0 * size / H0)

    def draw(i: int) -> None:
        with torch.no_grad():
            render_splats(av.splats(params[i]), viewmat, K, width, size, bg)

    draw(0)
    sync()
    t0 = time.perf_counter()
    for i in range(frames):
        draw(i)
    sync()
    return {"size": [width, size], "fps": round(frames / (time.perf_counter() - t0), 1), "gaussians": av.representation.num_gaussians}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="video for the quality-gpu run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_gpu"))
    parser.add_argument("--steps", type=int, default=3000, help="quality-gpu training steps (the preset has 30000)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, a synthetic clip, no kernel tests")
    args = parser.parse_args(argv)
    dev = device()
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU (no CUDA: these figures say nothing about a GPU)"
    print(f"avatar GPU check | torch {torch.__version__} | device {name}", flush=True)
    out: dict = {"device": name}
    if args.dry_run:
        out["kernel_tests"] = "skipped (dry run)"
        cases, min_time, steps, render_size = [(64, 300)], 0.0, 3, 48
    else:
        if not args.clip.is_file():
            raise SystemExit(f"{args.clip}: no such video; pass --clip VIDEO")
        out["kernel_tests"] = kernel_tests(dev)
        cases, min_time, steps, render_size = [(512, 50_000), (1024, 100_000)], 2.0, args.steps, 512
    print(f"kernel tests on {dev}: {out['kernel_tests']}", flush=True)
    out["raster"] = throughput(cases, dev, min_time)
    for row in out["raster"]:
        print("raster", json.dumps(row), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    out["quality"] = quality_run(None if args.dry_run else args.clip, args.work, steps, dev, args.dry_run)
    print("quality-gpu", json.dumps(out["quality"]), flush=True)
    out["avatar_render"] = avatar_fps(args.work, render_size, dev, frames=5 if args.dry_run else 200)
    print("avatar render", json.dumps(out["avatar_render"]), flush=True)
    print("goals: ours >= 0.5x gsplat's forward fps at 512²/50k; a trained avatar >= 500 fps at 512²; quality-gpu "
          "builds a 10 s clip's avatar in <= 2 min with held-out PSNR >= fast-cpu's + 2 dB (docs/quality.md)")
    return out


if __name__ == "__main__":
    main()
