"""Online tracker against the batch tracker, per clip (issue 34's goals: median reprojection <= 3 % of
the inter-ocular distance, mean |ARKit difference| <= 0.05, rotation difference <= 1.5 degrees median).

    python bench/bench_online.py hdtf_aoc liveportrait_d3 liveportrait_d10 --batch-dir /tmp/b0
    python bench/bench_online.py all --batch-dir /tmp/b0 --identity fit
    python bench/bench_online.py clip.mp4 --detect --online iterations=2 rotation_filter=1.0,20

CLIP: a shared clip's name (``../shared/data/video/NAME.mp4``), a video path, or ``all`` (every shared
clip). The batch tracking is ``BATCH_DIR/NAME/tracking.npz``; where there is none, the batch tracker
(``avatar.fitting.pipeline.track_clip``) writes it there first.

The online tracker (``avatar.fitting.online.OnlineTracker``) runs causally over the frames:
- ``--identity batch`` (default): identity and focal length from the batch tracking (an avatar
  driven by its own person), so only the per-frame schedule differs;
  ``--identity fit``: fitted on the clip's first second, as for a new person;
- by default on the batch tracking's detections (the same ``FaceTracker`` with the same settings),
  so the figures compare solvers; ``--detect`` decodes the video and runs the landmarks itself.

Printed per clip (frames where both trackers fitted a face):
- ``reproj``: median over frames of the mean landmark reprojection error (% IOD) of the online
  tracker's output (``batch``: the same for the batch tracking);
- ``arkit``: mean |online - batch| over frames and the 43 fitted ARKit channels (the 9 held at 0,
  eyeLook* and tongueOut, left out: they would dilute it);
- ``rot``: median (p95) angle between the online and the batch head rotation, degrees;
- ``gaze``: median angle between the eye rotations, degrees; ``transl``: median distance, mm;
- ``jitter``: median angle between a frame's head rotation and the one its neighbours predict
  (``R_{t-1} (R_{t-2}^T R_{t-1})``), degrees: how rough the online rotation is (``batch``: the same
  for the batch tracking, smoothed with the future frames too);
- ``solve``: median (p95) milliseconds of the online solve per frame (``detect`` with --detect).
The machine is shared: timings are noisy.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "video"
GOALS = {"reproj": 3.0, "arkit": 0.05, "rot": 1.5}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--batch-dir", type=Path, default=Path("/tmp/bench_online_batch"))
    ap.add_argument("--identity", choices=("batch", "fit"), default="batch")
    ap.add_argument("--detect", action="store_true", help="run the landmarks on the decoded video")
    ap.add_argument("--limit", type=int, default=None, help="first N frames only")
    ap.add_argument("--online", nargs="*", default=[], metavar="KEY=VALUE",
                    help="OnlineConfig overrides: iterations=2, rotation_filter=MIN_CUTOFF,BETA or none")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from avatar.models import load_head_model

    torch.set_num_threads(1)
    config = online_config(args.online)
    head = load_head_model("anny")
    rows = []
    for clip in clips(args.clips):
        batch = batch_tracking(clip, args.batch_dir)
        online, timing = run_online(head, clip, batch, config, args.identity, args.detect, args.limit)
        row = {"clip": clip.stem, **compare(head, online, batch), **timing}
        rows.append(row)
        print(format_row(row), flush=True)
    if len(rows) > 1:
        print(format_row(summary(rows)))
    if args.json:
        args.json.write_text(json.dumps({"config": repr(config), "identity": args.identity, "rows": rows}, indent=2))
    return 0


def clips(names: list[str]) -> list[Path]:
    if names == ["all"]:
        return sorted(SHARED.glob("*.mp4"))
    out = []
    for n in names:
        path = Path(n) if Path(n).suffix else SHARED / f"{n}.mp4"
        if not path.is_file():
            sys.exit(f"{n}: no such clip ({path})")
        out.append(path)
    return out


def online_config(overrides: list[str]):
    """``OnlineConfig`` with ``KEY=VALUE`` overrides (filters: ``MIN_CUTOFF,BETA`` or ``none``)."""
    from avatar.fitting.online import OneEuroConfig, OnlineConfig

    changes = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.endswith("_filter"):
            changes[key] = None if value == "none" else OneEuroConfig(*(float(v) for v in value.split(",")))
        else:
            kind = type(getattr(OnlineConfig(), key))
            changes[key] = kind(value)
    return dataclasses.replace(OnlineConfig(), **changes)


def batch_tracking(clip: Path, batch_dir: Path):
    from avatar.fitting import load_tracking
    from avatar.fitting.pipeline import track_clip

    out = batch_dir / clip.stem
    if not (out / "tracking.npz").is_file():
        print(f"{clip.stem}: batch tracking into {out} ...", flush=True)
        track_clip(clip, out, overlay=False, progress=False)
    return load_tracking(out)


def run_online(head, clip: Path, batch, config, identity: str, detect: bool, limit: int | None):
    """The online tracker over the clip -> (its Tracking, timing figures)."""
    from avatar.fitting.online import OnlineTracker, online_tracking

    size = (int(batch.image_size[0]), int(batch.image_size[1]))
    if identity == "batch":
        tracker = OnlineTracker.from_tracking(head, batch, config=config)
    else:
        tracker = OnlineTracker(head, size, fps=batch.fps, config=config)
    n = batch.num_frames if limit is None else min(limit, batch.num_frames)
    t0 = time.perf_counter()
    if detect:
        from avatar.io import FrameReader

        frames = [tracker.process(f, index=i) for i, f in enumerate(FrameReader(clip, limit=n, dtype="uint8"))]
    else:
        frames = [tracker.step(batch.landmarks[i] if batch.tracked[i] else None, index=i) for i in range(n)]
    wall = time.perf_counter() - t0
    tracking = online_tracking(frames, head, tracker.shape, tracker.focal, size, batch.fps, str(clip))
    solve = np.array([f.solve_ms for f in frames if f.found])
    timing = {"solve_ms": float(np.median(solve)), "solve_ms_p95": float(np.percentile(solve, 95)),
              "fps": len(frames) / wall}
    if detect:
        timing["detect_ms"] = float(np.median([f.detect_ms for f in frames]))
    return tracking, timing


def reprojection_pct(head, tracking) -> np.ndarray:
    """``[N]`` mean landmark reprojection error of each frame in % IOD (NaN where untracked)."""
    from avatar.fitting.apertures import tracked_landmarks
    from avatar.fitting.energy import interocular_px

    det, fit = tracked_landmarks(tracking, head)
    out = np.full(tracking.num_frames, np.nan)
    err = np.linalg.norm(fit - det, axis=-1).mean(1) / interocular_px(det)
    out[np.nonzero(tracking.tracked)[0]] = 100.0 * err
    return out


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between axis-angle rotations ``a, b [..., 3]``, degrees."""
    import torch

    from avatar.models.rotations import axis_angle_to_matrix

    Ra = axis_angle_to_matrix(torch.as_tensor(a, dtype=torch.float64))
    Rb = axis_angle_to_matrix(torch.as_tensor(b, dtype=torch.float64))
    cos = ((Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    return np.degrees(np.arccos(cos.clamp(-1.0, 1.0).numpy()))


def jitter_deg(rot: np.ndarray, runs: np.ndarray) -> float:
    """Median angle (degrees) between R_t and its constant-velocity prediction from t-1, t-2 over
    the frames ``runs`` (``[N - 2]``: t-2, t-1, t all tracked)."""
    import torch

    from avatar.models.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    if not runs.any():
        return float("nan")
    R = axis_angle_to_matrix(torch.as_tensor(rot, dtype=torch.float64))
    pred = R[1:-1] @ (R[:-2].transpose(-1, -2) @ R[1:-1])
    return float(np.median(angles_deg(matrix_to_axis_angle(pred).numpy()[runs], rot[2:][runs])))


def compare(head, online, batch) -> dict:
    from avatar.fitting.energy import FROZEN_ANNY

    n = online.num_frames
    both = online.tracked & batch.tracked[:n]
    fitted = [i for i, name in enumerate(head.expression_names) if name not in FROZEN_ANNY]
    de = np.abs(online.expression[both] - batch.expression[:n][both])[:, fitted]
    rot = angles_deg(online.global_orient[both], batch.global_orient[:n][both])
    gaze = angles_deg(online.eyes[both], batch.eyes[:n][both]).mean(1)
    transl = 1e3 * np.linalg.norm(online.transl[both] - batch.transl[:n][both], axis=1)
    runs = both[2:] & both[1:-1] & both[:-2]
    return {"frames": int(n), "both_tracked": int(both.sum()),
            "reproj": float(np.nanmedian(reprojection_pct(head, online)[both])),
            "reproj_batch": float(np.nanmedian(reprojection_pct(head, batch)[:n][both])),
            "arkit": float(de.mean()), "rot": float(np.median(rot)), "rot_p95": float(np.percentile(rot, 95)),
            "gaze": float(np.median(gaze)), "transl_mm": float(np.median(transl)),
            "jitter": jitter_deg(online.global_orient, runs), "jitter_batch": jitter_deg(batch.global_orient[:n], runs)}  # fmt: skip


def summary(rows: list[dict]) -> dict:
    """Median over clips of every figure."""
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    out = {"clip": f"median of {len(rows)}", "frames": sum(r["frames"] for r in rows),
           "both_tracked": sum(r["both_tracked"] for r in rows)}  # fmt: skip
    out.update({k: float(np.median([r[k] for r in rows if k in r])) for k in keys})
    return out


def format_row(r: dict) -> str:
    marks = {k: ("ok" if r[k] <= goal else "MISS") for k, goal in GOALS.items()}
    line = (f"{r['clip']:>18} {r['both_tracked']:4d}/{r['frames']:<4d} reproj {r['reproj']:.2f}% "
            f"(batch {r['reproj_batch']:.2f}) {marks['reproj']} | arkit {r['arkit']:.4f} {marks['arkit']} | "
            f"rot {r['rot']:.2f} (p95 {r['rot_p95']:.2f}) deg {marks['rot']} | gaze {r['gaze']:.2f} deg | "
            f"transl {r['transl_mm']:.1f} mm | jitter {r['jitter']:.3f} (batch {r['jitter_batch']:.3f}) deg | solve {r['solve_ms']:.1f} (p95 {r['solve_ms_p95']:.1f}) ms")
    if "detect_ms" in r:
        line += f" | detect {r['detect_ms']:.1f} ms"
    return line


if __name__ == "__main__":
    sys.exit(main())
