"""What the drive loop's two stages cost each other: tracking (landmarks + online solve) and the
avatar's Gaussians, run alone, as two threads of one process (as `avatar drive` runs them), and
as two processes. Prints milliseconds per frame (wall, and the stage's own CPU time).

    python bench/bench_drive_overlap.py OUT [--video VIDEO] [--frames 120]

OUT: a trained avatar's folder (OUT/avatar, OUT/tracking.npz; the tracker takes its identity).
VIDEO: the frames tracked (default: the shared clip OUT is named after). Stop other jobs first:
the figures are only meaningful on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"


def load(out: Path, video: Path, n: int):
    import torch

    from avatar.fitting import load_tracking
    from avatar.io.video import read_frames
    from avatar.representations import load_avatar

    torch.set_num_threads(1)
    av, tr = load_avatar(out), load_tracking(out)
    frames = list(read_frames(video, limit=n, dtype="uint8"))
    params = [{"expression": torch.as_tensor(tr.expression[i % len(tr.expression)][None]).float()} for i in range(n)]
    return av, tr, frames, params


def track(av, tr, frames) -> tuple[float, float]:
    """ms per frame (wall, this thread's CPU) of the online tracker over ``frames``."""
    from avatar.fitting.online import OnlineTracker, make_face_tracker

    h, w = frames[0].shape[:2]
    tracker = OnlineTracker.from_tracking(av.head, tr, (w, h), face_tracker=make_face_tracker(1))
    t0, c0 = time.perf_counter(), time.thread_time()
    for i, f in enumerate(frames):
        tracker.process(f, timestamp=i / 25.0, index=i)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    tracker.close()
    return 1e3 * wall / len(frames), 1e3 * cpu / len(frames)


def gaussians(av, params, stop=None) -> tuple[float, float]:
    """ms per frame (wall, CPU) of the avatar's Gaussians, cycling ``params`` until ``stop`` is set
    (once through without it)."""
    import torch

    t0, c0, n = time.perf_counter(), time.thread_time(), 0
    with torch.no_grad():
        while True:
            for p in params:
                av.splats(p, sh_degree=0)
                n += 1
                if stop is not None and stop.is_set():
                    break
            if stop is None or stop.is_set():
                break
    return 1e3 * (time.perf_counter() - t0) / n, 1e3 * (time.thread_time() - c0) / n


def _gaussians_process(args, queue, stop) -> None:
    av, _, _, params = load(*args)
    queue.put("ready")
    queue.get()
    queue.put(gaussians(av, params, stop))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--video", type=Path, default=None)
    ap.add_argument("--frames", type=int, default=120)
    args = ap.parse_args()
    video = args.video or SHARED / f"{args.out.name}.mp4"
    if not video.is_file():
        raise SystemExit(f"{video}: no such video; pass --video")
    loaded = load(args.out, video, args.frames)
    av, tr, frames, params = loaded

    def row(name, t, g):
        print(f"{name:8s} tracking {t[0]:5.1f} ms ({t[1]:.1f} CPU)   Gaussians {g[0]:5.1f} ms ({g[1]:.1f} CPU)", flush=True)

    row("alone", track(av, tr, frames), gaussians(av, params))
    stop, got = threading.Event(), {}
    worker = threading.Thread(target=lambda: got.setdefault("g", gaussians(av, params, stop)))
    worker.start()
    t = track(av, tr, frames)
    stop.set(), worker.join()
    row("threads", t, got["g"])
    ctx = mp.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_gaussians_process, args=((args.out, video, args.frames), queue, stop))
    proc.start()
    assert queue.get() == "ready"
    queue.put("go")
    t = track(av, tr, frames)
    stop.set()
    row("processes", t, queue.get())
    proc.join()


if __name__ == "__main__":
    main()
