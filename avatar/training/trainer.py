"""``train(OUT, config)``: fit a representation to a tracked clip, with checkpoints and resume.

A run reads top to bottom (:func:`_train`): set up (clip, head, frame renderer) -> initialise a
new avatar or resume the newest checkpoint -> optimise -> finalise (the pose correction drawn on
frames not trained on) -> evaluate held out -> write the bundle, report and videos.

A step: pick ``batch_size`` training frames (a seeded generator whose state is checkpointed),
pose the head with the tracked parameters plus their refinements, draw the representation over
the fixed background, loss = (1-l) 10 L2 + l D-SSIM against the matted frame composited on the
same background, + lambda_alpha |alpha - matte| + the representation's regularisers + the
refinements' penalties; Adam; the densify/prune strategy; the refinements' own step
(:class:`~avatar.training.state.Refinements`).

Files (all written atomically):
    OUT/checkpoints/step_NNNNNNN.pt   every ``checkpoint_every`` steps and at the end (last
                                      ``keep_checkpoints`` kept); a rerun resumes from the newest
    OUT/avatar/                       the bundle (see :mod:`avatar.representations.bundle`)
    OUT/report.json                   held-out PSNR/SSIM, foreground-only and whole-image, timings
    OUT/eval.mp4                      held-out frames: ground truth | render | error
    OUT/eval_refined_pose.mp4         the same with each frame's head pose refined (what is left is
                                      the avatar's error, not the tracking's)
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from avatar.representations import save_avatar
from avatar.training.config import TrainConfig
from avatar.models.base import FRAME_PARAMS
from avatar.render.device import describe, pick_device
from avatar.representations.base import BODY
from avatar.training.data import Clip, load_clip
from avatar.training.evaluation import correction_sizes, evaluate, fitted_correction, refine_held_out, spread
from avatar.training.frames import FrameRenderer
from avatar.training.initialise import new_avatar
from avatar.training.losses import photometric_loss
from avatar.training.state import (MIN_POSE_FRAMES, TrainState, check_resumable, input_digest, latest_checkpoint,
                                   list_checkpoints, save_checkpoint, with_correction)  # fmt: skip
from avatar.utils.files import atomic_write, exclusive

__all__ = ["train", "pick_device", "latest_checkpoint", "list_checkpoints", "evaluate", "refine_held_out"]

StepCallback = Callable[[int, dict[str, float]], None]
#: Training frames the report's training-frame figure is measured on.
TRAIN_SAMPLE = 16


def train(out_dir: str | Path, config: TrainConfig, *, progress: bool = True, on_step: StepCallback | None = None,
          model_path: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) the avatar in ``out_dir``; returns the report written to ``report.json``.

    ``model_path``: the FLAME file, where it is no longer where the clip was tracked with it (the
    tracking records its path and content digest; a file with other content is refused).

    ``on_step(step, losses)`` is called after each completed step (after any checkpoint of that
    step), e.g. to stop a run early from a test by raising ``KeyboardInterrupt``.
    """
    device = pick_device(config.device)
    if progress:
        print(f"train on {describe(device)}")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, config.torch_threads))
    try:
        with exclusive(out_dir, "avatar train"):
            return _train(Path(out_dir), config, device, progress, on_step, model_path)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Run:
    """What a run reads but does not change: its folder, settings, clip and frame renderer."""

    out_dir: Path
    config: TrainConfig
    clip: Clip
    frames: FrameRenderer
    progress: bool
    inputs: dict[str, str]  # what it trains from (state.input_digest), saved with each checkpoint
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def eval_ids(self) -> np.ndarray:
        """Held-out rows evaluated (at most ``eval_max_frames``, evenly spread); a single photo has
        none and is evaluated on its training frame (the report says so)."""
        if not len(self.clip.test_ids):
            return self.clip.train_ids
        cap = self.config.eval_max_frames
        return spread(self.clip.test_ids, cap) if cap > 0 else self.clip.test_ids

    def checkpoint(self, state: TrainState) -> Path:
        return save_checkpoint(self.out_dir / "checkpoints", {**state.state_dict(self.config), "inputs": self.inputs},
                               self.config.keep_checkpoints)  # fmt: skip


@dataclass
class Finished:
    """After the loop: the learnt and the drawn pose corrections (name -> ``[N, 3]``, every frame's)."""

    learnt: dict[str, Tensor] | None
    correction: dict[str, Tensor] | None
    pose_fit: dict[str, Any] | None
    seconds_train_loop: float
    losses: list[float]


def _train(out_dir: Path, config: TrainConfig, device: torch.device, progress: bool,
           on_step: StepCallback | None, model_path: str | Path | None) -> dict[str, Any]:  # fmt: skip
    run = _setup(out_dir, config, device, progress, model_path)
    state = _resume(run) or _initialise(run)
    if not config.refine_tracking:  # only the rigid pose moves: pose the tracked heads once, on disk
        (out_dir / "cache").mkdir(exist_ok=True)
        run.frames.pose_fixed_vertices(file=out_dir / "cache" / "fixed_vertices.npy")
    resumed_from = state.step if state.step > 0 else None
    t_loop = time.perf_counter()
    losses = _optimise(run, state, on_step)
    finished = _finalise(run, state, time.perf_counter() - t_loop, losses)
    metrics = _evaluate(run, state, finished)
    report = _report(run, state, finished, metrics, resumed_from)
    _write(run, state, finished, metrics, report)
    return report


def _setup(out_dir: Path, config: TrainConfig, device: torch.device, progress: bool,
           model_path: str | Path | None = None) -> Run:  # fmt: skip
    from avatar.models import load_head_model
    from avatar.render import RasterOptions

    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    clip = load_clip(out_dir, config.resolution, config.holdout, config.max_frames, progress=progress,
                     head_crop_faces=config.head_crop, track_body=config.track_body)  # fmt: skip
    if model_path is not None or clip.model_path:
        clip.model_path = str(Path(model_path or clip.model_path).resolve())
    head = load_head_model(clip.model, clip.model_path or None, sha256=clip.model_sha256 or None).to(device)
    bg = torch.tensor(config.background, dtype=torch.float32, device=device)
    raster = RasterOptions(num_threads=config.raster_threads or os.cpu_count() or 1)
    frames = FrameRenderer(head, clip, clip.shape.to(device), bg, raster)
    return Run(out_dir, config, clip, frames, progress, input_digest(out_dir), t_start)


def _initialise(run: Run) -> TrainState:
    """A new avatar (:func:`avatar.training.initialise.new_avatar`) and fresh optimisers."""
    rep = new_avatar(run.frames, run.config, run.progress)
    init_metrics = evaluate(rep, run.frames, run.eval_ids, sh_degree=0)
    generator = torch.Generator().manual_seed(run.config.seed)
    return TrainState.fresh(rep, run.clip, run.config, run.frames.device, generator, init_metrics)


def _resume(run: Run) -> TrainState | None:
    found = latest_checkpoint(run.out_dir / "checkpoints")
    if found is None:
        return None
    path, ck = found
    check_resumable(ck, run.config, run.inputs, str(path))
    return TrainState.from_checkpoint(ck, run.clip, run.config, run.frames.device, name=str(path))


def _optimise(run: Run, state: TrainState, on_step: StepCallback | None) -> list[float]:
    """Steps ``state.step`` .. ``config.steps``, with checkpoints; returns the losses."""
    from tqdm import tqdm

    config = run.config
    losses: list[float] = []
    bar = tqdm(total=config.steps, initial=state.step, desc="train", disable=not run.progress, dynamic_ncols=True)
    for step in range(state.step, config.steps):
        loss, parts, info = _train_step(run, state, step)
        state.step = step + 1
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", l1=f"{parts['l1']:.4f}", n=state.rep.num_gaussians, refresh=False)
        if info and run.progress:
            bar.write(f"step {state.step}: densify {info}")
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            run.checkpoint(state)
        if on_step is not None:
            on_step(state.step, {"loss": loss, **parts})
    bar.close()
    if not list_checkpoints(run.out_dir / "checkpoints"):
        run.checkpoint(state)
    return losses


def _train_step(run: Run, state: TrainState, step: int) -> tuple[float, dict[str, float], dict[str, int] | None]:
    """One optimisation step; returns the loss, its parts and what the strategy changed."""
    config, clip, frames, rep = run.config, run.clip, run.frames, state.rep
    for g in state.optimizer.param_groups:
        if g["name"] == "offset":
            g["lr"] = config.lr_offset * config.lr_offset_final_fraction ** (step / max(1, config.steps))
    sh_active = min(config.sh_degree, step // max(1, config.sh_increase_every))
    rows = clip.train_ids[torch.randint(len(clip.train_ids), (config.batch_size,), generator=state.generator).numpy()]
    rows_t = torch.as_tensor(rows, device=frames.device)
    deltas = state.refinements.step_deltas()
    params = frames.params(rows, deltas)
    verts = frames.vertices(rows, params, repose="global_orient" in deltas)
    local = rep.local_state(params.get("expression"))  # shared by the forward and the regulariser
    pred, alpha, metas = frames.draw(rep, rows, params, verts, sh_active, local)
    gt, matte = frames.target(rows)
    loss, parts = photometric_loss(pred, gt, config.lambda_dssim)
    if config.lambda_alpha > 0:
        l_alpha = (alpha - matte).abs().mean()
        loss = loss + config.lambda_alpha * l_alpha
        parts["alpha"] = float(l_alpha.detach())
    reg = rep.regularization_terms(config.offset_tolerance, config.scale_tolerance, local=local)
    loss = loss + config.w_offset * reg["offset"] + config.w_scale * reg["scale"]
    if "expression" in reg:
        loss = loss + config.w_expr * reg["expression"]
    loss = state.refinements.add_penalty(loss, rows_t, config)
    state.strategy.step_pre_backward(metas)
    loss.backward()
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.refinements.step(rows_t, active=step >= config.refine_from * config.steps)
    # The strategy reads the screen-space gradients, then may replace the primitives.
    info = state.strategy.step_post_backward(rep, state.optimizer, metas, step + 1, state.generator)
    return float(loss.detach()), parts, info


def _finalise(run: Run, state: TrainState, seconds: float, losses: list[float]) -> Finished:
    """The pose correction held-out frames are drawn with: fitted after training
    (``pose_fit_frames``), else the learnt one (``correct_pose``), else none."""
    config, clip = run.config, run.clip
    learnt = state.refinements.learnt_correction()
    correction, pose_fit = learnt, None
    if config.pose_fit_frames > 0 and len(clip.train_ids) >= MIN_POSE_FRAMES and len(clip.test_ids):
        correction, pose_fit = fitted_correction(state.rep, run.frames, spread(clip.train_ids, config.pose_fit_frames),
                                                 config.eval_refine_iters or 6, config.pose_fit_ridge, learnt,
                                                 run.progress)  # fmt: skip
    return Finished(learnt, correction, pose_fit, seconds, losses)


def _evaluate(run: Run, state: TrainState, done: Finished) -> dict[str, Any]:
    """The report's measurements: held out through the drawn correction (the headline), as
    tracked, through the learnt correction, with refined poses; and on training frames. The
    side-by-side videos of the headline and refined-pose passes are written as they are drawn."""
    config, clip, frames, rep = run.config, run.clip, run.frames, state.rep
    m: dict[str, Any] = {}
    with _eval_video(run, "eval.mp4") as on_panel:
        m["final"] = evaluate(rep, frames, run.eval_ids, done.correction, on_panel=on_panel)
    if done.correction is not None:
        m["uncorrected"] = evaluate(rep, frames, run.eval_ids)
    if done.pose_fit is not None and done.learnt is not None:
        m["learnt"] = evaluate(rep, frames, run.eval_ids, done.learnt)
    # (training rows of the correction are the learnt one, as trained)
    trained = with_correction({k: d.detach() for k, d in state.refinements.deltas.items()}, done.correction)
    m["train"] = evaluate(rep, frames, spread(clip.train_ids, TRAIN_SAMPLE), trained or None)
    if config.eval_refine_iters > 0 and len(clip.test_ids):
        m["test_deltas"] = refine_held_out(rep, frames, run.eval_ids, config.eval_refine_iters, init=done.correction,
                                           progress=run.progress)  # fmt: skip
        with _eval_video(run, "eval_refined_pose.mp4") as on_panel:
            m["refined"] = evaluate(rep, frames, run.eval_ids, m["test_deltas"], on_panel=on_panel)
    elif config.eval_video:  # not made this time: an older run's video would no longer match report.json
        (run.out_dir / "eval_refined_pose.mp4").unlink(missing_ok=True)
    return m


@contextlib.contextmanager
def _eval_video(run: Run, name: str) -> Iterator[Callable[[np.ndarray], None] | None]:
    """A video writer's ``write`` for OUT/``name`` (published when the block ends), or ``None``
    without ``eval_video``."""
    if not run.config.eval_video:
        yield None
        return
    from avatar.io.video import VideoWriter

    with VideoWriter(run.out_dir / name, fps=run.clip.fps or 25.0) as writer:
        yield writer.write


def _pick(metrics: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if metrics is None else {k: metrics[k] for k in keys if k in metrics}


def _report(run: Run, state: TrainState, done: Finished, m: dict[str, Any], resumed_from: int | None) -> dict[str, Any]:
    config, clip, frames = run.config, run.clip, run.frames
    held = len(clip.test_ids) > 0
    uncorrected = _pick(m.get("uncorrected"), ("psnr", "ssim", "psnr_full", "ssim_full"))
    if uncorrected is not None and held:
        uncorrected["correction"] = correction_sizes(frames, clip.test_ids, done.correction)
    if done.pose_fit is not None and "learnt" in m:  # the same frames through the learnt correction, for comparison
        done.pose_fit["held_out_learnt_correction"] = _pick(m["learnt"], ("psnr", "ssim", "psnr_full", "ssim_full"))
    refined = _pick(m.get("refined"), ("psnr", "ssim", "psnr_full", "psnr_per_frame"))
    if refined is not None:
        refined.update(correction_sizes(frames, run.eval_ids, m["test_deltas"]))
    losses = done.losses
    return {
        "steps": config.steps,
        "resumed_from": resumed_from,
        "device": str(frames.device),
        "num_gaussians": state.rep.num_gaussians,
        "regions": state.rep.region_counts(),
        "image_size": list(clip.size),
        "frames": {"train": int(len(clip.train_ids)), "held_out": int(len(clip.test_ids)),
                   "held_out_rows": [int(r) for r in clip.test_ids],
                   "held_out_evaluated": int(len(clip.test_ids) and len(run.eval_ids))},  # fmt: skip
        "held_out": _pick(m["final"], ("psnr", "ssim", "psnr_full", "ssim_full", "pixels", "psnr_per_frame")),
        "held_out_poses": _drawn_poses(done),
        "held_out_uncorrected_pose": uncorrected,
        "pose_fit": done.pose_fit,
        "held_out_initial": _pick(state.init_metrics, ("psnr", "ssim", "psnr_full")),
        "held_out_refined_pose": refined,
        "held_out_note": None if held else "one usable frame: nothing held out; 'held_out' is measured on the training frame",
        "train_sample": _pick(m["train"], ("psnr", "ssim", "psnr_full")),
        "expression_blendshapes": state.rep.expr_rank,
        "lpips": None,
        "lpips_note": "LPIPS not computed: its network weights are not available offline.",
        "metric_note": ("psnr/ssim: over foreground pixels only (matte > 0.5), the stricter figure; psnr_full/ssim_full: "
                        "over the whole image, both composited on the training background with the matte (the "
                        "convention of INSTA, GaussianAvatars, FlashAvatar). held_out (the headline) is at the poses a "
                        "user drives with (held_out_poses says which); held_out_refined_pose, each held-out frame's pose "
                        "refined photometrically against the avatar, is the figure comparable with peers, who track "
                        "test frames photometrically."),
        "loss_first_100": float(np.mean(losses[:100])) if losses else None,
        "loss_last_100": float(np.mean(losses[-100:])) if losses else None,
        "seconds_train_loop": round(done.seconds_train_loop, 2),
        "seconds_total": None,
        "densify": state.strategy.history,
        "config": config.to_dict(),
    }


def _drawn_poses(done: Finished) -> str:
    if done.pose_fit is not None:
        return "tracked, through the fitted pose correction (pose_fit_frames)"
    return "tracked, through the learnt pose correction (correct_pose)" if done.learnt is not None else "tracked"


def _performance(run: Run, state: TrainState, done: Finished, m: dict[str, Any]) -> dict[str, Tensor]:
    """Every frame's parameters as the avatar was trained (training rows) and found (held-out
    rows: their refined poses when measured, else the drawn correction), for ``avatar render
    --camera tracked``."""
    clip, device, deltas = run.clip, run.frames.device, state.refinements.deltas
    perf = {k: (clip.params[k].to(device) + (deltas[k].detach() if k in deltas else 0)).cpu() for k in (*FRAME_PARAMS, BODY)
            if k in clip.params}  # fmt: skip
    extra = m.get("test_deltas", done.correction) or {}  # test_deltas: the training rows are zero there
    for k, d in extra.items():
        perf[k] = perf[k] + d.cpu()
    return perf


def _write(run: Run, state: TrainState, done: Finished, m: dict[str, Any], report: dict[str, Any]) -> None:
    config, clip = run.config, run.clip
    save_avatar(run.out_dir / "avatar", state.rep, model=clip.model, shape=clip.shape, model_path=clip.model_path or None,
                extra={"model_sha256": clip.model_sha256, "train_config": config.to_dict(), "image_size": list(clip.size), "fps": clip.fps,
                       "viewmat": clip.viewmat.tolist(), "K": clip.Ks[0].tolist(), "background": list(config.background),
                       "held_out": report["held_out"], "source": clip.source},
                performance=_performance(run, state, done, m))  # fmt: skip
    report["seconds_total"] = round(time.perf_counter() - run.t_start, 2)
    with atomic_write(run.out_dir / "report.json", "w") as f:
        json.dump(report, f, indent=1)
