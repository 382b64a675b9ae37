"""`avatar show-model`: render a head model on the CPU (shaded), with chosen expressions and pose."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from avatar.errors import AvatarError


@dataclass
class ShowModel:
    """Render the head model (default AnnyHead) to an image: look at it, its expressions and pose."""

    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("head.png")
    """Image to write (.png or .jpg)."""
    model: Literal["anny", "flame"] = "anny"
    """Head model: the built-in AnnyHead (CC0) or a FLAME .pkl given with --model-path."""
    model_path: Path | None = None
    """FLAME .pkl file (FLAME 2020/2023 or the CC-BY-4.0 FLAME 2023 Open); only with --model flame."""
    expression: tuple[str, ...] = ()
    """Expression channels as NAME=VALUE, e.g. jawOpen=0.8 mouthSmileLeft=1 (ARKit names for anny)."""
    jaw: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Jaw rotation, axis-angle in radians (x opens the mouth)."""
    neck: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Head-on-neck rotation, axis-angle in radians."""
    yaw: float = 0.0
    """Camera azimuth in degrees around the head (0 = frontal, positive = toward the subject's left)."""
    pitch: float = 5.0
    """Camera elevation in degrees."""
    size: int = 512
    """Image width and height in pixels."""
    fov: float = 20.0
    """Vertical field of view in degrees."""

    def run(self) -> None:
        check_numbers(self)  # before the model loads
        image = render_head(load_model(self), self)
        write_image(self.output, image)
        print(f"wrote {self.output}")


def parse_expression(items: tuple[str, ...], names: list[str]) -> dict[str, float]:
    """``("jawOpen=0.8", ...)`` -> ``{"jawOpen": 0.8}``, with errors that list the valid names."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise AvatarError(f"expression {item!r} must be NAME=VALUE, e.g. jawOpen=0.8")
        if name not in names:
            close = [n for n in names if n.lower().startswith(name.lower()[:4])][:8]
            hint = f" (did you mean: {', '.join(close)})" if close else f"; valid names: {', '.join(names[:12])}, ..."
            raise AvatarError(f"unknown expression channel {name!r}{hint}")
        try:
            out[name] = float(value)
        except ValueError as e:
            raise AvatarError(f"expression value {value!r} for {name} is not a number") from e
        if not math.isfinite(out[name]):
            raise AvatarError(f"expression {item!r}: the value must be a finite number, e.g. {name}=0.8")
    return out


def check_numbers(cfg: ShowModel) -> None:
    """Pose and camera values must be finite (a NaN renders an empty image without a word), the
    field of view an angle a camera can have."""
    for flag, values in (("--jaw", cfg.jaw), ("--neck", cfg.neck), ("--yaw", (cfg.yaw,)), ("--pitch", (cfg.pitch,)),
                         ("--fov", (cfg.fov,))):  # fmt: skip
        if not all(math.isfinite(v) for v in values):
            raise AvatarError(f"{flag} {' '.join(str(v) for v in values)}: values must be finite numbers")
    if not 1.0 <= cfg.fov <= 170.0:
        raise AvatarError(f"--fov {cfg.fov} is out of range (1..170 degrees)")


def load_model(cfg: ShowModel):
    from avatar.models import load_head_model

    if cfg.model != "flame" and cfg.model_path is not None:
        raise AvatarError("--model-path is only used with --model flame")
    return load_head_model(cfg.model, path=None if cfg.model_path is None else str(cfg.model_path))


def render_head(head, cfg: ShowModel) -> np.ndarray:
    """Render ``head`` as ``cfg`` says (expression, jaw, neck, camera): ``[S, S, 3]`` float32."""
    import torch

    from avatar.render.mesh import intrinsics, orbit_viewmat, render_mesh

    if cfg.size < 16 or cfg.size > 4096:
        raise AvatarError(f"--size {cfg.size} is out of range (16..4096)")
    weights = parse_expression(cfg.expression, head.expression_names)
    expr = torch.zeros(1, head.num_expressions)
    for name, value in weights.items():
        expr[0, head.expression_names.index(name)] = value
    with torch.no_grad():
        out = head(expression=expr, jaw=torch.tensor([cfg.jaw]), neck=torch.tensor([cfg.neck]))
    v = out.vertices[0].double().numpy()
    f = head.faces.numpy()
    centre = 0.5 * (v.min(0) + v.max(0))
    extent = float(np.linalg.norm(v.max(0) - v.min(0)))
    distance = 0.5 * extent / np.tan(np.radians(cfg.fov) / 2.0)
    view = orbit_viewmat(centre, distance, cfg.yaw, cfg.pitch)
    colors = eye_colors(head, v.shape[0])
    return render_mesh(v, f, view, intrinsics(cfg.size, cfg.size, cfg.fov), cfg.size, cfg.size, vertex_colors=colors)


def eye_colors(head, n: int) -> np.ndarray:
    """Skin everywhere, eyeballs light (vertices skinned mostly to an eye joint)."""
    from avatar.render.mesh import SKIN

    colors = np.tile(SKIN, (n, 1))
    eye_joints = [i for i, name in enumerate(head.joint_names) if "eye" in name]
    if eye_joints:
        w = head.skin_weights[:, eye_joints].sum(1).double().numpy()
        colors[w > 0.5] = (0.93, 0.93, 0.9)
    return colors


def write_image(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from avatar.utils.files import atomic_path

    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise AvatarError(f"output {path} must end in .png or .jpg")
    with atomic_path(path) as tmp:
        Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(tmp)
