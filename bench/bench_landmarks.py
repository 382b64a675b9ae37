"""Landmark bench: speed (detection + 478 landmarks, tracking mode) and, with --compare-mediapipe,
agreement with MediaPipe's own FaceMesh pipeline and its speed in the same run.

    python bench/bench_landmarks.py                       # our fps, 1 and 2 threads
    python bench/bench_landmarks.py --compare-mediapipe   # + MediaPipe fps and accuracy per video

MediaPipe (``mediapipe==0.10.21``, ``solutions.face_mesh`` with ``refine_landmarks=True``) is never a
project dependency: it is installed into a throw-away venv (``--mp-venv``, default /tmp/mpvenv) and
run there in a subprocess on exactly the frames we decode (saved to a temporary .npy).

Threads: "1 thread" runs pinned to one CPU core (``taskset``) with LiteRT at 1 thread; "2 threads"
on two cores with 2 LiteRT threads. MediaPipe's graph picks its own threads, so the core pinning is
what limits it; both pipelines get the same cores. Frames are decoded beforehand and held in
memory, so fps counts detection + landmarks only (no video decode) for both.

Accuracy: mean over frames and all 478 points of the 2D distance between our landmarks and
MediaPipe's, as % of the inter-ocular distance (outer eye corners 33-263 in MediaPipe's result).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "video"
VIDEOS = ["hdtf_katiehill.mp4", "hdtf_aoc.mp4", "liveportrait_d3.mp4", "liveportrait_d9.mp4",
          "liveportrait_d10.mp4", "liveportrait_d13.mp4"]

# Runs inside the MediaPipe venv. argv: frames.npy out.npz repeats
_MP_WORKER = r"""
import sys, time, numpy as np
import mediapipe as mp
frames = np.load(sys.argv[1], mmap_mode="r")
repeats = int(sys.argv[3])
h, w = frames.shape[1:3]
best = None
for r in range(repeats):
    fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                         refine_landmarks=True, min_detection_confidence=0.5,
                                         min_tracking_confidence=0.5)
    for f in frames[:5]:
        fm.process(np.ascontiguousarray(f))  # warm-up (graph start, allocation)
    fm.close()
    fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                         refine_landmarks=True, min_detection_confidence=0.5,
                                         min_tracking_confidence=0.5)
    out = np.full((len(frames), 478, 3), np.nan, np.float32)
    t = time.perf_counter()
    for i in range(len(frames)):
        res = fm.process(np.ascontiguousarray(frames[i]))
        if res.multi_face_landmarks:
            lm = res.multi_face_landmarks[0].landmark
            out[i] = [(p.x * w, p.y * h, p.z * w) for p in lm]
    dt = time.perf_counter() - t
    fm.close()
    best = dt if best is None else min(best, dt)
np.savez(sys.argv[2], landmarks=out, seconds=best)
"""

# Runs our pipeline in a subprocess so that it can be pinned to cores like MediaPipe.
_OUR_WORKER = r"""
import sys, time, numpy as np
sys.path.insert(0, sys.argv[5])
from avatar.perception import FaceTracker
frames = np.load(sys.argv[1], mmap_mode="r")
threads, repeats = int(sys.argv[3]), int(sys.argv[4])
best = None
for r in range(repeats):
    tracker = FaceTracker(num_threads=threads)
    for f in frames[:5]:
        tracker.process(np.ascontiguousarray(f))
    tracker.reset()
    results = []
    t = time.perf_counter()
    for i in range(len(frames)):
        results.append(tracker.process(np.ascontiguousarray(frames[i])))
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
out = np.stack([r.landmarks for r in results])
np.savez(sys.argv[2], landmarks=out, seconds=best, detected=np.array([r.detected for r in results]))
"""


def ensure_mp_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import mediapipe"], capture_output=True).returncode == 0
    if not ok:
        print(f"creating throw-away venv {venv} with mediapipe==0.10.21 (not a project dependency) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "mediapipe==0.10.21"], check=True)
    return py


def cores(n: int) -> list[str]:
    avail = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(avail) < n:
        return []
    return ["taskset", "-c", ",".join(str(c) for c in avail[:n])]


def decode(path: Path, limit: int | None) -> np.ndarray:
    sys.path.insert(0, str(REPO))
    from avatar.io import FrameReader

    return np.stack(list(FrameReader(path, limit=limit, dtype="uint8")))


def run_worker(python: str, code: str, args: list[str], ncores: int, tmp: Path) -> dict:
    script = tmp / "worker.py"
    script.write_text(code)
    out = tmp / "out.npz"
    env = dict(os.environ, OMP_NUM_THREADS=str(ncores), GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = cores(ncores) + [python, str(script), args[0], str(out), *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    data = np.load(out)
    return {k: data[k] for k in data.files}


def accuracy(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float, int]:
    """(mean, 95th percentile per frame) of 2D distance / IOD in %, frames where both found."""
    both = ~np.isnan(ours[:, 0, 0]) & ~np.isnan(ref[:, 0, 0])
    iod = np.linalg.norm(ref[both, 33, :2] - ref[both, 263, :2], axis=-1)
    d = np.linalg.norm(ours[both, :, :2] - ref[both, :, :2], axis=-1) / iod[:, None] * 100.0
    per_frame = d.mean(1)
    return float(d.mean()), float(np.percentile(per_frame, 95)), int(both.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare-mediapipe", action="store_true", help="also run MediaPipe (throw-away venv)")
    ap.add_argument("--mp-venv", type=Path, default=Path("/tmp/mpvenv"))
    ap.add_argument("--speed-video", default="hdtf_katiehill.mp4", help="512x512 shared clip for fps")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per setting (best is kept)")
    ap.add_argument("--limit", type=int, default=None, help="frames per video (default: all)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: this bench needs the shared test videos")
    mp_python = str(ensure_mp_venv(args.mp_venv)) if args.compare_mediapipe else None
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        frames_file = tmp / "frames.npy"

        # ---- speed
        frames = decode(SHARED / args.speed_video, args.limit)
        np.save(frames_file, frames)
        print(f"speed: {args.speed_video} {frames.shape[2]}x{frames.shape[1]}, {len(frames)} frames in memory, "
              f"tracking mode, best of {args.repeats}; CPU shared with other users, so figures are noisy")
        print(f"{'threads':>8} {'ours fps':>10} {'MediaPipe fps':>14} {'ours detector runs':>19}")
        for n in (1, 2):
            ours = run_worker(sys.executable, _OUR_WORKER, [str(frames_file), str(n), str(args.repeats), str(REPO)], n, tmp)
            our_fps = len(frames) / float(ours["seconds"])
            mp_fps = float("nan")
            if mp_python:
                ref = run_worker(mp_python, _MP_WORKER, [str(frames_file), str(args.repeats)], n, tmp)
                mp_fps = len(frames) / float(ref["seconds"])
            print(f"{n:>8} {our_fps:>10.1f} {mp_fps:>14.1f} {int(ours['detected'].sum()):>19}", flush=True)

        # ---- accuracy
        if mp_python:
            print("\naccuracy vs MediaPipe FaceMesh (refine_landmarks=True), all 478 points, 2D, "
                  "% of inter-ocular distance (outer eye corners):")
            print(f"{'video':>22} {'size':>10} {'frames':>7} {'both found':>10} {'mean %':>7} {'p95 frame %':>11}")
            summary = {}
            for name in VIDEOS:
                frames = decode(SHARED / name, args.limit)
                np.save(frames_file, frames)
                ours = run_worker(sys.executable, _OUR_WORKER, [str(frames_file), "2", "1", str(REPO)], 2, tmp)
                ref = run_worker(mp_python, _MP_WORKER, [str(frames_file), "1"], 2, tmp)
                mean, p95, n_both = accuracy(ours["landmarks"], ref["landmarks"])
                found_ours = int((~np.isnan(ours["landmarks"][:, 0, 0])).sum())
                found_mp = int((~np.isnan(ref["landmarks"][:, 0, 0])).sum())
                size = f"{frames.shape[2]}x{frames.shape[1]}"
                print(f"{name:>22} {size:>10} {len(frames):>7} {n_both:>10} {mean:>7.3f} {p95:>11.3f}"
                      f"   (found: ours {found_ours}, MediaPipe {found_mp})", flush=True)
                summary[name] = mean
            print(json.dumps({"mean_percent_iod": summary}))


if __name__ == "__main__":
    main()
