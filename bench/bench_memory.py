"""Peak memory of `avatar track` and `avatar train` against clip length: memory should stay flat.

Builds long clips by looping a shared clip (upscaled to ``--height``), then runs each command in a
fresh process and prints its peak resident memory (ru_maxrss), the peak of its anonymous memory
(sampled; Linux) and wall time.

    python bench/bench_memory.py [--clip VIDEO] [--seconds 30 300] [--height 1080]
        [--presets [fast-cpu default]] [--steps 300] [--work /tmp/bench_memory] [--reuse-tracking]

Goals (issue 32): tracking <= 2 GB; training <= 3 GB at 256 px and <= 6 GB at 512 px (held-out
evaluation included); a 30 s clip's figures within 20 % of a 5-minute clip's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"

# Runs the CLI in this process and prints, as the last line, its peak RSS (kB on Linux) and the
# peak of its anonymous memory (RssAnon, sampled every 0.1 s: a shorter spike can be missed). RSS
# also counts file pages the process has mapped and read, which the system may drop at any time.
_MEASURE = """import resource, sys, threading, time
from avatar_apps.cli import main
peak_anon = [0]
def sample():
    while True:
        try:
            with open("/proc/self/status") as f:
                kb = next((int(l.split()[1]) for l in f if l.startswith("RssAnon:")), 0)
        except OSError:
            kb = 0
        peak_anon[0] = max(peak_anon[0], kb)
        time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "anon_kb": peak_anon[0]}))
"""


def looped_clip(source: Path, seconds: float, height: int, dest: Path) -> Path:
    """``source`` played forward and backward until ``seconds`` long, scaled to ``height`` px."""
    import cv2

    from avatar.io import FrameReader
    from avatar.io.video import VideoWriter

    if dest.is_file():
        return dest
    with FrameReader(source, dtype="uint8") as reader:
        fps = float(reader.fps or 25.0)
        frames = list(reader)
    cycle = frames + frames[-2:0:-1]  # no jump where the loop restarts
    scale = height / frames[0].shape[0]
    size = (round(frames[0].shape[1] * scale / 2) * 2, height)
    with VideoWriter(dest, fps=fps, preset="superfast") as w:
        for i in range(int(seconds * fps)):
            w.write(cv2.resize(cycle[i % len(cycle)], size, interpolation=cv2.INTER_LINEAR))
    return dest


def measured(args: list[str]) -> dict:
    """Runs ``avatar ARGS`` in a fresh interpreter; its exit code, peak RSS (GB) and wall time."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import json\n" + _MEASURE, *args], capture_output=True, text=True)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
    try:
        info = json.loads(last)
    except json.JSONDecodeError:
        info = {}
    if done.returncode or info.get("rc"):
        raise SystemExit(f"avatar {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return {"peak_gb": round(info["peak_kb"] / 2**20, 2), "anon_peak_gb": round(info["anon_kb"] / 2**20, 2),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", type=Path, default=SHARED / "hdtf_aoc.mp4")
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 300.0])
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--presets", nargs="*", default=["fast-cpu", "default"],
                        help="training presets to measure (none: tracking only)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_memory"))
    parser.add_argument("--reuse-tracking", action="store_true",
                        help="keep a tracking already in WORK (not measured again); the training caches are rebuilt")
    args = parser.parse_args()
    if not args.clip.is_file():
        raise SystemExit(f"{args.clip}: no such video; pass --clip VIDEO")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"avatar memory bench | {args.clip.name} looped to {args.seconds} s at {args.height} px | steps {args.steps}")
    for seconds in args.seconds:
        video = looped_clip(args.clip, seconds, args.height, args.work / f"loop_{seconds:g}s_{args.height}p.mp4")
        out = args.work / f"run_{seconds:g}s"
        if args.reuse_tracking and (out / "tracking.npz").is_file():
            shutil.rmtree(out / "cache", ignore_errors=True)  # its building is part of what training costs
            print(json.dumps({"seconds_of_video": seconds, "track": "reused, not measured"}), flush=True)
        else:
            track = measured(["track", str(video), "-o", str(out), "--no-overlay"])
            print(json.dumps({"seconds_of_video": seconds, "track": track}), flush=True)
        for name in args.presets:  # each printed when done: a stopped bench keeps what it measured
            row = measured(["train", str(out), "--preset", name, "--steps", str(args.steps), "--restart", "--quiet",
                            "--set", "eval_video=false"])  # fmt: skip
            print(json.dumps({"seconds_of_video": seconds, name: row}), flush=True)


if __name__ == "__main__":
    main()
