"""Experiment: can the landmark tracker's pose error on held-out frames be predicted from the training
frames alone? Prints held-out PSNR with the tracked poses and with a linear correction of them.

    python bench/bench_pose_correction.py OUT [OUT ...] [--frames 64] [--ridge 10 30 100] [--expression]
        [--expression-pcs K ...]

OUT: a trained avatar folder (``bench/bench_avatar.py --work W`` leaves them as W/<clip>). For each:

1. the rigid pose and body motion of ``--frames`` training frames, spread over the clip, are refined
   against the trained avatar (:func:`avatar.training.trainer.refine_held_out`, the same
   Levenberg-Marquardt pass the held-out report uses);
2. a ridge regression (features standardised, intercept unpenalised) maps each frame's tracked
   ``global_orient``, ``transl`` and ``body`` to that correction; with ``--expression``, a second
   one from those, the 52 tracked expression weights and the jaw pose (does the tracker trade
   head pitch for mouth shapes?); with ``--expression-pcs K``, one from the pose and only the K
   leading principal components of the tracked expression over the training frames (fewer inputs
   for 64 fitted frames);
3. each held-out frame's tracked values go through it, and the held-out frames are scored at the
   corrected poses. No held-out pixel is used.

This is a measurement, not a pipeline stage. Its mixed result (up on some clips, down on others; see
the issue notes) led to ``TrainConfig.correct_pose``, which learns such a correction during training
from all training frames instead. For an avatar trained with it, the rows here start from the tracked
poses as they came, not through that learnt correction.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

KEYS = ("global_orient", "transl", "body")


def run(out: Path, frames: int, ridges: list[float], with_expression: bool = False, expression_pcs: tuple[int, ...] = ()) -> None:
    import torch

    from avatar.models import load_head_model
    from avatar.render import RasterOptions
    from avatar.representations.mesh_gaussians import MeshGaussians
    from avatar.training.config import TrainConfig
    from avatar.training.data import load_clip
    from avatar.training.refine import fit_pose_correction
    from avatar.training.evaluation import evaluate, refine_held_out, spread
    from avatar.training.frames import FrameRenderer
    from avatar.training.state import latest_checkpoint

    saved = json.loads((out / "report.json").read_text())["config"]
    cfg = TrainConfig.from_dict(saved, drop_unknown=True)  # a report of an older version may name removed knobs
    torch.set_num_threads(max(1, cfg.torch_threads))  # as avatar.training.train does on a CPU
    clip = load_clip(out, cfg.resolution, cfg.holdout, cfg.max_frames, progress=False, head_crop_faces=cfg.head_crop,
                     track_body=cfg.track_body)  # fmt: skip
    found = latest_checkpoint(out / "checkpoints")
    if found is None or not len(clip.test_ids):
        print(f"{out.name}: no checkpoint or no held-out frames; skipped")
        return
    rep = MeshGaussians.from_state(found[1]["rep_config"], found[1]["rep_state"])
    head = load_head_model(clip.model)
    bg = torch.tensor(cfg.background, dtype=torch.float32)
    keys = [k for k in KEYS if k in clip.params]
    renderer = FrameRenderer(head, clip, clip.shape, bg, RasterOptions(num_threads=1))
    renderer.pose_fixed_vertices()
    sub = spread(clip.train_ids, frames)
    t0 = time.perf_counter()
    lm = refine_held_out(rep, renderer, sub, cfg.eval_refine_iters or 6)
    t_lm = time.perf_counter() - t0
    features = {"pose": ()}
    if with_expression:
        features["pose+expression"] = ("expression", "jaw")
    tracked = dict(clip.params)
    for k in expression_pcs:  # the tracked expression's leading principal components over the training frames
        tracked[f"expression_pcs{k}"] = _principal_components(clip.params["expression"], clip.train_ids, k)
        features[f"pose+{k} expression PCs"] = (f"expression_pcs{k}",)
    te = clip.test_ids
    for feat, lam in [("pose", None), *((f, lam) for f in features for lam in ridges)]:
        deltas = {k: torch.zeros_like(clip.params[k]) for k in keys}
        if lam is not None:
            pred = fit_pose_correction(tracked, lm, torch.as_tensor(sub), lam, extra=features[feat])
            for k in keys:
                deltas[k][te] = pred[k][te].float()
        with torch.no_grad():
            m = evaluate(rep, renderer, te, deltas=deltas)
        name = "tracked" if lam is None else f"corrected from {feat}, ridge {lam:g}"
        print(json.dumps({"clip": out.name, "poses": name, "psnr": round(m["psnr"], 2), "psnr_full": round(m["psnr_full"], 2),
                          "fitted_frames": len(sub), "lm_s": round(t_lm, 1)}), flush=True)  # fmt: skip


def _principal_components(x, rows, k: int):
    """``x [N, D]`` projected on its ``k`` leading principal directions over ``rows``: ``[N, k]``."""
    import torch

    x = x.double()
    mean = x[torch.as_tensor(rows)].mean(0)
    _, _, vt = torch.linalg.svd(x[torch.as_tensor(rows)] - mean, full_matrices=False)
    return ((x - mean) @ vt[:k].T).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outs", nargs="+", type=Path, help="trained avatar folders")
    parser.add_argument("--frames", type=int, default=64, help="training frames refined to fit the correction")
    parser.add_argument("--ridge", type=float, nargs="*", default=[10.0, 30.0, 100.0], help="ridge strengths to try")
    parser.add_argument("--expression", action="store_true",
                        help="also fit a correction from the tracked pose, the 52 expression weights and the jaw pose")
    parser.add_argument("--expression-pcs", type=int, nargs="*", default=[],
                        help="also fit one from the tracked pose and the K leading principal components of the tracked "
                             "expression over the training frames, for each K given")
    args = parser.parse_args()
    for out in args.outs:
        run(out, args.frames, args.ridge, args.expression, tuple(args.expression_pcs))


if __name__ == "__main__":
    main()
