"""Held-out evaluation of a trained representation: masked PSNR/SSIM, photometric refinement of
frames' rigid poses against the (fixed) avatar, and the pose correction fitted from it.

Everything draws through one :class:`~avatar.training.frames.FrameRenderer`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from avatar.representations import Representation
from avatar.training.frames import FrameRenderer
from avatar.training.losses import MetricSums
from avatar.training.refine import RIGID, apply_deltas, fit_pose_correction, refine_poses, repose_vertices


def spread(ids: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` distinct entries of ``ids``, evenly spread from the first to the last."""
    return np.unique(ids[np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)])


@torch.no_grad()
def evaluate(rep: Representation, frames: FrameRenderer, rows: np.ndarray, deltas: dict[str, Tensor] | None = None,
             sh_degree: int | None = None, on_panel: Callable[[np.ndarray], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Masked PSNR/SSIM of ``rows`` (pooled over the frames, and per frame) drawn with ``deltas``
    (name -> ``[N, D]`` refinements of every frame); ``on_panel`` receives each frame's side-by-side
    GT | render | error (|error| x 4, grey) as it is drawn (e.g. a video writer's ``write``)."""
    pooled, per_frame = MetricSums(), []
    for r in rows:  # one frame at a time: nothing per clip is held on the device
        rgb, _, _ = frames.render(rep, [int(r)], deltas, sh_degree)
        gt, m = frames.target([int(r)])
        pred = rgb.clamp(0, 1)
        frame = MetricSums().add(pred, gt, m)
        pooled.merge(frame)
        per_frame.append(frame.result()["psnr"])
        if on_panel is not None:
            err = ((pred - gt).abs().mean(-1, keepdim=True) * 4).clamp(0, 1).expand_as(pred)
            on_panel((torch.cat([gt, pred, err], 2)[0].cpu().numpy() * 255).round().astype(np.uint8))
    metrics = pooled.result()
    metrics["psnr_per_frame"] = per_frame
    metrics["frames"] = [int(r) for r in rows]
    return metrics


def refine_held_out(rep: Representation, frames: FrameRenderer, rows: np.ndarray, iters: int,
                    init: dict[str, Tensor] | None = None, progress: bool = False,
                    desc: str = "refine held-out poses") -> dict[str, Tensor]:  # fmt: skip
    """Rigid-pose deltas (name -> ``[N, 3]``; outside ``rows``, zero or ``init``) that align the
    avatar, held fixed, with frames ``rows`` (:func:`avatar.training.refine.refine_poses`),
    starting from ``init`` (e.g. a pose correction) or from the tracked poses."""
    from tqdm import tqdm

    clip, device = frames.clip, frames.device
    deltas = {k: torch.zeros_like(clip.params[k], device=device) for k in RIGID if k in clip.params}
    for k, v in (init or {}).items():
        deltas[k] = v.detach().to(device).clone()
    if frames.fixed_verts is None:  # pose the tracked heads once, not at every step
        frames = dataclasses.replace(frames)
        frames.pose_fixed_vertices(rows, chunk=32)

    def render(d: dict[str, Tensor], r: Tensor) -> tuple[Tensor, Tensor]:
        params = {k: v + d[k] if k in d else v for k, v in frames.params(r).items()}
        rgb, alpha, _ = frames.draw(rep, r, params, frames.vertices(r, params))
        return rgb, alpha

    bar = tqdm(total=len(rows), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    try:
        refine_poses(render, deltas, torch.as_tensor(np.asarray(rows), device=device), frames.target, iters=iters,
                     progress=lambda n: bar.update(n - bar.n))  # fmt: skip
    finally:
        bar.close()
    return deltas


@torch.no_grad()
def correction_sizes(frames: FrameRenderer, rows: np.ndarray, deltas: dict[str, Tensor]) -> dict[str, float]:
    """How far the tracking was off on ``rows``: the median angle of their head corrections
    (degrees; independent of the centre of rotation) and the median of each frame's mean
    head-vertex displacement (mm; a rotation about the model's origin and a translation partly
    cancel, so the translation alone would overstate it)."""
    rows_t = torch.as_tensor(rows, device=frames.device)
    params = frames.params(rows)
    verts = frames.vertices(rows, params, repose=False)
    refined = apply_deltas(params, deltas, rows_t)
    moved = repose_vertices(verts, params["global_orient"], params["transl"], refined["global_orient"], refined["transl"])
    return {"rotation_deg_median": float(torch.rad2deg(deltas["global_orient"][rows_t].norm(dim=1)).quantile(0.5)),
            "head_shift_mm_median": float((moved - verts).norm(dim=-1).mean(-1).quantile(0.5) * 1000)}


def fitted_correction(rep: Representation, frames: FrameRenderer, fit_rows: np.ndarray, iters: int, ridge: float,
                      learnt: dict[str, Tensor] | None, progress: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:  # fmt: skip
    """The pose correction of every frame (name -> ``[N, 3]``): a ridge fit
    (:func:`~avatar.training.refine.fit_pose_correction`) from the tracked pose to the poses of
    training frames ``fit_rows`` refined against the finished avatar, on the held-out rows;
    ``learnt`` (or zero) on the training rows, which were trained with it. Also what the report
    says of it. No held-out pixel is used."""
    t0 = time.perf_counter()
    clip, device = frames.clip, frames.device
    aligned = refine_held_out(rep, frames, fit_rows, iters, progress=progress, desc="refine training poses (pose fit)")
    fitted = fit_pose_correction(clip.params, aligned, torch.as_tensor(fit_rows), ridge)
    held = torch.zeros(len(clip.Ks), 1, dtype=torch.bool, device=device)
    held[torch.as_tensor(clip.test_ids, device=device)] = True
    correction = {k: torch.where(held, f.to(device), learnt[k] if learnt else torch.zeros_like(f, device=device))
                  for k, f in fitted.items()}  # fmt: skip
    info = {"frames": len(fit_rows), "ridge": ridge, "seconds": round(time.perf_counter() - t0, 1),
            "held_out_correction": {k: v[torch.as_tensor(clip.test_ids)].tolist() for k, v in fitted.items()}}  # fmt: skip
    return correction, info
