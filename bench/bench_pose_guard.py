"""Experiment: how far should the fitted pose correction extrapolate? For trained runs, prints the
held-out foreground PSNR (tracked poses through the correction) with the ridge fit evaluated at
clamped inputs: within K standard deviations of the fit frames' mean, or within their range widened
by M deviations; the table in docs/quality.md.

    python bench/bench_pose_guard.py WORK/<clip> [WORK/<clip> ...] [--sd 3 2] [--range-margin 0 1]

Each OUT is a finished run of ``bench/bench_avatar.py`` (its final checkpoint, else its bundle).
Per clip the rigid poses of the fit frames are refined against the avatar once (as training's
finalise does); each variant then only re-evaluates the held-out frames. "unguarded" must equal the
run's report.json headline when that run was made without the guard; "library default" is
:func:`avatar.training.refine.fit_pose_correction` as it is now.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def clamped_fit(tracked: dict, refined: dict, rows, ridge: float, lo, hi) -> dict:
    """The ridge fit of :func:`~avatar.training.refine.fit_pose_correction`, evaluated with the
    standardised inputs clamped to ``[lo, hi]`` (tensors of one bound per input, or None)."""
    import torch

    from avatar.training.refine import RIGID

    keys = [k for k in RIGID if k in refined]
    x = torch.cat([tracked[k].double().reshape(len(tracked[k]), -1) for k in keys], 1)
    y = torch.cat([refined[k].detach().double().cpu() for k in keys], 1)
    mu, sd = x[rows].mean(0), x[rows].std(0, unbiased=False)
    xs = torch.where(sd > 1e-12, (x - mu) / sd.clamp_min(1e-12), torch.zeros_like(x))
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    a = torch.cat([xs, ones], 1)
    penalty = torch.diag(torch.tensor([ridge] * x.shape[1] + [0.0], dtype=x.dtype))
    w = torch.linalg.solve(a[rows].T @ a[rows] + penalty, a[rows].T @ y[rows])
    if lo is not None:
        xs = torch.maximum(torch.minimum(xs, hi(xs[rows])), lo(xs[rows]))
    return dict(zip(keys, (torch.cat([xs, ones], 1) @ w).float().split(3, 1)))


def variants(sds: list[float], margins: list[float]) -> dict:
    """name -> (lo, hi): functions of the fit rows' standardised inputs giving the bounds."""
    out = {"unguarded": (None, None)}
    for m in margins:
        out[f"range+{m:g}sd"] = (lambda f, m=m: f.amin(0) - m, lambda f, m=m: f.amax(0) + m)
    for k in sds:
        out[f"within {k:g}sd"] = (lambda f, k=k: -k * f.new_ones(f.shape[1]), lambda f, k=k: k * f.new_ones(f.shape[1]))
    return out


def run(out: Path, sds: list[float], margins: list[float]) -> dict:
    import torch

    from avatar.representations import load_avatar
    from avatar.representations.mesh_gaussians import MeshGaussians
    from avatar.training import TrainConfig
    from avatar.training.evaluation import evaluate, refine_held_out, spread
    from avatar.training.refine import fit_pose_correction
    from avatar.training.state import latest_checkpoint
    from avatar.training.trainer import _setup

    report = json.loads((out / "report.json").read_text())
    cfg = TrainConfig.from_dict(report["config"], drop_unknown=True)  # runs of older versions name removed knobs
    run_ = _setup(out, cfg, torch.device("cpu"), False)
    found = latest_checkpoint(out / "checkpoints")
    rep = MeshGaussians.from_state(found[1]["rep_config"], found[1]["rep_state"]) if found \
        else load_avatar(out / "avatar").representation  # fmt: skip
    clip = run_.clip
    rows = torch.as_tensor(spread(clip.train_ids, cfg.pose_fit_frames))
    aligned = refine_held_out(rep, run_.frames, rows.numpy(), cfg.eval_refine_iters or 6, desc="fit frames")
    res = {"clip": out.name, "report": round(report["held_out"]["psnr"], 3)}
    with torch.no_grad():
        res["as tracked"] = round(evaluate(rep, run_.frames, clip.test_ids)["psnr"], 3)
        for name, (lo, hi) in variants(sds, margins).items():
            corr = clamped_fit(clip.params, aligned, rows, cfg.pose_fit_ridge, lo, hi)
            res[name] = round(evaluate(rep, run_.frames, clip.test_ids, corr)["psnr"], 3)
        corr = fit_pose_correction(clip.params, aligned, rows, cfg.pose_fit_ridge)
        res["library default"] = round(evaluate(rep, run_.frames, clip.test_ids, corr)["psnr"], 3)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outs", type=Path, nargs="+")
    parser.add_argument("--sd", type=float, nargs="*", default=[3.0, 2.0])
    parser.add_argument("--range-margin", type=float, nargs="*", default=[0.0, 1.0])
    args = parser.parse_args()
    for out in args.outs:
        print(json.dumps(run(out, args.sd, args.range_margin)), flush=True)


if __name__ == "__main__":
    main()
