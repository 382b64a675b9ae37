"""`avatar export OUT`: write the head as GLB (game engines), 3DGS .ply (splat viewers) or OBJ."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from avatar.errors import AvatarError


@dataclass
class Export:
    """Export the head from an output folder into OUT/exports/: GLB with ARKit-52 morph targets,
    skin, texture and (when tracked) the performance; the trained Gaussians as a 3DGS .ply; or a
    static OBJ. --neutral exports the bare head model (neutral shape and expression) instead."""

    out: tyro.conf.Positional[Path]
    """Output folder of `avatar track`, `avatar train` or `avatar reconstruct`."""
    format: Literal["glb", "ply", "obj"] = "glb"
    """glb: mesh + morph targets + skin + texture + animation; ply: Gaussian splats; obj: static mesh."""
    frame: int | None = None
    """Tracked frame to pose the OBJ at (default: the neutral head)."""
    animation: bool = True
    """Include the tracked performance in the GLB (--no-animation leaves it out)."""
    texture_size: int = 2048
    """Texture width and height in pixels."""
    model: Literal["anny", "flame"] = "anny"
    """Head model: the built-in AnnyHead (CC0) or a FLAME .pkl given with --model-path."""
    model_path: Path | None = None
    """FLAME .pkl file; only with --model flame."""
    uv_path: Path | None = None
    """FLAME's texture-space file (an .npz with vt and ft, or an .obj with vt): a FLAME head's GLB
    and OBJ carry a baked texture, and FLAME's model file has no UVs."""
    neutral: bool = False
    """Export the bare head model (neutral shape and expression, default texture, glb or obj) into
    OUT/exports/, whatever OUT holds; OUT is created if missing."""

    def run(self) -> None:
        if not 16 <= self.texture_size <= 8192:
            raise AvatarError(f"--texture-size {self.texture_size} is out of range (16..8192)")
        if self.frame is not None and self.format == "glb":
            raise AvatarError("--frame poses a static export; use it with --format obj (the GLB holds the whole performance)")
        check_source_folder(self)
        dest = self.out / "exports"
        if self.format == "ply":
            path = export_ply(self.out, dest, self.frame, self.model_path)
        else:
            tracking = None if self.neutral else tracking_if_any(self.out)
            head = load_model(self, tracking)
            path = export_glb_cli(self, head, tracking, dest) if self.format == "glb" else export_obj_cli(self, head, tracking, dest)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def check_source_folder(cfg: Export) -> None:
    """OUT must be a folder an earlier stage wrote into: a mistyped path would otherwise export the
    untracked head model without a word (--neutral asks for exactly that)."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise AvatarError(f"{out} is a file; pass the output folder of `avatar track` or `avatar reconstruct`")
    if cfg.neutral:
        if cfg.format == "ply" or cfg.frame is not None:
            raise AvatarError("--neutral exports the bare head model: use it with --format glb or obj and without --frame")
        return
    if not out.is_dir():
        raise AvatarError(f"{out}: no such folder; pass the output folder of `avatar track` or `avatar reconstruct` "
                          "(--neutral exports the bare head model)")  # fmt: skip
    stages_done = (out / "tracking.npz").exists() or (out / "avatar" / "avatar.json").exists()
    # ply and --frame name what they miss themselves (export_ply, export_obj_cli).
    if cfg.format != "ply" and cfg.frame is None and not stages_done:
        raise AvatarError(f"{out} holds neither tracking.npz nor a trained avatar/: run `avatar track INPUT -o {out}` "
                          "(or `avatar reconstruct`) first, or pass --neutral to export the bare head model")  # fmt: skip


def load_model(cfg: Export, tracking=None):
    """The head model: the one ``tracking`` was made with (its FLAME file where it was, unless
    --model-path names where it is now), else ``--model``."""
    from avatar.models import load_head_model

    name = tracking.model if tracking is not None else cfg.model
    if name != "flame" and cfg.model_path is not None:
        raise AvatarError("--model-path is only used with --model flame")
    path = cfg.model_path or (tracking.model_path if tracking is not None else None) or None
    sha = (tracking.model_sha256 if tracking is not None else None) or None
    return load_head_model(name, path=None if path is None else str(path), sha256=sha, uv_path=cfg.uv_path)


# ---------------------------------------------------------------------------------------------
# What earlier stages left in OUT: OUT/tracking.npz (avatar.fitting.load_tracking) and the
# trained bundle OUT/avatar/ (avatar.representations.load_avatar).
# ---------------------------------------------------------------------------------------------
BAKE_FRAMES = 12  # frames read from the source for texture baking (frontal first, then spread)


def tracking_if_any(out: Path):
    """The clip's :class:`~avatar.fitting.tracking.Tracking`, or ``None`` when OUT has none yet."""
    if not (out / "tracking.npz").exists():
        return None
    from avatar.fitting import load_tracking

    return load_tracking(out)


def _shape(tracking) -> np.ndarray | None:
    return None if tracking is None else np.asarray(tracking.shape, dtype=np.float32).reshape(1, -1)


def _bake_selection(tracking, count: int) -> np.ndarray:
    """Rows of ``tracking`` to bake from: tracked frames, the most frontal first, then frames
    spread over the range of head yaw, so the sides of the head get a view too."""
    rows = np.nonzero(np.asarray(tracking.tracked))[0]
    if rows.size <= count:
        return rows
    yaw = np.asarray(tracking.global_orient)[rows, 1]
    order = np.argsort(yaw)
    picks = {int(rows[np.argmin(np.abs(yaw))])}
    picks.update(int(rows[order[i]]) for i in np.linspace(0, rows.size - 1, count - 1).round().astype(int))
    return np.array(sorted(picks))


def _baked_texture(head, tracking, size: int) -> np.ndarray | None:
    """Project a few of the source frames onto the UV atlas; ``None`` (default texture) when the
    source is not readable any more."""
    from avatar.errors import AvatarError as _Err
    from avatar.export.texture import bake_texture_from_frames
    from avatar.io.video import FrameReader

    rows = _bake_selection(tracking, BAKE_FRAMES)
    if rows.size == 0:
        return None
    wanted = {int(tracking.frame_index[r]): int(r) for r in rows}
    frames: dict[int, np.ndarray] = {}
    try:
        with FrameReader(tracking.source, dtype="uint8") as reader:
            for i, frame in enumerate(reader):
                if i in wanted:
                    frames[wanted[i]] = frame
                if len(frames) == len(wanted) or i > max(wanted):
                    break
    except _Err as e:
        print(f"cannot read the source frames ({e}); using the default texture")
        return None
    got = np.array(sorted(frames))
    if got.size == 0:
        return None
    viewmats = np.repeat(np.asarray(tracking.viewmat)[None], got.size, 0)
    bake = bake_texture_from_frames(head, [frames[r] for r in got], viewmats, np.asarray(tracking.K)[got],
                                    tracking.frame_params(got), size, shape=_shape(tracking))  # fmt: skip
    return bake.image


def export_glb_cli(cfg: Export, head, tracking, dest: Path) -> Path:
    from avatar.export.gltf import GltfAnimation, export_glb

    animation = texture = None
    if tracking is not None:
        if cfg.animation:
            animation = GltfAnimation(fps=float(tracking.fps or 30.0), **tracking.frame_params())
        texture = _baked_texture(head, tracking, cfg.texture_size)
    info = export_glb(dest / "head.glb", head, shape=_shape(tracking), texture=texture, animation=animation,
                      texture_size=cfg.texture_size)
    print(f"{info.num_vertices} vertices, {len(info.target_names)} morph targets, {head.num_joints} joints, "
          f"{info.num_animation_frames} animation frames")
    return info.path


def export_obj_cli(cfg: Export, head, tracking, dest: Path) -> Path:
    from avatar.export.obj import export_obj

    params: dict[str, np.ndarray] = {}
    if cfg.frame is not None:
        if tracking is None:
            raise AvatarError(f"--frame {cfg.frame} needs {cfg.out / 'tracking.npz'}; run `avatar track` first")
        n = tracking.num_frames
        if not 0 <= cfg.frame < n:
            raise AvatarError(f"--frame {cfg.frame} is out of range: the tracking has frames 0..{n - 1}")
        params = tracking.frame_params(cfg.frame)
    shape = _shape(tracking)
    if shape is not None:
        params["shape"] = shape
    texture = _baked_texture(head, tracking, cfg.texture_size) if tracking is not None else None
    name = "head.obj" if cfg.frame is None else f"head_frame{cfg.frame:05d}.obj"
    return export_obj(dest / name, head, params=params, texture=texture, texture_size=cfg.texture_size).obj


def export_ply(out: Path, dest: Path, frame: int | None, model_path: Path | None = None) -> Path:
    """The trained Gaussians in the INRIA 3DGS layout, posed at the neutral expression (head at
    the origin, +Y up) or at tracked frame ``frame`` (in the tracking's world frame)."""
    import torch

    from avatar.export.ply import write_gaussians_ply
    from avatar.representations import load_avatar

    if not (out / "avatar" / "avatar.json").exists():
        raise AvatarError(f"--format ply needs a trained avatar ({out / 'avatar'} is missing or unfinished); "
                          f"run `avatar train {out}` first")  # fmt: skip
    av = load_avatar(out / "avatar", model_path=model_path)
    params: dict[str, torch.Tensor] = {}
    name = "gaussians.ply"
    if frame is not None:
        tracking = tracking_if_any(out)
        if tracking is None:
            raise AvatarError(f"--frame {frame} needs {out / 'tracking.npz'}; run `avatar track` first")
        if not 0 <= frame < tracking.num_frames:
            raise AvatarError(f"--frame {frame} is out of range: the tracking has frames 0..{tracking.num_frames - 1}")
        params = {k: torch.as_tensor(v) for k, v in tracking.frame_params(frame).items()}
        name = f"gaussians_frame{frame:05d}.ply"
    with torch.no_grad():
        splats = av.splats(params)
    colors = splats.frame_colors(0).cpu().numpy()  # SH turned to this frame's head pose
    path = dest / name
    n = write_gaussians_ply(
        path, means=splats.means[0].cpu().numpy(), quats=splats.quats[0].cpu().numpy(),
        scales=splats.scales[0].cpu().numpy(), opacities=splats.opacities.cpu().numpy(),
        sh_dc=colors[:, 0], sh_rest=colors[:, 1:] if colors.shape[1] > 1 else None,
    )  # fmt: skip
    print(f"{n} Gaussians")
    return path
