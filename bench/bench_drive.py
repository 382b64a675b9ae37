"""Live driving speed: `avatar drive` on a shared clip at real-time pace (the video plays at its own
frame rate; frames are dropped when processing falls behind), headless, driving the plain head model
and, with --out, a trained avatar. Issue 34's goals: >= 25 fps processed, p95 latency <= 100 ms,
on two cores, headless and with the viewer.

    python bench/bench_drive.py                                   # hdtf_aoc, head model, headless
    python bench/bench_drive.py hdtf_aoc --out /tmp/b0/hdtf_aoc --viewer --same-person

Per run, from `avatar drive --summary`: frames read / processed / dropped, fps processed, latency
p50 / p95 in ms (from a frame being read to its update being sent: landmarks, online fit, and the
update: headless, the head's vertices or the avatar's Gaussians, as the viewer computes them; with
--viewer, sent to a viewer on 127.0.0.1 that no browser is connected to).
``--same-person`` takes the identity from OUT's tracking; else it is fitted on the first second
(a stall of one to two seconds at the start, in the figures). The machine's load average is
printed too, and the CPU seconds the process used (all its threads: decoding every frame, dropped
or not, included) over the run's wall seconds: on a shared machine the figures are a lower bound.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "video"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clip", nargs="?", default="hdtf_aoc", help="a shared clip's name, or a video path")
    ap.add_argument("--out", type=Path, default=None, help="also drive this trained avatar (OUT with OUT/avatar)")
    ap.add_argument("--viewer", action="store_true", help="also run each with the viewer")
    ap.add_argument("--same-person", action="store_true", help="identity from OUT's tracking (needs --out)")
    ap.add_argument("--seconds", type=float, default=None, help="stop each run after this long")
    ap.add_argument("--port", type=int, default=8095, help="viewer port")
    args = ap.parse_args()

    from avatar_apps.cli import main as avatar

    clip = Path(args.clip) if Path(args.clip).suffix else SHARED / f"{args.clip}.mp4"
    if not clip.is_file():
        sys.exit(f"{args.clip}: no such clip ({clip})")
    runs = [("head model", [])] + ([(f"avatar {args.out}", [str(args.out)])] if args.out else [])
    print(f"{clip.name}, real-time pace; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    for name, target in runs:
        for viewer in (False, True) if args.viewer else (False,):
            extra = ["--same-person"] if args.same_person and target else []
            extra += ["--duration", str(args.seconds)] if args.seconds else []
            extra += ["--port", str(args.port)] if viewer else ["--no-viewer"]
            with tempfile.TemporaryDirectory() as tmp:
                summary = Path(tmp) / "s.json"
                if avatar(["drive", *target, "--source", str(clip), "--summary", str(summary), *extra]) != 0:
                    return 1
                s = json.loads(summary.read_text())
            print(f"RESULT {name:>30} {'viewer' if viewer else 'headless':>8}: {s['frames_processed']}/{s['frames_in']} "
                  f"frames processed ({s['frames_dropped']} dropped), {s['fps']:.1f} fps, latency p50 "
                  f"{s['latency_ms_p50']:.0f} ms, p95 {s['latency_ms_p95']:.0f} ms; CPU {s['cpu_seconds']:.1f} s over "
                  f"{s['seconds']:.1f} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
