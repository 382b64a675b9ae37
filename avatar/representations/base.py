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


@dataclass(frozen=True)
class Splats:
    """Gaussians for a batch of B frames (geometry per frame, appearance shared).

    Attributes:
        means: ``[B, N, 3]`` world positions.
        quats: ``[B, N, 4]`` wxyz rotations.
        scales: ``[B, N, 3]`` linear standard deviations.
        opacities: ``[N]`` in [0, 1].
        colors: ``[N, K, 3]`` SH coefficients when ``sh_degree`` is set, else ``[N, 3]`` RGB.
        sh_degree: degree to evaluate (<= the stored degree), or None for plain RGB.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor
    sh_degree: int | None

    @property
    def batch_size(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[1])

    def frame(self, b: int) -> dict[str, Any]:
        """Keyword arguments for :func:`avatar.render.rasterize` for frame ``b``."""
        return dict(means=self.means[b], quats=self.quats[b], scales=self.scales[b],
                    opacities=self.opacities, colors=self.colors, sh_degree=self.sh_degree)  # fmt: skip


class Representation(nn.Module):
    """Base class. Subclasses set ``kind``, implement ``forward`` and ``config``, and are
    rebuilt by ``cls.from_config(config, state)`` when loaded (see :mod:`.io`)."""

    kind: ClassVar[str] = "base"

    def forward(self, vertices: Tensor, sh_degree: int | None = None, head_pose: Tensor | None = None) -> Splats:
        """``vertices [B, V, 3]``; ``head_pose [B, 4, 4]`` the frames' head-to-world transforms in
        the training coordinates, or None for the head at rest (representations may ignore it)."""
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
        """Replace every per-primitive tensor (after a densify/prune edit)."""
        raise AvatarError(f"{type(self).__name__} cannot be densified")

    def split_values(self, idx: Tensor, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Values of the ``n * len(idx)`` primitives that replace primitives ``idx`` when split."""
        raise AvatarError(f"{type(self).__name__} cannot be densified")

    def world_scale_max(self, vertices: Tensor) -> Tensor:
        """``[N]`` largest world-space standard deviation of each primitive for ``[1, V, 3]``."""
        return self.forward(vertices).scales[0].amax(-1)


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
        img, alpha, meta = rasterize(
            **splats.frame(b), viewmats=viewmats[b : b + 1].to(splats.means), Ks=Ks[b : b + 1].to(splats.means),
            width=width, height=height, backgrounds=bg, options=opts,
        )  # fmt: skip
        images.append(img[0])
        alphas.append(alpha[0])
        metas.append(meta)
    return torch.stack(images), torch.stack(alphas), metas
