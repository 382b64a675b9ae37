"""Saving and loading representations and the avatar bundle (``OUT/avatar/``).

Bundle layout (self-describing):
    avatar.json                  format, representation kind + config, head model name (and
                                 path for FLAME), identity ``shape``, training config, metrics
    representation.safetensors   the representation's tensors (its state_dict)
    performance.safetensors      optional: per-frame parameters for self-reenactment: the
                                 tracking, with each frame's rigid pose as refined (training
                                 frames during training, held-out frames against the finished
                                 avatar)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from avatar.errors import AvatarError
from avatar.models.base import FRAME_PARAMS
from avatar.representations.base import BODY, Representation, Splats, render_splats
from avatar.representations.hash_blendshapes import HashBlendshapes
from avatar.representations.mesh_gaussians import MeshGaussians
from avatar.representations.neural_points import NeuralPoints
from avatar.utils.files import atomic_folder, atomic_path

BUNDLE_FORMAT = 1
REPRESENTATIONS: dict[str, type[Representation]] = {MeshGaussians.kind: MeshGaussians, HashBlendshapes.kind: HashBlendshapes,
                                                     NeuralPoints.kind: NeuralPoints}


def save_representation(rep: Representation, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``rep`` to a safetensors file (atomically); its config goes in the metadata."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in rep.state_dict().items()}
    meta = {"config": json.dumps(rep.config()), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_representation(path: str | Path, device: str | torch.device = "cpu") -> Representation:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path}: no representation file")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "null") or "null")
    if not isinstance(config, dict) or config.get("kind") not in REPRESENTATIONS:
        raise AvatarError(f"{path}: unknown or missing representation kind ({config!r})")
    rep = REPRESENTATIONS[config["kind"]].from_state(config, load_file(str(path)))
    return rep.to(device)


@dataclass
class Avatar:
    """A loaded bundle: representation + head model + identity. ``render`` draws frames from
    per-frame head parameters (expression, jaw, neck, eyes, global_orient, transl; each
    ``[B, ...]``, missing ones are zeros)."""

    representation: Representation
    head: Any
    shape: Tensor  # [S]
    config: dict[str, Any]
    performance: dict[str, Tensor] = field(default_factory=dict)
    path: Path | None = None

    def vertices(self, params: dict[str, Tensor]) -> Tensor:
        given = {k: v.to(self.shape) for k, v in params.items() if k in FRAME_PARAMS}
        return self.head(shape=self.shape[None], **given).vertices

    def splats(self, params: dict[str, Tensor], sh_degree: int | None = None) -> Splats:
        """With ``global_orient``/``transl`` in ``params`` they are a pose in the coordinates the
        avatar was trained in (tracked, or a driver's placed there) and body-fixed hair stays where
        the body was (moved by ``body [B, 3]``, the tracked body motion, when given); without them
        the head is at rest at the origin and the body with it (the pose of an orbit render or an
        export). See :mod:`avatar.representations.mesh_gaussians`."""
        from avatar.representations.geometry import params_pose

        verts = self.vertices(params)
        pose = params_pose({k: v.to(verts) for k, v in params.items() if k in ("global_orient", "transl")}, verts.shape[0])
        body = params.get(BODY) if pose is not None else None
        expr = params.get("expression")
        return self.representation(verts, sh_degree=sh_degree, head_pose=pose, body=None if body is None else body.to(verts),
                                   expression=None if expr is None else expr.to(verts))  # fmt: skip

    @torch.no_grad()
    def render(
        self, params: dict[str, Tensor], viewmats: Tensor, Ks: Tensor, width: int, height: int,
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(rgb [B, H, W, 3], alpha [B, H, W, 1])``."""
        bg = torch.tensor(background, dtype=torch.float32, device=self.shape.device)
        rgb, alpha, _ = render_splats(self.splats(params), viewmats, Ks, width, height, bg)
        return rgb, alpha


def save_avatar(
    folder: str | Path,
    rep: Representation,
    *,
    model: str,
    shape: Tensor,
    model_path: str | None = None,
    extra: dict[str, Any] | None = None,
    performance: dict[str, Tensor] | None = None,
) -> Path:
    """Write a bundle to ``folder``, published whole (:func:`~avatar.utils.files.atomic_folder`):
    an interrupted write leaves the previous bundle as it was, never a mix of old and new files."""
    desc = {
        "format": BUNDLE_FORMAT,
        "representation": rep.config(),
        "model": model,
        "model_path": model_path,
        "shape": [float(x) for x in shape.detach().cpu().reshape(-1)],
        **(extra or {}),
    }
    with atomic_folder(folder) as tmp:
        save_representation(rep, tmp / "representation.safetensors")
        if performance:
            save_file({k: v.detach().cpu().contiguous() for k, v in performance.items()}, str(tmp / "performance.safetensors"))
        with open(tmp / "avatar.json", "w") as f:
            json.dump(desc, f, indent=1)
    return Path(folder)


def load_avatar(path: str | Path, device: str | torch.device = "cpu", model_path: str | Path | None = None) -> Avatar:
    """Load a bundle folder (``OUT/avatar`` or ``OUT``). ``model_path``: its FLAME file, where it
    is no longer where the avatar was trained with it (a file with other content is refused).

    >>> av = load_avatar("out/avatar")                                       # doctest: +SKIP
    >>> rgb, alpha = av.render({"transl": t}, viewmat, K, 512, 512)          # doctest: +SKIP
    """
    from avatar.models import load_head_model

    folder = Path(path)
    if not (folder / "avatar.json").is_file() and (folder / "avatar" / "avatar.json").is_file():
        folder = folder / "avatar"
    desc_file = folder / "avatar.json"
    if not desc_file.is_file():
        raise AvatarError(f"{path}: not an avatar bundle (no avatar.json); run `avatar train` first")
    desc = json.loads(desc_file.read_text())
    if desc.get("format") != BUNDLE_FORMAT:
        raise AvatarError(f"{desc_file}: bundle format {desc.get('format')} is not {BUNDLE_FORMAT}")
    rep = load_representation(folder / "representation.safetensors", device)
    rep.inference_kernels = True  # for showing: fused kernels where the representation has them
    given = None if model_path is None else str(model_path)
    head = load_head_model(desc["model"], given or desc.get("model_path"), sha256=desc.get("model_sha256") or None).to(device)
    shape = torch.tensor(desc["shape"], dtype=head.dtype, device=device)
    perf_file = folder / "performance.safetensors"
    perf = {k: v.to(device) for k, v in load_file(str(perf_file)).items()} if perf_file.is_file() else {}
    return Avatar(rep, head, shape, desc, perf, folder)
