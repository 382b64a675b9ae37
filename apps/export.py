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
    static OBJ. Without tracking or a trained avatar, the neutral head model is exported."""

    out: tyro.conf.Positional[Path]
    """Output folder of `avatar reconstruct` (or any folder: only the model is needed for glb/obj)."""
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

    def run(self) -> None:
        if not 16 <= self.texture_size <= 8192:
            raise AvatarError(f"--texture-size {self.texture_size} is out of range (16..8192)")
        if self.frame is not None and self.format == "glb":
            raise AvatarError("--frame poses a static export; use it with --format obj (the GLB holds the whole performance)")
        dest = self.out / "exports"
        if self.format == "ply":
            path = export_ply(self.out, dest, self.frame)
        else:
            head = load_model(self)
            tracking = read_tracking(self.out / "tracking.npz")
            path = export_glb_cli(self, head, tracking, dest) if self.format == "glb" else export_obj_cli(self, head, tracking, dest)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def load_model(cfg: Export):
    from avatar.models import load_head_model

    if cfg.model != "flame" and cfg.model_path is not None:
        raise AvatarError("--model-path is only used with --model flame")
    return load_head_model(cfg.model, path=None if cfg.model_path is None else str(cfg.model_path))


# ---------------------------------------------------------------------------------------------
# PROVISIONAL: the tracker's tracking.npz and the trained avatar's folder do not exist yet. These
# readers assume the layout below; adjust them (only them) when those stages land.
#   tracking.npz: shape [S] or [1, S]; per frame [N, ...]: expression, jaw, neck, eyes [N, 2, 3],
#                 global_orient, transl; fps (scalar); optional viewmats [N, 4, 4], Ks [N, 3, 3].
#   avatar/gaussians.npz: means, quats (wxyz), scales (linear), opacities [0, 1], sh_dc[, sh_rest].
# ---------------------------------------------------------------------------------------------
_PER_FRAME = ("expression", "jaw", "neck", "eyes", "global_orient", "transl")


def read_tracking(path: Path) -> dict[str, np.ndarray] | None:
    """The tracked parameters, or ``None`` when the folder has no tracking yet."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            tracking = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as e:
        raise AvatarError(f"{path} is unreadable ({e}); re-run `avatar track`") from e
    counts = {len(tracking[k]) for k in _PER_FRAME if k in tracking}
    if len(counts) != 1:
        raise AvatarError(f"{path}: per-frame arrays disagree on the frame count ({sorted(counts)}); re-run `avatar track`")
    return tracking


def _frame_params(tracking: dict[str, np.ndarray], index: slice | int) -> dict[str, np.ndarray]:
    out = {k: tracking[k][index] for k in _PER_FRAME if k in tracking}
    if isinstance(index, int):
        out = {k: v[None] for k, v in out.items()}
    return out


def _shape(tracking: dict[str, np.ndarray] | None) -> np.ndarray | None:
    if tracking is None or "shape" not in tracking:
        return None
    return tracking["shape"].reshape(1, -1)


def _baked_texture(head, tracking: dict[str, np.ndarray], out: Path, size: int) -> np.ndarray | None:
    """Bake from OUT/frames/ when the tracking has cameras and the frames are cached; else None."""
    from PIL import Image

    from avatar.export.texture import bake_texture_from_frames

    frames_dir = out / "frames"
    files = sorted(p for p in frames_dir.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if frames_dir.is_dir() else []
    n = len(tracking["expression"]) if "expression" in tracking else 0
    if "viewmats" not in tracking or "Ks" not in tracking or len(files) != n or n == 0:
        print("no cached frames with cameras: using the default texture")
        return None
    frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    bake = bake_texture_from_frames(head, frames, tracking["viewmats"], tracking["Ks"], _frame_params(tracking, slice(None)),
                                    size, shape=_shape(tracking))
    return bake.image


def export_glb_cli(cfg: Export, head, tracking: dict[str, np.ndarray] | None, dest: Path) -> Path:
    from avatar.export.gltf import GltfAnimation, export_glb

    animation = texture = None
    if tracking is not None:
        if cfg.animation:
            animation = GltfAnimation(fps=float(tracking.get("fps", 30.0)), **_frame_params(tracking, slice(None)))
        texture = _baked_texture(head, tracking, cfg.out, cfg.texture_size)
    info = export_glb(dest / "head.glb", head, shape=_shape(tracking), texture=texture, animation=animation,
                      texture_size=cfg.texture_size)
    print(f"{info.num_vertices} vertices, {len(info.target_names)} morph targets, {head.num_joints} joints, "
          f"{info.num_animation_frames} animation frames")
    return info.path


def export_obj_cli(cfg: Export, head, tracking: dict[str, np.ndarray] | None, dest: Path) -> Path:
    from avatar.export.obj import export_obj

    params: dict[str, np.ndarray] = {}
    if cfg.frame is not None:
        if tracking is None:
            raise AvatarError(f"--frame {cfg.frame} needs {cfg.out / 'tracking.npz'}; run `avatar track` first")
        n = len(next(iter(_frame_params(tracking, slice(None)).values())))
        if not 0 <= cfg.frame < n:
            raise AvatarError(f"--frame {cfg.frame} is out of range: the tracking has frames 0..{n - 1}")
        params = _frame_params(tracking, cfg.frame)
    shape = _shape(tracking)
    if shape is not None:
        params["shape"] = shape
    texture = _baked_texture(head, tracking, cfg.out, cfg.texture_size) if tracking is not None else None
    name = "head.obj" if cfg.frame is None else f"head_frame{cfg.frame:05d}.obj"
    return export_obj(dest / name, head, params=params, texture=texture, texture_size=cfg.texture_size).obj


def export_ply(out: Path, dest: Path, frame: int | None) -> Path:
    from avatar.export.ply import write_gaussians_ply

    src = out / "avatar" / "gaussians.npz"
    if not src.exists():
        raise AvatarError(f"--format ply needs a trained avatar ({src} not found); run `avatar train {out}` first")
    if frame is not None:
        raise AvatarError("--frame with --format ply needs the avatar representation's posing, which is not available yet")
    with np.load(src) as g:
        keys = ("means", "quats", "scales", "opacities", "sh_dc")
        missing = [k for k in keys if k not in g.files]
        if missing:
            raise AvatarError(f"{src} lacks {', '.join(missing)}; re-run `avatar train`")
        arrays = {k: g[k] for k in keys}
        arrays["sh_rest"] = g["sh_rest"] if "sh_rest" in g.files else None
    path = dest / "gaussians.ply"
    n = write_gaussians_ply(path, **arrays)
    print(f"{n} Gaussians")
    return path
