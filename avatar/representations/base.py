"""The representation interface: appearance bound to a head model's output.

A representation is an ``nn.Module`` that maps a posed head (``HeadOutput`` or raw vertices) to
:class:`Splats`, exactly what :func:`avatar.render.rasterize` draws. Training policy (densify,
prune, schedules) is not here: a Strategy edits a representation only through the small
per-primitive protocol below (``primitive_parameters`` / ``primitive_buffers`` /
``split_values``), so other kinds (neural points, hash-table blendshapes) plug in by
implementing ``forward``, ``config`` and, if they can be densified, that protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from avatar.errors import AvatarError

#: Per-frame key of the tracked body motion (``[N, 3]`` world translation of the shoulders away from
#: their mean training position; :func:`avatar.training.data.body_motion`), beside the head's
#: parameters. Representations with body-fixed parts take it as ``body``.
BODY = "body"


@dataclass(frozen=True)
class Splats:
    """Gaussians for a batch of B frames (geometry per frame, appearance shared).

    Attributes:
        means: ``[B, N, 3]`` world positions.
        quats: ``[B, N, 4]`` wxyz rotations.
        scales: ``[B, N, 3]`` linear standard deviations.
        opacities: ``[N]`` in [0, 1].
        colors: ``[N, K, 3]`` SH coefficients when ``sh_degree`` is set, else ``[N, 3]`` RGB; or
            ``[B, N, K, 3]`` / ``[B, N, 3]`` when they differ per frame (SH turned with the head).
        sh_degree: degree to evaluate (<= the stored degree), or None for plain RGB.
        normals: ``[B, N, 3]`` unit surface normals of Gaussians that belong to a closed surface,
            zero rows for the others, or None. :func:`render_splats` fades a Gaussian whose
            normal faces away from the camera (:func:`facing_factor`), so the back of a head
            does not show through its face and is free to look like the back of a head.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor
    sh_degree: int | None
    normals: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[1])

    @property
    def per_frame_colors(self) -> bool:
        return self.colors.dim() == (3 if self.sh_degree is None else 4)

    def frame_colors(self, b: int) -> Tensor:
        """Frame ``b``'s colours: ``[N, K, 3]`` or ``[N, 3]``."""
        return self.colors[b] if self.per_frame_colors else self.colors

    def frame(self, b: int) -> dict[str, Any]:
        """Keyword arguments for :func:`avatar.render.rasterize` for frame ``b``."""
        return dict(means=self.means[b], quats=self.quats[b], scales=self.scales[b],
                    opacities=self.opacities, colors=self.frame_colors(b), sh_degree=self.sh_degree)  # fmt: skip


class Representation(nn.Module):
    """Base class. Subclasses set ``kind``, implement ``forward`` and ``config``, and are
    rebuilt by ``cls.from_config(config, state)`` when loaded (see :mod:`.io`)."""

    kind: ClassVar[str] = "base"
    # Evaluation without gradient may use fused CPU kernels where a representation has them: the
    # same result to float rounding, not to the bit, so training (whose figures must reproduce)
    # leaves it off and a loaded bundle, which is for showing, turns it on (load_avatar).
    inference_kernels: bool = False

    def forward(self, vertices: Tensor, sh_degree: int | None = None, head_pose: Tensor | None = None,
                body: Tensor | None = None, expression: Tensor | None = None) -> Splats:  # fmt: skip
        """``vertices [B, V, 3]``; ``head_pose [B, 4, 4]`` the frames' head-to-world transforms in
        the training coordinates, or None for the head at rest; ``body [B, 3]`` the tracked body
        motion (:func:`avatar.training.data.body_motion`), or None; ``expression [B, E]`` the
        frames' expression weights, or None (representations may ignore the last three)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (sizes come from the tensors)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> "Representation":
        raise NotImplementedError

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Learnable tensors not indexed by primitive (one optimiser group each; densification
        leaves them alone)."""
        return {}

    # --- per-primitive protocol used by densification strategies ----------------------------
    def primitive_parameters(self) -> dict[str, nn.Parameter]:
        """Learnable tensors whose first dimension indexes primitives (optimiser param groups)."""
        raise AvatarError(f"{type(self).__name__} cannot be densified")

    def primitive_buffers(self) -> dict[str, Tensor]:
        """Non-learnable per-primitive tensors (kept in step with the parameters)."""
        return {}

    def set_primitives(self, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> None:
        """Replace every per-primitive tensor (after a densify/prune edit): ``params`` as new
        parameters, ``buffers`` as plain tensors, under the names the two dicts give."""
        for name, value in params.items():
            setattr(self, name, nn.Parameter(value.detach().contiguous()))
        for name, value in buffers.items():
            setattr(self, name, value.contiguous())

    def split_values(self, idx: Tensor, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Values of the ``n * len(idx)`` primitives that replace primitives ``idx`` when split."""
        raise AvatarError(f"{type(self).__name__} cannot be densified")

    def world_scale_max(self, vertices: Tensor) -> Tensor:
        """``[N]`` largest world-space standard deviation of each primitive for ``[1, V, 3]``."""
        return self.forward(vertices).scales[0].amax(-1)


# cos(normal, direction to the camera) below which a surface Gaussian is hidden, and above which it
# is fully drawn. A little below 0, so that Gaussians on edge-on triangles (a silhouette, where
# hair volume sits) still draw; the back of the head faces the camera at about -0.7 to -1.
FACING_HIDDEN, FACING_SHOWN = -0.3, 0.0


def facing_factor(means: Tensor, normals: Tensor, viewmat: Tensor) -> Tensor:
    """``[N]`` opacity factor in [0, 1] for Gaussians at ``means [N, 3]`` with ``normals [N, 3]``
    seen by the world-to-camera ``viewmat [4, 4]``: 1 facing the camera, 0 facing away (a
    smoothstep between :data:`FACING_HIDDEN` and :data:`FACING_SHOWN` of the cosine), 1 where the
    normal is zero."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    eye = -(R.T @ t)
    to_cam = eye - means
    cos = (normals * to_cam).sum(-1) / to_cam.norm(dim=-1).clamp_min(1e-12)
    x = ((cos - FACING_HIDDEN) / (FACING_SHOWN - FACING_HIDDEN)).clamp(0.0, 1.0)
    factor = x * x * (3.0 - 2.0 * x)
    return torch.where(normals.abs().sum(-1) > 0, factor, torch.ones_like(factor))


def render_splats(
    splats: Splats,
    viewmats: Tensor,  # [B, 4, 4] or [4, 4] (shared)
    Ks: Tensor,  # [B, 3, 3] or [3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,  # [3]
    options: Any = None,
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Render each frame of ``splats`` with its camera: ``(rgb [B, H, W, 3], alpha [B, H, W, 1],
    metas)`` (one rasterizer call per frame: the geometry differs per frame)."""
    from avatar.render import RasterOptions, rasterize

    B = splats.batch_size
    viewmats = viewmats.expand(B, 4, 4) if viewmats.dim() == 2 else viewmats
    Ks = Ks.expand(B, 3, 3) if Ks.dim() == 2 else Ks
    opts = options if options is not None else RasterOptions()
    images, alphas, metas = [], [], []
    for b in range(B):
        bg = None if background is None else background.to(splats.means)[None]
        frame = splats.frame(b)
        if splats.normals is not None:
            frame["opacities"] = frame["opacities"] * facing_factor(splats.means[b], splats.normals[b], viewmats[b].to(splats.means))
        img, alpha, meta = rasterize(
            **frame, viewmats=viewmats[b : b + 1].to(splats.means), Ks=Ks[b : b + 1].to(splats.means),
            width=width, height=height, backgrounds=bg, options=opts,
        )  # fmt: skip
        images.append(img[0])
        alphas.append(alpha[0])
        metas.append(meta)
    return torch.stack(images), torch.stack(alphas), metas
