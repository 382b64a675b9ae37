"""Benchmark: track + train (preset fast-cpu by default) on each shared 512^2 video; prints wall
time and held-out (last 15% of frames) PSNR/SSIM per clip, over the foreground pixels and over the
whole matted image (the literature's convention).

    python bench/bench_avatar.py [--preset fast-cpu] [--clips NAME ...] [--work /tmp/bench_avatar]
        [--set KEY=VALUE ...] [--representation NAME] [--limit FRAMES] [--seeds 0 1 2] [--resume] [--train-frames]
    python bench/bench_avatar.py --table WORK [OTHER_WORK ...] [--regions] [--side-by-side]

``--table`` trains nothing: it prints the markdown table of the finished runs in WORK (every clip's
report.json; the table in docs/quality.md) and, for each OTHER_WORK (the same clips trained with one
lever changed), the per-clip change of the headline figure and the verdict of the defaults rule:
a lever stays on only if it helps on most clips and costs no clip more than 0.5 dB (held-out
foreground PSNR at the tracked poses through the default correction). With ``--regions`` it also
compares where the error lies (:func:`error_breakdown`: the face region, off the mesh, the mouth
opening), as issues comparing representations ask; each run's breakdown is kept in
WORK/<clip>/breakdown.json (computed and cached there for runs that lack it). ``--side-by-side``
adds what comparing representations needs: training-frame PSNR, primitives, the size of the
representation and training minutes per 10 s of video (the last two only where the run's avatar/
and tracking.json are still in WORK).

Tracking (avatar.fitting.pipeline.track) runs first when WORK/<clip>/tracking.npz is absent; its time is
printed separately. Timings are wall-clock on whatever else the machine is doing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"
EDGE_PX = 3  # error_breakdown's silhouette band (pixels inside the matte's edge)
TRAIN_SAMPLE = 24  # training frames error_breakdown(frames="train") looks at


def error_breakdown(out: Path, cfg, frames: str = "held_out") -> dict[str, float]:
    """Where the held-out error lies: PSNR on foreground pixels covered by the posed mesh's face
    region, by the rest of the mesh, and not covered by the mesh at all (hair, shoulders), plus
    the share of the foreground squared error in each, and the background PSNR (stray splats).
    ``psnr_eyes``: over boxes around the detected eyes (corners, lids and iris, padded by 0.12
    inter-ocular distances), where gaze tracking shows; these pixels also count in the classes above.
    ``psnr_mouth`` / ``share_mouth``: inside the detected inner-lip contour (the mouth opening: teeth,
    tongue, the dark interior), and that region's share of the foreground squared error.
    ``share_edge``: the share of the foreground squared error within ``EDGE_PX`` pixels of the
    matte's edge (the silhouette: hair that moves, matte flicker), whatever the class.
    ``frames="train"``: the same over ``TRAIN_SAMPLE`` training frames spread over the clip, at the
    poses it was trained with (how well the avatar fits what it saw, against how it generalises)."""

    import cv2
    import numpy as np
    import torch

    if frames not in ("held_out", "train"):
        raise ValueError(f"frames must be 'held_out' or 'train', got {frames!r}")

    from avatar.fitting import load_tracking
    from avatar.render.mesh import rasterize_triangles
    from avatar.representations import load_avatar, render_splats
    from avatar.representations.mesh_gaussians import FACE, face_regions
    from avatar.training.data import load_clip

    clip = load_clip(out, cfg.resolution, cfg.holdout, cfg.max_frames, progress=False, head_crop_faces=cfg.head_crop,
                     track_body=cfg.track_body)  # fmt: skip
    av = load_avatar(out / "avatar")
    tri_region = face_regions(av.head).numpy()
    faces = av.head.faces.numpy()
    sums = {k: 0.0 for k in ("face", "mesh_other", "off_mesh", "background", "eyes", "mouth")}
    counts = dict.fromkeys(sums, 0)
    edge_err = 0.0
    tracking = load_tracking(out)
    source_row = np.nonzero(tracking.usable)[0]  # clip row -> tracking row (clips skip untracked frames)
    rows = clip.test_ids if frames == "held_out" else \
        clip.train_ids[np.unique(np.linspace(0, len(clip.train_ids) - 1, TRAIN_SAMPLE).round().astype(int))]
    with torch.no_grad():
        # Training frames at the poses the avatar was trained with (refined, in the bundle's performance).
        posed = av.performance if frames == "train" and av.performance else clip.params
        if frames == "held_out":  # held-out frames as the report scores them: through the learnt pose correction, if any
            posed = {**posed, **_corrected_held_out(out, clip.params)}
        for r in rows:
            params = {k: v[r : r + 1] for k, v in posed.items()}
            verts = av.vertices(params)
            bg = torch.tensor(av.config.get("background", [1.0, 1.0, 1.0]))
            rgb, _, _ = render_splats(av.splats(params), clip.viewmat, clip.Ks[r], *clip.size, bg)
            gt, m = clip.target([r], bg, torch.device("cpu"))
            err = ((rgb.clamp(0, 1) - gt) ** 2).mean(-1)[0].numpy()
            frags = rasterize_triangles(verts[0].double().numpy(), faces, clip.viewmat.double().numpy(),
                                        clip.Ks[r].double().numpy(), *clip.size)  # fmt: skip
            fg, covered = m[0, ..., 0].numpy() > 0.5, frags.face_id >= 0
            is_face = covered & (tri_region[np.maximum(frags.face_id, 0)] == FACE)
            for k, sel in (("face", fg & is_face), ("mesh_other", fg & covered & ~is_face), ("off_mesh", fg & ~covered),
                           ("background", ~fg)):  # fmt: skip
                sums[k] += float(err[sel].sum())
                counts[k] += int(sel.sum())
            edge = fg & (cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 3) <= EDGE_PX)
            edge_err += float(err[edge].sum())
            t = source_row[r]
            if not tracking.tracked[t]:  # an interpolated frame has no detections (NaN) to box the eyes and mouth by
                continue
            to_image = clip.Ks[r].double().numpy() @ np.linalg.inv(tracking.K[t])  # source pixels -> training pixels
            eyes = _eye_boxes(tracking.landmarks[t, :, :2], to_image, err.shape)
            mouth = fg & _mouth_opening(tracking.landmarks[t, :, :2], to_image, err.shape)
            for k, sel in (("eyes", eyes), ("mouth", mouth)):
                sums[k] += float(err[sel].sum())
                counts[k] += int(sel.sum())
    fg_err = sums["face"] + sums["mesh_other"] + sums["off_mesh"]
    body = clip.params["body"].double().numpy() if "body" in clip.params else None
    out_row = _pose_spread(clip.params["global_orient"].double().numpy(), clip.train_ids, clip.test_ids, body)
    out_row["share_edge"] = round(edge_err / max(fg_err, 1e-12), 3)
    out_row["share_mouth"] = round(sums["mouth"] / max(fg_err, 1e-12), 3)
    for k in sums:
        out_row[f"psnr_{k}"] = round(10 * math.log10(counts[k] / max(sums[k], 1e-12)), 2) if counts[k] else float("nan")
        if k not in ("background", "eyes", "mouth"):
            out_row[f"share_{k}"] = round(sums[k] / max(fg_err, 1e-12), 3)
    return out_row


def _corrected_held_out(out: Path, tracked: dict) -> dict:
    """The tracked rigid pose of the held-out frames as the report scores them: through the fitted
    correction (``TrainConfig.pose_fit_frames``, kept in ``report.json``), else through the learnt
    one of ``out``'s last checkpoint (``TrainConfig.correct_pose``), else empty (as tracked)."""
    import torch

    from avatar.training.refine import PoseCorrection
    from avatar.training.trainer import latest_checkpoint

    report = json.loads((out / "report.json").read_text())
    fit = report.get("pose_fit")
    if fit:
        rows = torch.as_tensor(report["frames"]["held_out_rows"])
        posed = {k: tracked[k].clone() for k in fit["held_out_correction"]}
        for k, d in fit["held_out_correction"].items():
            posed[k][rows] += torch.tensor(d, dtype=posed[k].dtype)
        return posed
    found = latest_checkpoint(out / "checkpoints")
    if found is None or "pose_model" not in found[1]:
        return {}
    with torch.no_grad():
        correction = PoseCorrection.from_state(found[1]["pose_model_keys"], found[1]["pose_model"])()
    return {k: tracked[k] + d for k, d in correction.items()}


def _pose_spread(orient, train_ids, test_ids, body=None) -> dict[str, float]:
    """How far the held-out frames turn the head, against the training frames: the length (degrees)
    of each frame's ``orient [n, 3]`` (axis-angle) minus the training frames' mean axis-angle (close to
    the rotation angle between them for turns of a few tens of degrees), averaged over
    each set, and the share of held-out frames beyond the training frames' 95th percentile. A high
    share means the held-out PSNR measures unseen head angles (e.g. hdtf_katiehill: 77 %), not
    re-rendering of poses the avatar was trained on. ``body [n, 3]`` (metres, the tracked body
    motion): the same for how far the body has shifted (mm), e.g. hdtf_aoc: 5.5 mm on average on
    its held-out frames against 1.3 mm on its training frames, all beyond their 95th percentile."""
    import numpy as np

    def spread(x: np.ndarray, keys: tuple[str, str, str]) -> dict[str, float]:
        """Mean distance of the training and held-out rows of ``x`` from the training mean, and the
        held-out share beyond the training rows' 95th percentile, under ``keys``."""
        if not len(test_ids):
            return dict.fromkeys(keys, float("nan"))
        dist = np.linalg.norm(x - x[train_ids].mean(0), axis=1)
        values = (dist[train_ids].mean(), dist[test_ids].mean(), (dist[test_ids] > np.percentile(dist[train_ids], 95)).mean())
        return {k: round(float(v), 1 if i < 2 else 2) for i, (k, v) in enumerate(zip(keys, values))}

    out = spread(np.degrees(orient), ("turn_train_deg", "turn_held_deg", "held_beyond_p95"))
    if body is not None:
        out |= spread(body * 1000.0, ("body_mm_train", "body_mm_held", "body_mm_beyond_p95"))
    return out


def _eye_boxes(landmarks, to_image, shape: tuple[int, int], pad: float = 0.12):
    """``[H, W]`` bool: boxes around each eye's corners, mid lids and iris centre of one frame's
    detected FaceMesh ``landmarks [478, 2]`` (source pixels), mapped by ``to_image [3, 3]`` (the
    crop and resize of the training frames)."""
    import numpy as np

    p = np.c_[landmarks, np.ones(len(landmarks))] @ to_image.T
    p = p[:, :2] / p[:, 2:]
    pad_px = pad * np.linalg.norm(p[33] - p[263])
    mask = np.zeros(shape, bool)
    for idx in ((33, 133, 159, 145, 468), (362, 263, 386, 374, 473)):
        (x0, y0), (x1, y1) = p[list(idx)].min(0) - pad_px, p[list(idx)].max(0) + pad_px
        mask[max(int(y0), 0) : max(int(y1) + 1, 0), max(int(x0), 0) : max(int(x1) + 1, 0)] = True
    return mask


#: FaceMesh's inner-lip contour, in order around the mouth opening.
INNER_LIP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]


def _mouth_opening(landmarks, to_image, shape: tuple[int, int]):
    """``[H, W]`` bool: inside the inner-lip contour of one frame's detected ``landmarks [478, 2]``
    (source pixels) mapped by ``to_image [3, 3]``; empty where the lips meet."""
    import cv2
    import numpy as np

    p = np.c_[landmarks, np.ones(len(landmarks))] @ to_image.T
    p = p[:, :2] / p[:, 2:]
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(p[INNER_LIP]).astype(np.int32)], 1)
    return mask.astype(bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="fast-cpu")
    parser.add_argument("--clips", nargs="*", default=None, help="video file stems (default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_avatar"))
    parser.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    parser.add_argument("--representation", default=None,
                        help="what to train: mesh-gaussians, hash-blendshapes or neural-points (--set representation=NAME)")
    parser.add_argument("--limit", type=int, default=None, help="track only the first N frames")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0],
                        help="train once per seed (WORK/<clip>/seed<N>/) and print mean and spread: one run's "
                             "held-out PSNR moves by ~0.6 dB with the seed alone")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="reuse finished/partial training runs (default: start over)")
    parser.add_argument("--train-frames", action="store_true",
                        help=f"also break the error down on {TRAIN_SAMPLE} training frames (fit vs generalisation); "
                             "with --table --regions: the face region's, for runs whose avatar was kept")  # fmt: skip
    parser.add_argument("--table", type=Path, nargs="+", default=None,
                        help="print the tables of finished runs (WORK, then runs with one lever changed) and stop")
    parser.add_argument("--regions", action="store_true", help="with --table: also compare the error by region")
    parser.add_argument("--side-by-side", action="store_true",
                        help="with --table: compare representations (training frames, size, primitives, minutes)")
    args = parser.parse_args()
    if args.table:
        print_table(args.table)
        if args.regions:
            print_regions(args.table, args.train_frames)
        if args.side_by_side:
            print_side_by_side(args.table)
        return
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: nothing to benchmark")
    from avatar.training import override, preset, train

    if args.representation:
        args.set = [*args.set, f"representation={args.representation}"]
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
        for seed in args.seeds:
            run = out if args.seeds == [0] else _seed_dir(out, seed)
            if not args.resume:
                shutil.rmtree(run / "checkpoints", ignore_errors=True)
            t1 = time.perf_counter()
            report = train(run, dataclasses.replace(cfg, seed=seed), progress=False)
            breakdown = error_breakdown(run, cfg)
            _keep_breakdown(run, breakdown)
            if args.train_frames:
                breakdown.update({f"train_{k}": v for k, v in error_breakdown(run, cfg, frames="train").items() if k.startswith(("psnr_", "share_"))})
            rows.append(_row(video.stem, seed, t_track, time.perf_counter() - t1, report, breakdown, _video_seconds(out)))
            print(json.dumps(rows[-1]), flush=True)
    _print_tables(rows, len(args.seeds) > 1)


#: A lever may cost no clip more than this (dB, held-out foreground at the tracked poses).
MAX_COST_DB = 0.5


def _reports(work: Path) -> dict[str, dict]:
    """clip -> report.json of each finished run in ``work``."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(work.glob("*/report.json"))}


def _fg(report: dict, which: str) -> float | None:
    """A held-out foreground PSNR of ``report``: ``headline`` (tracked, through the default
    correction), ``as_tracked`` (no correction), ``learnt`` (the learnt correction), ``refined``."""
    section = {"headline": report.get("held_out"), "as_tracked": report.get("held_out_uncorrected_pose"),
               "refined": report.get("held_out_refined_pose"),
               "learnt": (report.get("pose_fit") or {}).get("held_out_learnt_correction")}[which]  # fmt: skip
    return round(section["psnr"], 2) if section else None


def verdict(deltas: list[float]) -> str:
    """The defaults rule applied to per-clip changes ``deltas`` (dB, lever on minus off)."""
    helped = sum(d > 0 for d in deltas)
    worst = min(deltas)
    keep = helped > len(deltas) / 2 and worst >= -MAX_COST_DB
    return (f"helps on {helped}/{len(deltas)} clips, mean {sum(deltas) / len(deltas):+.2f} dB, worst {worst:+.2f} dB: "
            + ("keep on" if keep else "off (fails the rule)"))


def _others(works: list[Path], base: dict[str, dict]):
    """``(work, its reports, the clips it shares with base)`` for each of ``works[1:]``."""
    for other in works[1:]:
        runs = _reports(other)
        yield other, runs, [c for c in base if c in runs]


def print_table(works: list[Path]) -> None:
    """The markdown table of ``works[0]``'s runs, then each other work's change against it."""
    base = _reports(works[0])
    print(f"runs in {works[0]} ({len(base)} clips); PSNR in dB over held-out foreground pixels unless named")
    print("| clip | frames (train / held out) | tracked poses, default correction | whole image | as tracked | "
          "learnt correction | refined poses (peer-comparable) | training frames | Gaussians | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clip, r in base.items():
        cells = [f"{r['frames']['train']} / {r['frames']['held_out']}", _fg(r, "headline"),
                 round(r["held_out"]["psnr_full"], 2), _fg(r, "as_tracked"), _fg(r, "learnt"), _fg(r, "refined"),
                 round(r["train_sample"]["psnr"], 2), r["num_gaussians"], r.get("seconds_total")]  # fmt: skip
        print(f"| {clip} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    for name, a, b in (("the drawn correction against none", "headline", "as_tracked"),
                       ("the fitted correction against the learnt one", "headline", "learnt"),
                       ("the learnt correction against none", "learnt", "as_tracked")):  # fmt: skip
        d = [_fg(r, a) - _fg(r, b) for r in base.values() if _fg(r, a) is not None and _fg(r, b) is not None]
        if d:
            print(f"{name} (same avatars): {verdict(d)}")
    for other, runs, shared in _others(works, base):
        print(f"\n{other} against {works[0]}: headline PSNR, baseline -> changed (change); a lever's verdict reads the")
        print("changes with the sign of 'lever on minus off'")
        print("| clip | baseline | changed | change | refined poses: baseline -> changed |")
        print("|---|---|---|---|---|")
        d = []
        for c in shared:
            x, y = _fg(base[c], "headline"), _fg(runs[c], "headline")
            d.append(round(y - x, 2))
            print(f"| {c} | {x} | {y} | {y - x:+.2f} | {_fg(base[c], 'refined')} -> {_fg(runs[c], 'refined')} |")
        if d:
            print(f"baseline (lever as in WORK) minus changed: {verdict([-x for x in d])}")


def breakdown_of(run: Path, frames: str = "held_out") -> dict[str, float] | None:
    """:func:`error_breakdown` of a finished run, from RUN/breakdown.json (``frames="train"``:
    RUN/breakdown_train.json), else computed (with the run's own config from report.json) and kept
    there; None for training frames when the run's avatar was not kept."""
    name = "breakdown.json" if frames == "held_out" else "breakdown_train.json"
    if (run / name).is_file():
        return json.loads((run / name).read_text())
    if frames == "train" and not (run / "avatar").is_dir():
        return None
    from avatar.training import TrainConfig

    report = json.loads((run / "report.json").read_text())
    breakdown = error_breakdown(run, TrainConfig.from_dict(report["config"], drop_unknown=True), frames=frames)
    _keep_breakdown(run, breakdown, name)
    return breakdown


def _keep_breakdown(run: Path, breakdown: dict[str, float], name: str = "breakdown.json") -> None:
    """RUN/breakdown.json (or ``name``), written whole or not at all (a later --table trusts what it finds)."""
    from avatar.utils.files import atomic_write

    with atomic_write(run / name, "w") as f:
        f.write(json.dumps(breakdown))


def mouth_opens_wider(run: Path, channel: str = "jawOpen") -> bool | None:
    """Whether the held-out frames (the last ``frames.held_out`` usable rows of the tracking) open
    the jaw wider than any training frame did (None: no such channel)."""
    import numpy as np

    from avatar.fitting import load_tracking

    report, tracking = json.loads((run / "report.json").read_text()), load_tracking(run)
    names = list(tracking.expression_names)
    if channel not in names:
        return None
    opening = tracking.expression[np.nonzero(tracking.usable)[0], names.index(channel)]
    held = report["frames"]["held_out"]
    return bool(opening[-held:].max() > opening[:-held].max())


def print_regions(works: list[Path], train: bool = False) -> None:
    """For each other work against ``works[0]``: held-out PSNR on the face region, off the mesh
    (hair, shoulders) and in the mouth opening, per clip, and on how many clips each is higher;
    with ``train``, then the face region on training frames against held out (fit against
    generalisation)."""
    base = _reports(works[0])
    keys = (("face", "psnr_face"), ("off-mesh", "psnr_off_mesh"), ("mouth opening", "psnr_mouth"))
    if train:
        print_face_fit(works)
    for other in works[1:]:
        shared = [c for c in base if c in _reports(other)]
        print(f"\n{other} against {works[0]} by region (held-out foreground PSNR, baseline -> changed)")
        print("| clip | " + " | ".join(k for k, _ in keys) + " | held-out mouth opens wider than training |")
        print("|---|" + "---|" * (len(keys) + 1))
        better = {k: [] for k, _ in keys}
        for c in shared:
            a, b = breakdown_of(works[0] / c), breakdown_of(other / c)
            cells = []
            for k, m in keys:
                x, y = a.get(m), b.get(m)
                if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                    cells.append("-")
                    continue
                better[k].append((c, y > x))
                cells.append(f"{x:.2f} -> {y:.2f} ({y - x:+.2f})")
            print(f"| {c} | " + " | ".join(cells) + f" | {mouth_opens_wider(other / c)} |")
        for k, flags in better.items():
            print(f"{k}: changed above baseline on {sum(f for _, f in flags)}/{len(flags)} clips")


def print_face_fit(works: list[Path]) -> None:
    """Face-region PSNR on training frames and held out, per clip and work (runs whose avatar was
    kept): a representation that fits the training frames better but generalises worse overfits."""
    shared = [c for c in _reports(works[0]) if all((w / c / "report.json").is_file() for w in works[1:])]
    print(f"\nface region, PSNR on {TRAIN_SAMPLE} training frames / held out ({' | '.join(map(str, works))})")
    print("| clip | " + " | ".join(w.name for w in works) + " |")
    print("|---|" + "---|" * len(works))
    for c in shared:
        cells = []
        for w in works:
            fit, held = breakdown_of(w / c, "train"), breakdown_of(w / c)
            cells.append("-" if fit is None else f"{fit['psnr_face']:.2f} / {held['psnr_face']:.2f}")
        print(f"| {c} | " + " | ".join(cells) + " |")


def _bundle_mb(run: Path) -> float | None:
    """Size of the trained representation (RUN/avatar/representation.safetensors), MB."""
    path = run / "avatar" / "representation.safetensors"
    return round(path.stat().st_size / 1e6, 1) if path.is_file() else None


def _minutes_per_10s(run: Path, report: dict) -> float | None:
    """Training (with its evaluation) minutes per 10 s of the clip, or None without RUN/tracking.json."""
    video_s = _video_seconds(run)
    return round(report["seconds_total"] / 60 / (video_s / 10), 2) if video_s and report.get("seconds_total") else None


def print_side_by_side(works: list[Path]) -> None:
    """For each other work against ``works[0]`` (another representation trained on the same
    tracking): per clip, held-out PSNR at the tracked and the refined poses, on training frames, the
    primitive count, the representation's size and training minutes per 10 s of video, then on how
    many clips the other is within 0.5 dB of the baseline or better."""
    base = _reports(works[0])
    for other, runs, shared in _others(works, base):
        print(f"\n{other} against {works[0]}, side by side (baseline -> other)")
        print("| clip | held-out, tracked poses | refined poses | training frames | primitives | MB | train min per 10 s of video |")
        print("|---|---|---|---|---|---|---|")
        close = []
        for c in shared:
            a, b = base[c], runs[c]
            x, y = _fg(a, "headline"), _fg(b, "headline")
            close.append(y >= x - MAX_COST_DB)
            cells = [f"{x} -> {y} ({y - x:+.2f})", f"{_fg(a, 'refined')} -> {_fg(b, 'refined')}",
                     f"{a['train_sample']['psnr']:.2f} -> {b['train_sample']['psnr']:.2f}",
                     f"{a['num_gaussians']} -> {b['num_gaussians']}",
                     f"{_bundle_mb(works[0] / c) or '-'} -> {_bundle_mb(other / c) or '-'}",
                     f"{_minutes_per_10s(works[0] / c, a) or '-'} -> {_minutes_per_10s(other / c, b) or '-'}"]  # fmt: skip
            print(f"| {c} | " + " | ".join(cells) + " |")
        print(f"held out at the tracked poses: within {MAX_COST_DB} dB of the baseline or better on {sum(close)}/{len(close)} clips")


def ceiling(psnr: float, share: float) -> float:
    """PSNR (dB) once a part holding ``share`` of the squared error has none left: the same pixels with
    ``1 - share`` of the error. ``inf`` when that part holds all of it."""
    left = 1.0 - share
    return round(psnr - 10 * math.log10(left), 2) if left > 0 else float("inf")


def _seed_dir(out: Path, seed: int) -> Path:
    """WORK/<clip>/seed<N>/ sharing the clip's tracking and frame cache."""
    run = out / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    for name in ("tracking.npz", "tracking.json"):
        if (out / name).is_file():
            shutil.copy2(out / name, run / name)
    if (out / "cache").is_dir() and not (run / "cache").exists():
        (run / "cache").symlink_to((out / "cache").resolve())
    return run


def _video_seconds(out: Path) -> float | None:
    """The tracked clip's length in seconds (tracking.json's frame count over its frame rate)."""
    info = json.loads((out / "tracking.json").read_text()) if (out / "tracking.json").is_file() else {}
    fps = info.get("fps_clip")
    return round(info["frames"] / fps, 1) if fps and info.get("frames") else None


def _row(clip: str, seed: int, t_track: float, t_train: float, report: dict, breakdown: dict, video_s: float | None) -> dict:
    return {
            "clip": clip, "seed": seed, "track_s": round(t_track, 1), "train_s": round(t_train, 1), "video_s": video_s,
            # the speed goal is stated per 10 s of video: minutes of tracking + training (+ this bench's breakdown)
            "min_per_10s_video": round((t_track + t_train) / 60 / (video_s / 10), 2) if video_s else None,
            "frames_train": report["frames"]["train"], "frames_held_out": report["frames"]["held_out"],
            "psnr": round(report["held_out"]["psnr"], 2), "ssim": round(report["held_out"]["ssim"], 4),
            "psnr_full": round(report["held_out"]["psnr_full"], 2), "ssim_full": round(report["held_out"]["ssim_full"], 4),
            "psnr_init": round(report["held_out_initial"]["psnr"], 2), "psnr_train": round(report["train_sample"]["psnr"], 2),
            "gaussians": report["num_gaussians"], "size": report["image_size"],
            **_refined(report.get("held_out_refined_pose")),
            **_uncorrected(report.get("held_out_uncorrected_pose")),
            **_learnt(report.get("pose_fit")),
            **breakdown,
        }  # fmt: skip


def _refined(metrics: dict | None) -> dict:
    """The held-out figures with each frame's rigid pose refined against the avatar (None: not run)."""
    keys = {"psnr_refined": "psnr", "ssim_refined": "ssim", "psnr_full_refined": "psnr_full",
            "correction_deg": "rotation_deg_median", "correction_mm": "head_shift_mm_median"}
    return {k: None if not metrics or m not in metrics else round(metrics[m], 4 if m == "ssim" else 2)
            for k, m in keys.items()}  # fmt: skip


def _uncorrected(metrics: dict | None) -> dict:
    """With a pose correction: the held-out figures at the tracked poses as they came, and the size of
    the correction (fitted, else learnt) on those frames."""
    if not metrics:
        return {}
    size = metrics.get("correction", metrics.get("learnt_correction", {}))  # (older reports: learnt_correction)
    return {"psnr_uncorrected": round(metrics["psnr"], 2), "psnr_full_uncorrected": round(metrics["psnr_full"], 2),
            "held_corr_deg": round(size.get("rotation_deg_median", float("nan")), 2),
            "held_corr_mm": round(size.get("head_shift_mm_median", float("nan")), 2)}  # fmt: skip


def _learnt(pose_fit: dict | None) -> dict:
    """With ``pose_fit_frames``: the held-out figures through the learnt correction instead of the fitted one."""
    if not pose_fit or not pose_fit.get("held_out_learnt_correction"):
        return {}
    m = pose_fit["held_out_learnt_correction"]
    return {"psnr_learnt": round(m["psnr"], 2), "psnr_full_learnt": round(m["psnr_full"], 2), "pose_fit_s": pose_fit["seconds"]}


def _print_tables(rows: list[dict], spread: bool) -> None:
    print("held-out frames; fg = foreground pixels only (matte > 0.5); full = whole image, both composited on the")
    print("background (the INSTA / GaussianAvatars / FlashAvatar convention)")
    print("train s: training, evaluation and this bench's error breakdown; min/10s: track + train minutes per 10 s of video")
    print("clip                 seed  video s  track s  train s  min/10s  PSNR fg  SSIM fg  PSNR full  SSIM full  (init PSNR fg)  train-frame PSNR fg")
    for r in rows:
        print(f"{r['clip']:<20} {r['seed']:>4} {r['video_s'] or '-':>7} {r['track_s']:>7} {r['train_s']:>8} {r['min_per_10s_video'] or '-':>8} "
              f"{r['psnr']:>8} {r['ssim']:>8} {r['psnr_full']:>10} {r['ssim_full']:>10}  ({r['psnr_init']})  {r['psnr_train']}")
    if any("psnr_uncorrected" in r for r in rows):
        print("the held-out figures above are at the tracked poses through a correction, a function of the tracked pose")
        print("fitted on training frames (pose_fit_frames: a ridge fit to training poses refined against the finished")
        print("avatar; else correct_pose's, learnt during training); at the tracked poses as they came, the correction's")
        print("median size on the held-out frames, and through the learnt correction where the fitted one was used")
        print("clip                 seed  PSNR fg  PSNR full  correction (deg; mean head-vertex shift, mm)  learnt: PSNR fg / full  fit s")
        for r in rows:
            if "psnr_uncorrected" in r:
                print(f"{r['clip']:<20} {r['seed']:>4} {r['psnr_uncorrected']:>8} {r['psnr_full_uncorrected']:>10}  "
                      f"{r['held_corr_deg']}, {r['held_corr_mm']:<36}  {r.get('psnr_learnt', '-')} / {r.get('psnr_full_learnt', '-')}"
                      f"  {r.get('pose_fit_s', '-')}")
    if any(r["psnr_refined"] is not None for r in rows):
        print("the same held-out frames, each frame's rigid head pose and body motion refined against the avatar (held fixed;")
        print("eval_refine_iters Levenberg-Marquardt iterations on the colour error over the foreground and the silhouette")
        print("error): a photometric tracking pass over the driving frames")
        print("clip                 seed  PSNR fg  SSIM fg  PSNR full  median correction (deg; mean head-vertex shift, mm)")
        for r in rows:
            if r["psnr_refined"] is not None:
                print(f"{r['clip']:<20} {r['seed']:>4} {r['psnr_refined']:>8} {r['ssim_refined']:>8} {r['psnr_full_refined']:>10}"
                      f"  {r['correction_deg']}, {r['correction_mm']}")
    if spread:
        import numpy as np

        print("over seeds: mean +- standard deviation (min .. max)")
        for clip in dict.fromkeys(r["clip"] for r in rows):
            cells = []
            for key in ("psnr", "psnr_full", "psnr_refined"):
                v = np.array([r[key] for r in rows if r["clip"] == clip and r[key] is not None])
                if not v.size:
                    continue
                cells.append(f"{key} {v.mean():.2f} +- {v.std():.2f} ({v.min():.2f} .. {v.max():.2f})")
            print(f"{clip:<20} " + "   ".join(cells))
    print("where the held-out error is: PSNR (share of the foreground squared error) per pixel class")
    print("and how far the held-out frames turn the head from the training frames' mean pose (degrees; share beyond the")
    print("training frames' 95th percentile): where that share is high, held-out PSNR measures unseen head angles")
    print("clip                 seed  mesh face region   rest of mesh       off mesh (hair...)  background PSNR  eye boxes PSNR"
          "  head turn train / held-out (beyond p95)")
    for r in rows:
        print(f"{r['clip']:<20} {r['seed']:>4} " + "".join(f"{r['psnr_' + k]:>6} ({100 * r['share_' + k]:4.1f}%)     "
                                            for k in ("face", "mesh_other", "off_mesh"))
              + f"{r['psnr_background']:>6}           {r['psnr_eyes']:>6}          "
              + f"{r['turn_train_deg']:>5} / {r['turn_held_deg']:>5} ({100 * r['held_beyond_p95']:.0f}%)")
    if any("body_mm_held" in r for r in rows):
        print("how far the tracked body (shoulders, from the matte below the chin) has shifted from the training frames'")
        print("mean (mm; share of held-out frames beyond the training frames' 95th percentile): where high, the held-out")
        print("frames show the body where no training frame had it")
        for r in rows:
            if "body_mm_held" in r:
                print(f"{r['clip']:<20} {r['seed']:>4} {r['body_mm_train']:>5} / {r['body_mm_held']:>5} ({100 * r['body_mm_beyond_p95']:.0f}%)")
    print(f"share of the foreground squared error within {EDGE_PX} px of the matte's edge (silhouette): held-out"
          + (" / training frames" if "train_share_edge" in rows[0] else ""))
    for r in rows:
        print(f"{r['clip']:<20} {r['seed']:>4} {100 * r['share_edge']:5.1f}%"
              + (f" / {100 * r['train_share_edge']:5.1f}%" if "train_share_edge" in r else ""))
    print("the mouth opening (inside the detected inner lips): PSNR (share of the foreground squared error), held-out"
          + (" / training frames" if "train_share_mouth" in rows[0] else ""))
    for r in rows:
        print(f"{r['clip']:<20} {r['seed']:>4} {r['psnr_mouth']:>6} ({100 * r['share_mouth']:4.1f}%)"
              + (f" / {r['train_psnr_mouth']:>6} ({100 * r['train_share_mouth']:4.1f}%)" if "train_share_mouth" in r else ""))
    print("held-out foreground PSNR if one class's error were zero: the most that fixing it alone could gain (the")
    print("silhouette band overlaps the classes; 'all but off mesh' = the face and the rest of the mesh together)")
    print("clip                 seed  PSNR fg  face  rest of mesh  off mesh  all but off mesh  silhouette band  mouth")
    for r in rows:
        cells = [ceiling(r["psnr"], r[f"share_{k}"]) for k in ("face", "mesh_other", "off_mesh")]
        cells += [ceiling(r["psnr"], r["share_face"] + r["share_mesh_other"]), ceiling(r["psnr"], r["share_edge"]),
                  ceiling(r["psnr"], r["share_mouth"])]  # fmt: skip
        print(f"{r['clip']:<20} {r['seed']:>4} {r['psnr']:>8} " + " ".join(f"{c:>{w}}" for c, w in
                                                                         zip(cells, (5, 13, 9, 16, 16, 6))))
    if "train_psnr_face" in rows[0]:
        print(f"the same classes on {TRAIN_SAMPLE} training frames (what the avatar fits, against what it generalises to)")
        for r in rows:
            print(f"{r['clip']:<20} {r['seed']:>4} " + "".join(f"{r['train_psnr_' + k]:>6} ({100 * r['train_share_' + k]:4.1f}%)     "
                                                for k in ("face", "mesh_other", "off_mesh")))


if __name__ == "__main__":
    main()

