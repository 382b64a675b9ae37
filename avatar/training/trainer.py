"""``train(OUT, config)``: fit a representation to a tracked clip, with checkpoints and resume.

Loop (per step): pick ``batch_size`` training frames (a seeded generator whose state is
checkpointed), pose the head with the tracked (optionally refined) parameters, draw the
representation over the fixed background, loss = (1-l) E + l D-SSIM against the matted frame
composited on the same background (E: L1, or 10 x L2 with ``photometric="l2"``), + lambda_alpha
|alpha - matte|, + offset/scale regularisers (+ an L2 pull on the expression refinements); Adam;
then the densify/prune strategy; with ``refine_pose``/``refine_tracking`` the batch frames'
refinements take a per-frame Adam step, and with ``correct_pose`` the learnt correction of the
tracked pose (every frame's) an Adam step (:mod:`avatar.training.refine`). Before the first step:
surface Gaussians coloured from the frames, then hair/shoulder Gaussians seeded where the matte
shows what the mesh does not cover (:mod:`avatar.training.seeding`). After the last: with
``pose_fit_frames``, a second correction of the tracked pose, fitted in closed form to training
frames' poses refined against the finished avatar (it replaces the learnt one on the frames not
trained on); held-out metrics with the tracked poses (through that correction, else the learnt
one; the report also gives the figure without any, and with the learnt one) and, with
``eval_refine_iters``, with each held-out frame's rigid pose refined against the avatar.

Files (all written atomically):
    OUT/checkpoints/step_NNNNNNN.pt   every ``checkpoint_every`` steps and at the end (last
                                      ``keep_checkpoints`` kept); a rerun resumes from the newest
    OUT/avatar/                       the bundle (see :mod:`avatar.representations.bundle`)
    OUT/report.json                   held-out PSNR/SSIM, foreground-only and whole-image (initial,
                                      final, final with refined poses), timings
    OUT/eval.mp4                      held-out frames: ground truth | render | error
    OUT/eval_refined_pose.mp4         the same with each frame's head pose refined (what is left is
                                      the avatar's error, not the tracking's)
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from avatar.errors import AvatarError
from avatar.representations import MeshGaussians, Representation, render_splats, save_avatar
from avatar.representations.mesh_gaussians import FREE, LocalState
from avatar.representations.geometry import params_pose, rigid_transforms
from avatar.training.config import TrainConfig
from avatar.training.data import BODY, PARAMS, Clip, load_clip
from avatar.training.losses import masked_metrics, photometric_loss
from avatar.training.refine import (RIGID, PoseCorrection, RowAdam, apply_deltas, fit_pose_correction, refine_poses,
                                    repose_vertices)
from avatar.training.seeding import seed_off_mesh, seed_teeth
from avatar.training.strategy import DensifyStrategy
from avatar.utils.files import atomic_path, atomic_write

CHECKPOINT_FORMAT = 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AvatarError("device='cuda' but no CUDA device is available; use device=cpu (or the fast-cpu preset)")
    return torch.device(name)


# --- checkpoints ---------------------------------------------------------------------------------
def list_checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def latest_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads (older ones are tried if the newest does not)."""
    for path in reversed(list_checkpoints(folder)):
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable file is skipped, never trusted
            continue
        if isinstance(ck, dict) and ck.get("format") == CHECKPOINT_FORMAT:
            return path, ck
    return None


def _save_checkpoint(folder: Path, state: dict[str, Any], keep: int) -> Path:
    path = folder / f"step_{state['step']:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


# --- helpers -------------------------------------------------------------------------------------
def _frame_params(clip: Clip, rows: Tensor | np.ndarray, device: torch.device, deltas: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The head parameters (refined by ``deltas``) and, when tracked, the body motion of ``rows``."""
    rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    out = {k: clip.params[k][rows_t].to(device) for k in (*PARAMS, BODY) if k in clip.params}
    return apply_deltas(out, deltas, rows_t.to(device)) if deltas else out


def _with_correction(deltas: dict[str, Tensor], correction: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Per-frame ``deltas`` plus the learnt pose ``correction`` (both name -> ``[N, D]``)."""
    if not correction:
        return deltas
    return {**correction, **{k: d + correction[k] if k in correction else d for k, d in deltas.items()}}


def _vertices(head: Any, shape: Tensor, params: dict[str, Tensor]) -> Tensor:
    return head(shape=shape[None], **{k: v for k, v in params.items() if k in PARAMS}).vertices


@torch.no_grad()
def tracked_vertices(head: Any, shape: Tensor, clip: Clip, chunk: int = 64) -> Tensor:
    """``[N, V, 3]`` head vertices of every frame of ``clip`` at its tracked parameters (on
    ``shape``'s device), evaluated ``chunk`` frames at a time."""
    rows = np.arange(len(clip.Ks))
    return torch.cat([_vertices(head, shape, _frame_params(clip, c, shape.device, None))
                      for c in np.array_split(rows, max(1, len(rows) // chunk))])  # fmt: skip


def _reposed(fixed_verts: Tensor, clip: Clip, rows: Tensor, params: dict[str, Tensor]) -> Tensor:
    """The tracked vertices of ``rows`` moved rigidly to the (refined) pose in ``params``."""
    r = rows.cpu()
    return repose_vertices(fixed_verts[rows], clip.params["global_orient"][r], clip.params["transl"][r],
                           params["global_orient"], params["transl"])  # fmt: skip


def _splats(rep: Representation, verts: Tensor, params: dict[str, Tensor], sh_degree: int | None = None,
            local: LocalState | None = None) -> Any:  # fmt: skip
    """The representation posed for frames ``params`` (:func:`_frame_params`); ``local``: the
    frames' :meth:`~avatar.representations.MeshGaussians.local_state`, when already computed."""
    extra = {} if local is None else {"local": local}
    return rep(verts, sh_degree=sh_degree, head_pose=params_pose(params), body=params.get(BODY), expression=params.get("expression"), **extra)


# Fewer training frames than this show too few expressions to learn expression blendshapes from
# (one photo: a second offset and colour for its one expression, which only the regularisers hold).
MIN_EXPRESSION_FRAMES = 8
# Nor is a frame's pose refined below this many: with one view the avatar takes any misalignment
# into itself, and a refined pose only moves it away from the tracked one its exports are posed by.
MIN_POSE_FRAMES = MIN_EXPRESSION_FRAMES


def _spread(ids: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` distinct entries of ``ids``, evenly spread from the first to the last."""
    return np.unique(ids[np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)])


@torch.no_grad()
def init_colors_from_frames(rep: MeshGaussians, head: Any, clip: Clip, shape: Tensor, rows: np.ndarray) -> Tensor:
    """Base colour of each Gaussian = mean of the frame colours at its projection over ``rows``
    where it is visible (depth within 5 mm of the mesh's z-buffer) and in the matte. Gaussians
    never seen take the colour of their nearest seen neighbours on the neutral head (the back of
    the scalp gets hair colour, not an average of the face). Returns the ``[N]`` seen mask."""
    from avatar.render.mesh import rasterize_triangles

    device = rep.offset.device
    W, H = clip.size
    acc = torch.zeros(rep.num_gaussians, 3, dtype=torch.float64)
    cnt = torch.zeros(rep.num_gaussians, dtype=torch.float64)
    vm = clip.viewmat.double().cpu()
    faces = head.faces.cpu().numpy()
    for r in rows:
        verts = _vertices(head, shape, _frame_params(clip, [r], device, None))
        means = rep(verts).means[0].double().cpu()
        cam = means @ vm[:3, :3].T + vm[:3, 3]
        uv = cam @ clip.Ks[r].double().T
        px = (uv[:, :2] / uv[:, 2:].clamp_min(1e-6)).floor().long()
        inside = (cam[:, 2] > 0) & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
        frags = rasterize_triangles(verts[0].double().cpu().numpy(), faces, vm.numpy(), clip.Ks[r].double().numpy(), W, H)
        depth = torch.from_numpy(frags.depth)
        x, y = px[:, 0].clamp(0, W - 1), px[:, 1].clamp(0, H - 1)
        vis = inside & (cam[:, 2] <= depth[y, x] + 0.005) & (torch.from_numpy(clip.mattes[r])[y, x] > 127)
        img = torch.from_numpy(clip.images[r]).double() / 255.0
        acc[vis] += img[y[vis], x[vis]]
        cnt[vis] += 1
    seen = cnt > 0
    if not seen.any():
        return seen
    rgb = torch.empty(rep.num_gaussians, 3, dtype=torch.float64)
    rgb[seen] = acc[seen] / cnt[seen, None]
    unseen = ~seen
    if unseen.any():
        with torch.no_grad():
            pos = rep(_vertices(head, shape, {})).means[0].double().cpu()
        rgb[unseen] = nearest_colors(pos[unseen], pos[seen], rgb[seen])
    rep.set_colors(rgb.float().to(device))
    return seen


@torch.no_grad()
def close_unseen_surface(rep: MeshGaussians, seen: Tensor, opacity: float = 0.95, grow: float = 1.5) -> int:
    """Make the surface no frame shows (the back of the scalp and neck: ``free`` Gaussians not in
    ``seen``) an opaque shell: opacity ``opacity``, in-plane scale x ``grow``. With back-face
    culling nothing trains them, and at their initial 0.7 opacity on flat, gapped discs a novel
    view from behind saw through them to the inside of the face. Returns how many were closed."""
    shell = (~seen.to(rep.region.device)) & (rep.region == FREE)
    rep.opacity_logit[shell] = math.log(opacity / (1.0 - opacity))
    rep.log_scale[shell, :2] += math.log(grow)
    return int(shell.sum())


def nearest_colors(query: Tensor, points: Tensor, colors: Tensor, k: int = 8, chunk: int = 2048) -> Tensor:
    """Mean colour of the ``k`` nearest ``points`` for each ``query`` point (``[Q, 3]``, ``[P, 3]``,
    ``[P, 3]`` -> ``[Q, 3]``), in chunks to bound memory."""
    k = min(k, points.shape[0])
    out = torch.empty(query.shape[0], 3, dtype=colors.dtype)
    for i in range(0, query.shape[0], chunk):
        idx = torch.cdist(query[i : i + chunk], points).topk(k, largest=False).indices  # [q, k]
        out[i : i + chunk] = colors[idx].mean(1)
    return out


@torch.no_grad()
def evaluate(
    rep: Representation, head: Any, clip: Clip, rows: np.ndarray, shape: Tensor, background: Tensor,
    deltas: dict[str, Tensor] | None = None, sh_degree: int | None = None, keep_images: bool = False,
    options: Any = None, fixed_verts: Tensor | None = None,
) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
    """Masked PSNR/SSIM of ``rows`` (pooled over the frames, and per frame) and, with
    ``keep_images``, side-by-side frames GT | render | error (|error| x 4, grey). ``fixed_verts``:
    the tracked vertices of every row, when already posed (``deltas`` then refine only the pose)."""
    device = background.device
    preds, gts, masks, panels, per_frame = [], [], [], [], []
    for r in rows:
        params = _frame_params(clip, [r], device, deltas)
        if fixed_verts is not None:
            verts = _reposed(fixed_verts, clip, torch.tensor([int(r)], device=device), params)
        else:
            verts = _vertices(head, shape, params)
        rgb, _, _ = render_splats(_splats(rep, verts, params, sh_degree), clip.viewmat.to(device),
                                  clip.Ks[r].to(device), *clip.size, background, options)  # fmt: skip
        gt, m = clip.target([r], background, device)
        pred = rgb.clamp(0, 1)
        preds.append(pred), gts.append(gt), masks.append(m)
        per_frame.append(masked_metrics(pred, gt, m)["psnr"])
        if keep_images:
            err = ((pred - gt).abs().mean(-1, keepdim=True) * 4).clamp(0, 1).expand_as(pred)
            panels.append((torch.cat([gt, pred, err], 2)[0].cpu().numpy() * 255).round().astype(np.uint8))
    metrics = masked_metrics(torch.cat(preds), torch.cat(gts), torch.cat(masks)) if preds else {}
    metrics["psnr_per_frame"] = per_frame
    metrics["frames"] = [int(r) for r in rows]
    return metrics, panels


@torch.no_grad()
def _correction_sizes(head: Any, shape: Tensor, clip: Clip, deltas: dict[str, Tensor],
                      fixed_verts: Tensor | None = None) -> dict[str, float]:  # fmt: skip
    """How far the tracking was off on the held-out frames: the median angle of their head
    corrections (degrees; independent of the centre of rotation) and the median of each frame's
    mean head-vertex displacement (mm; a rotation about the model's origin and a translation
    partly cancel, so the translation alone would overstate it). ``fixed_verts``: the tracked
    vertices of every row, when already posed."""
    device = shape.device
    rows = torch.as_tensor(clip.test_ids, device=device)
    params = _frame_params(clip, clip.test_ids, device, None)
    verts = fixed_verts[rows] if fixed_verts is not None else _vertices(head, shape, params)
    refined = apply_deltas(params, deltas, rows)
    moved = repose_vertices(verts, params["global_orient"], params["transl"], refined["global_orient"], refined["transl"])
    return {"rotation_deg_median": float(torch.rad2deg(deltas["global_orient"][rows].norm(dim=1)).quantile(0.5)),
            "head_shift_mm_median": float((moved - verts).norm(dim=-1).mean(-1).quantile(0.5) * 1000)}


def refine_held_out(
    rep: Representation, head: Any, clip: Clip, rows: np.ndarray, shape: Tensor, background: Tensor, iters: int,
    fixed_verts: Tensor | None = None, options: Any = None, progress: bool = False,
    init: dict[str, Tensor] | None = None, desc: str = "refine held-out poses",
) -> dict[str, Tensor]:  # fmt: skip
    """Rigid-pose deltas (name -> ``[N, 3]``; outside ``rows``, zero or ``init``) that align the
    avatar, held fixed, with frames ``rows`` (:func:`avatar.training.refine.refine_poses`),
    starting from ``init`` (name -> ``[N, 3]``, e.g. the learnt pose correction) or from the
    tracked poses. ``fixed_verts``: the tracked vertices of every row, when already posed."""
    from tqdm import tqdm

    device = background.device
    deltas = {k: torch.zeros_like(clip.params[k], device=device) for k in RIGID if k in clip.params}
    for k, v in (init or {}).items():
        deltas[k] = v.detach().to(device).clone()
    if fixed_verts is None:  # pose the tracked heads once, not at every step
        fixed_verts = torch.zeros(len(clip.Ks), head.num_vertices, 3, device=device, dtype=shape.dtype)
        with torch.no_grad():
            for c in np.array_split(np.asarray(rows), max(1, len(rows) // 32)):
                fixed_verts[torch.as_tensor(c, device=device)] = _vertices(head, shape, _frame_params(clip, c, device, None))

    def render(d: dict[str, Tensor], r: Tensor) -> tuple[Tensor, Tensor]:
        params = {k: v + d[k] if k in d else v for k, v in _frame_params(clip, r.cpu().numpy(), device, None).items()}
        verts = _reposed(fixed_verts, clip, r, params)
        rgb, alpha, _ = render_splats(_splats(rep, verts, params), clip.viewmat.to(device), clip.Ks[r.cpu()].to(device),
                                      *clip.size, background, options)  # fmt: skip
        return rgb, alpha

    bar = tqdm(total=len(rows), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    try:
        refine_poses(render, deltas, torch.as_tensor(np.asarray(rows), device=device),
                     lambda r: clip.target(r.cpu().numpy(), background, device), iters=iters,
                     progress=lambda n: bar.update(n - bar.n))  # fmt: skip
    finally:
        bar.close()
    return deltas


def _fitted_correction(rep: Representation, head: Any, clip: Clip, shape: Tensor, bg: Tensor, config: TrainConfig,
                       fixed_verts: Tensor | None, raster: Any, progress: bool,
                       learnt: dict[str, Tensor] | None) -> tuple[dict[str, Tensor], dict[str, Any]]:  # fmt: skip
    """``TrainConfig.pose_fit_frames``: the pose correction of every frame (name -> ``[N, 3]``): the
    ridge fit (:func:`~avatar.training.refine.fit_pose_correction`) to the poses of training frames
    refined against the finished avatar, on the held-out rows; ``learnt`` (or zero) on the
    training rows, which were trained with it. Also what the report says of it."""
    t0 = time.perf_counter()
    rows = _spread(clip.train_ids, config.pose_fit_frames)
    aligned = refine_held_out(rep, head, clip, rows, shape, bg, config.eval_refine_iters or 6, fixed_verts,
                              options=raster, progress=progress, desc="refine training poses (pose fit)")  # fmt: skip
    fitted = fit_pose_correction(clip.params, aligned, torch.as_tensor(rows), config.pose_fit_ridge)
    held = torch.zeros(len(clip.Ks), 1, dtype=torch.bool, device=bg.device)
    held[torch.as_tensor(clip.test_ids, device=bg.device)] = True
    correction = {k: torch.where(held, f.to(bg.device), learnt[k] if learnt else torch.zeros_like(f, device=bg.device))
                  for k, f in fitted.items()}  # fmt: skip
    info = {"frames": len(rows), "ridge": config.pose_fit_ridge, "seconds": round(time.perf_counter() - t0, 1),
            "held_out_correction": {k: v[torch.as_tensor(clip.test_ids)].tolist() for k, v in fitted.items()}}  # fmt: skip
    return correction, info


# --- training ------------------------------------------------------------------------------------
def train(
    out_dir: str | Path,
    config: TrainConfig,
    *,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the avatar in ``out_dir``; returns the report written to ``report.json``.

    ``on_step(step, losses)`` is called after each completed step (after any checkpoint of that
    step), e.g. to stop a run early from a test by raising ``KeyboardInterrupt``.
    """
    out_dir = Path(out_dir)
    device = pick_device(config.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, config.torch_threads))
    try:
        return _train(out_dir, config, device, progress, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(out_dir: Path, config: TrainConfig, device: torch.device, progress: bool,
           on_step: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any]:  # fmt: skip
    from tqdm import tqdm

    from avatar.models import load_head_model
    from avatar.render import RasterOptions

    t_start = time.perf_counter()
    raster = RasterOptions(num_threads=config.raster_threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    clip = load_clip(out_dir, config.resolution, config.holdout, config.max_frames, progress=progress,
                     head_crop_faces=config.head_crop, track_body=config.track_body)  # fmt: skip
    # A single photo has nothing to hold out: it is evaluated on its training frame (the report says so).
    eval_ids = clip.test_ids if len(clip.test_ids) else clip.train_ids
    head = load_head_model(clip.model).to(device)
    shape = clip.shape.to(device)
    bg = torch.tensor(config.background, dtype=torch.float32, device=device)
    ck_dir = out_dir / "checkpoints"
    resumed = latest_checkpoint(ck_dir)
    gen = torch.Generator().manual_seed(config.seed)

    if resumed is not None:
        ck_path, ck = resumed
        rep = MeshGaussians.from_state(ck["rep_config"], ck["rep_state"]).to(device)
        start, init_metrics = int(ck["step"]), ck["init_metrics"]
        gen.set_state(ck["generator"])
    else:
        with torch.no_grad():
            neutral = head(shape=shape[None]).vertices[0]
        rep = MeshGaussians.on_surface(head, per_face=config.per_face, per_face_face=config.per_face_face,
                                       sh_degree=config.sh_degree, vertices=neutral, seed=config.seed,
                                       cull_backfacing=config.cull_backfacing,
                                       sh_follows_head=config.sh_follows_head,
                                       expr_rank=config.expr_rank if len(clip.train_ids) >= MIN_EXPRESSION_FRAMES else 0).to(device)  # fmt: skip
        seen = init_colors_from_frames(rep, head, clip, shape, _spread(clip.train_ids, config.color_init_frames))
        if config.cull_backfacing:
            close_unseen_surface(rep, seen)
        if config.teeth:
            seed_teeth(rep, head, neutral)
        with torch.no_grad():  # body-fixed hair is stored relative to the mean training head pose
            train_params = _frame_params(clip, clip.train_ids, device, None)
            rep.reference_pose.copy_(rigid_transforms(train_params["global_orient"].mean(0, keepdim=True),
                                                      train_params["transl"].mean(0, keepdim=True))[0])  # fmt: skip
            rep.set_body_translation(config.body_translation)
        if config.seed_off_mesh:
            seed_rows = _spread(clip.train_ids, config.seed_frames)
            with torch.no_grad():
                seed_params = _frame_params(clip, seed_rows, device, None)
                seed_verts = _vertices(head, shape, seed_params)
            n_seeded = seed_off_mesh(rep, head, seed_verts, clip.images[seed_rows], clip.mattes[seed_rows], clip.viewmat,
                                     clip.Ks[seed_rows], stride=config.seed_stride, head_poses=params_pose(seed_params),
                                     body=seed_params.get(BODY),
                                     turn=config.body_rotation, options=raster)  # fmt: skip
            if progress:
                print(f"seeded {n_seeded} off-mesh (hair) Gaussians from {len(seed_rows)} frames")
        start = 0
        init_metrics, _ = evaluate(rep, head, clip, eval_ids, shape, bg, sh_degree=0, options=raster)

    # Per-frame refinements of the tracking (avatar.training.refine), each on its own per-row Adam.
    refined = [k for k in RIGID if config.refine_pose and len(clip.train_ids) >= MIN_POSE_FRAMES and k in clip.params]
    refined += [k for k in PARAMS if config.refine_tracking and k not in RIGID]
    deltas = {k: torch.zeros_like(clip.params[k], device=device).requires_grad_() for k in refined}
    delta_lrs = {k: config.lr_pose_rotation if k == "global_orient" else config.lr_pose_translation if k in RIGID
                 else config.lr_tracking for k in deltas}  # fmt: skip
    delta_opt = RowAdam(deltas, delta_lrs) if deltas else None
    corrector, corrector_opt = None, None
    if config.correct_pose and len(clip.train_ids) >= MIN_POSE_FRAMES:
        corrector = PoseCorrection.for_clip(clip.params, torch.as_tensor(clip.train_ids)).to(device)
        corrector_opt = torch.optim.Adam(corrector.parameters(), lr=config.lr_pose_model)
    lrs = {"offset": config.lr_offset, "rot": config.lr_rot, "log_scale": config.lr_scale,
           "opacity_logit": config.lr_opacity, "sh_dc": config.lr_color, "sh_rest": config.lr_sh_rest,
           "follow_logit": config.lr_follow, "turn_logit": config.lr_turn, "static_pos": config.lr_static,
           "expr_color": config.lr_expr, "expr_offset": config.lr_expr, "body_logit": config.lr_body,
           "expr_proj": config.lr_expr_proj}  # fmt: skip
    groups = [{"params": [p], "lr": lrs[k], "name": k} for k, p in rep.primitive_parameters().items()]
    groups += [{"params": [p], "lr": lrs[k], "name": k} for k, p in rep.shared_parameters().items()]
    # fused: one pass per tensor instead of ~8 elementwise ops (a third of the Adam time on CPU)
    optimizer = torch.optim.Adam(groups, eps=1e-15, fused=True)
    strategy = DensifyStrategy(config.strategy, config.steps)
    if resumed is not None:
        for k, d in deltas.items():
            if k in ck.get("deltas", {}):
                d.data.copy_(ck["deltas"][k])
        if delta_opt is not None and set(ck.get("delta_optimizer", {}).get("m", {})) == set(deltas):
            delta_opt.load_state_dict(ck["delta_optimizer"])
        try:
            optimizer.load_state_dict(ck["optimizer"])
        except ValueError as e:  # parameter groups changed: a checkpoint of an older version
            raise AvatarError(f"{ck_path} was written by an older version of avatar and cannot be resumed; "
                              "start over with `avatar train OUT --restart`") from e  # fmt: skip
        strategy.load_state_dict(ck["strategy"])
        if corrector is not None and "pose_model" in ck:
            corrector.load_state_dict(ck["pose_model"])
            corrector_opt.load_state_dict(ck["pose_model_optimizer"])

    # Tracked vertices change only with the pose when the rest is not refined: pose them once and
    # move them rigidly by the pose refinement.
    fixed_verts = None if config.refine_tracking else tracked_vertices(head, shape, clip)

    def checkpoint(step: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT, "step": step, "config": config.to_dict(),
            "rep_config": rep.config(), "rep_state": {k: v.detach().cpu() for k, v in rep.state_dict().items()},
            "optimizer": optimizer.state_dict(), "strategy": strategy.state_dict(),
            "deltas": {k: d.detach().cpu() for k, d in deltas.items()}, "generator": gen.get_state(),
            "delta_optimizer": delta_opt.state_dict() if delta_opt is not None else {},
            "init_metrics": init_metrics,
        }  # fmt: skip
        if corrector is not None:
            state["pose_model"] = {k: v.detach().cpu() for k, v in corrector.state_dict().items()}
            state["pose_model_keys"] = corrector.keys
            state["pose_model_optimizer"] = corrector_opt.state_dict()
        _save_checkpoint(ck_dir, state, config.keep_checkpoints)

    W, H = clip.size
    n_train = len(clip.train_ids)
    losses_hist: list[float] = []
    bar = tqdm(total=config.steps, initial=start, desc="train", disable=not progress, dynamic_ncols=True)
    t_loop = time.perf_counter()
    for step in range(start, config.steps):
        for g in optimizer.param_groups:
            if g["name"] == "offset":
                g["lr"] = config.lr_offset * config.lr_offset_final_fraction ** (step / max(1, config.steps))
        sh_active = min(config.sh_degree, step // max(1, config.sh_increase_every))
        rows = clip.train_ids[torch.randint(n_train, (config.batch_size,), generator=gen).numpy()]
        rows_t = torch.as_tensor(rows, device=device)
        step_deltas = _with_correction(deltas, corrector() if corrector is not None else None)
        params = _frame_params(clip, rows, device, step_deltas)
        if fixed_verts is not None:
            verts = _reposed(fixed_verts, clip, rows_t, params) if "global_orient" in step_deltas else fixed_verts[rows_t]
        else:
            verts = _vertices(head, shape, params)
        local = rep.local_state(params.get("expression"))  # shared by the forward and the regulariser
        splats = _splats(rep, verts, params, sh_active, local)
        pred, alpha, metas = render_splats(splats, clip.viewmat.to(device), clip.Ks[rows].to(device), W, H, bg, raster)
        gt, matte = clip.target(rows, bg, device)
        loss, parts = photometric_loss(pred, gt, config.lambda_dssim, config.photometric)
        if config.lambda_alpha > 0:
            l_alpha = (alpha - matte).abs().mean()
            loss = loss + config.lambda_alpha * l_alpha
            parts["alpha"] = float(l_alpha.detach())
        reg = rep.regularization_terms(config.offset_tolerance, config.scale_tolerance, local=local)
        loss = loss + config.w_offset * reg["offset"] + config.w_scale * reg["scale"]
        if "expression" in reg:
            loss = loss + config.w_expr * reg["expression"]
        pulled = [d for k, d in deltas.items() if k not in RIGID]
        if pulled:
            loss = loss + config.w_tracking * sum((d[rows_t] ** 2).mean() for d in pulled)
        if corrector is not None:
            loss = loss + config.w_pose_model * corrector.penalty()
        strategy.step_pre_backward(metas)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        refining = step >= config.refine_from * config.steps
        if corrector is not None:
            if refining:
                corrector_opt.step()
            corrector_opt.zero_grad(set_to_none=True)
        if delta_opt is not None:
            if refining:
                delta_opt.step(rows_t)
            for d in deltas.values():
                d.grad = None
        # The strategy reads the screen-space gradients, then may replace the primitives.
        info = strategy.step_post_backward(rep, optimizer, metas, step + 1, gen)
        losses_hist.append(float(loss.detach()))
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses_hist[-1]:.4f}", l1=f"{parts['l1']:.4f}", n=rep.num_gaussians, refresh=False)
        if info and progress:
            bar.write(f"step {done}: densify {info}")
        if done % config.checkpoint_every == 0 or done == config.steps:
            checkpoint(done)
        if on_step is not None:
            on_step(done, {"loss": losses_hist[-1], **parts})
    bar.close()
    if start == config.steps and not list_checkpoints(ck_dir):
        checkpoint(config.steps)
    t_train = time.perf_counter() - t_loop

    # --- export + evaluation ---------------------------------------------------------------------
    # The learnt pose correction, of every frame (the held-out ones are drawn through it too).
    learnt = None
    if corrector is not None:
        with torch.no_grad():
            learnt = {k: v.detach() for k, v in corrector().items()}
    correction, pose_fit = learnt, None
    if config.pose_fit_frames > 0 and len(clip.train_ids) >= MIN_POSE_FRAMES and len(clip.test_ids):
        correction, pose_fit = _fitted_correction(rep, head, clip, shape, bg, config, fixed_verts, raster, progress, learnt)
    perf = {k: (clip.params[k].to(device) + (deltas[k].detach() if k in deltas else 0)).cpu() for k in (*PARAMS, BODY)
            if k in clip.params}  # fmt: skip
    final, panels = evaluate(rep, head, clip, eval_ids, shape, bg, deltas=correction, keep_images=config.eval_video,
                             options=raster, fixed_verts=fixed_verts)  # fmt: skip
    uncorrected = None
    if correction is not None:
        uncorrected, _ = evaluate(rep, head, clip, eval_ids, shape, bg, options=raster, fixed_verts=fixed_verts)
    if pose_fit is not None and learnt is not None:  # the same frames through the learnt correction, for comparison
        learnt_eval, _ = evaluate(rep, head, clip, eval_ids, shape, bg, deltas=learnt, options=raster, fixed_verts=fixed_verts)
        pose_fit["held_out_learnt_correction"] = {k: learnt_eval[k] for k in ("psnr", "ssim", "psnr_full", "ssim_full")}
    # (training rows of `correction` are the learnt correction, as trained)
    train_metrics, _ = evaluate(rep, head, clip, _spread(clip.train_ids, 16), shape, bg,
                                deltas=_with_correction({k: d.detach() for k, d in deltas.items()}, correction) or None,
                                options=raster, fixed_verts=fixed_verts)  # fmt: skip
    refined_eval, correction_sizes, refined_panels = None, {}, []
    if config.eval_refine_iters > 0 and len(clip.test_ids):
        test_deltas = refine_held_out(rep, head, clip, clip.test_ids, shape, bg, config.eval_refine_iters,
                                      fixed_verts, options=raster, progress=progress, init=correction)  # fmt: skip
        refined_eval, refined_panels = evaluate(rep, head, clip, clip.test_ids, shape, bg, deltas=test_deltas,
                                                keep_images=config.eval_video, options=raster, fixed_verts=fixed_verts)  # fmt: skip
        # The bundle's performance gets the held-out frames' refined poses too (their rows of
        # test_deltas; the training deltas are zero there): `avatar render --camera tracked`
        # then draws every frame where it was found to be.
        for k, d in test_deltas.items():
            perf[k] = perf[k] + d.cpu()
        correction_sizes = _correction_sizes(head, shape, clip, test_deltas, fixed_verts)
    elif correction is not None:
        for k, d in correction.items():
            perf[k] = perf[k] + d.cpu()
    report = {
        "steps": config.steps,
        "resumed_from": start if resumed is not None else None,
        "device": str(device),
        "num_gaussians": rep.num_gaussians,
        "regions": rep.region_counts(),
        "image_size": [W, H],
        "frames": {"train": int(n_train), "held_out": int(len(clip.test_ids)), "held_out_rows": [int(r) for r in clip.test_ids]},
        "held_out": {k: final[k] for k in ("psnr", "ssim", "psnr_full", "ssim_full", "pixels", "psnr_per_frame") if k in final},
        "held_out_uncorrected_pose": None if uncorrected is None else {
            **{k: uncorrected[k] for k in ("psnr", "ssim", "psnr_full", "ssim_full") if k in uncorrected},
            **({"correction": _correction_sizes(head, shape, clip, correction, fixed_verts)} if len(clip.test_ids) else {})},
        "pose_fit": pose_fit,
        "held_out_initial": {k: init_metrics[k] for k in ("psnr", "ssim", "psnr_full") if k in init_metrics},
        "held_out_refined_pose": None if refined_eval is None else {
            **{k: refined_eval[k] for k in ("psnr", "ssim", "psnr_full", "psnr_per_frame") if k in refined_eval},
            **correction_sizes},
        "held_out_note": None if len(clip.test_ids) else "one usable frame: nothing held out; 'held_out' is measured on the training frame",
        "train_sample": {k: train_metrics[k] for k in ("psnr", "ssim", "psnr_full") if k in train_metrics},
        "expression_blendshapes": rep.expr_rank,
        "lpips": None,
        "lpips_note": "LPIPS not computed: its network weights are not available offline.",
        "metric_note": ("psnr/ssim: over foreground pixels only (matte > 0.5), the stricter figure; psnr_full/ssim_full: "
                        "over the whole image, both composited on the training background with the matte (the "
                        "convention of INSTA, GaussianAvatars, FlashAvatar)."),
        "loss_first_100": float(np.mean(losses_hist[:100])) if losses_hist else None,
        "loss_last_100": float(np.mean(losses_hist[-100:])) if losses_hist else None,
        "seconds_train_loop": round(t_train, 2),
        "seconds_total": None,
        "densify": strategy.history,
        "config": config.to_dict(),
    }
    save_avatar(out_dir / "avatar", rep, model=clip.model, shape=clip.shape,
                extra={"train_config": config.to_dict(), "image_size": [W, H], "fps": clip.fps,
                       "viewmat": clip.viewmat.tolist(), "K": clip.Ks[0].tolist(), "background": list(config.background),
                       "held_out": report["held_out"], "source": clip.source},
                performance=perf)  # fmt: skip
    if config.eval_video:
        from avatar.io.video import VideoWriter

        for name, frames in (("eval.mp4", panels), ("eval_refined_pose.mp4", refined_panels)):
            if frames:
                with VideoWriter(out_dir / name, fps=clip.fps or 25.0) as w:
                    for p in frames:
                        w.write(p)
            else:  # not made this time: an older run's video would no longer match report.json
                (out_dir / name).unlink(missing_ok=True)
    report["seconds_total"] = round(time.perf_counter() - t_start, 2)
    with atomic_write(out_dir / "report.json", "w") as f:
        json.dump(report, f, indent=1)
    return report
