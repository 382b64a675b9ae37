"""What the viewer draws for a posed head: a shaded mesh, or Gaussian splats. Both take the posed
vertices ``[V, 3]`` and send only what changed (viser skips a mesh whose vertices are equal; the
splats re-send changed chunks only, see :mod:`avatar.viewer.splats`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from avatar.viewer.splats import ChunkedSplats

__all__ = ["SceneUpdate", "MeshScene", "SplatScene", "Deform", "splat_scene_from_representation"]

SKIN_RGB = (205, 160, 135)
EYE_RGB = (238, 238, 230)

# vertices [V, 3] -> means [N, 3], quats [N, 4] (wxyz), scales [N, 3]
Deform = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
# (posed vertices [V, 3], expression [1, E]) -> (means, quats, scales, rgb [N, 3]): for Gaussians whose
# shape and colour depend on the expression beyond the mesh (expression blendshapes).
ExpressionDeform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class SceneUpdate:
    """What one update queued for each client: array bytes and scene-node messages."""

    bytes_sent: int
    messages: int


def eye_vertex_mask(head) -> np.ndarray:
    """``[V]`` bool: vertices skinned mostly to an eye joint (the eyeballs)."""
    eye_joints = [i for i, name in enumerate(head.joint_names) if "eye" in name.lower()]
    if not eye_joints:
        return np.zeros(head.num_vertices, bool)
    return head.skin_weights[:, eye_joints].sum(1).detach().cpu().numpy() > 0.5


class MeshScene:
    """The head as two smooth-shaded meshes (skin, eyes), vertices updated in place."""

    def __init__(self, scene, head, name: str = "/avatar/mesh") -> None:
        faces = head.faces.detach().cpu().numpy().astype(np.int32)
        eye = eye_vertex_mask(head)
        eye_faces = eye[faces].all(1)
        self._parts = []  # (vertex ids, faces re-indexed, colour, node name)
        for part, mask, color in (("skin", ~eye_faces, SKIN_RGB), ("eyes", eye_faces, EYE_RGB)):
            f = faces[mask]
            if len(f) == 0:
                continue
            ids, local = np.unique(f, return_inverse=True)
            self._parts.append((ids, local.reshape(-1, 3).astype(np.int32), color, f"{name}/{part}"))
        self.scene = scene
        self._handles: list = []

    def update(self, vertices: Tensor, expression: Tensor | None = None) -> SceneUpdate:
        # ``expression`` is unused: the mesh shows it through its vertices.
        v = vertices.detach().cpu().numpy().astype(np.float32)
        sent = messages = 0
        for k, (ids, faces, color, node) in enumerate(self._parts):
            pv = v[ids]
            if k < len(self._handles):
                if np.array_equal(self._handles[k].vertices, pv):
                    continue
                self._handles[k].vertices = pv
            else:
                self._handles.append(self.scene.add_mesh_simple(node, pv, faces, color=color, flat_shading=False))
                sent += faces.nbytes
            sent += pv.nbytes
            messages += 1
        return SceneUpdate(sent, messages)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class SplatScene:
    """Gaussians moved with the mesh by ``deform`` and shown as viser splats.

    Args:
        scene: ``server.scene``.
        deform: posed vertices ``[V, 3]`` (and optionally ``index``) -> ``(means, quats, scales)``.
        rest_vertices: ``[V, 3]`` the neutral mesh (to lay out the chunks).
        rgb, opacities: ``[N, 3]``, ``[N]`` static appearance in [0, 1].
        chunk_size: Gaussians per re-sendable chunk.
        parent_face, faces: ``[N]`` triangle of each Gaussian and the ``[F, 3]`` triangles, when
            ``deform(vertices, index)`` can evaluate a subset: an update then evaluates only the
            Gaussians on triangles whose vertices moved since the last update.
        expression_deform: used instead of ``deform`` when an update gives the expression; it
            returns colours too, and every Gaussian is evaluated.
    """

    def __init__(self, scene, deform: Deform, rest_vertices: Tensor, rgb, opacities, chunk_size: int = 2048,
                 name: str = "/avatar/splats", parent_face: Tensor | None = None,
                 faces: Tensor | None = None, expression_deform: ExpressionDeform | None = None) -> None:  # fmt: skip
        self.deform = deform
        self.expression_deform = expression_deform
        self._last_expression: Tensor | None = None
        rest_means = deform(rest_vertices)[0]
        self.splats = ChunkedSplats(scene, name, rest_means, rgb, opacities, chunk_size=chunk_size)
        self.parent_face, self.faces = parent_face, faces
        self._last: Tensor | None = None
        self.last_evaluated = 0

    @property
    def num_gaussians(self) -> int:
        return self.splats.num_gaussians

    def _moved(self, vertices: Tensor) -> Tensor | None:
        """Indices of Gaussians whose triangle moved, or None for all."""
        if self.parent_face is None or self.faces is None or self._last is None:
            return None
        moved_faces = (vertices != self._last).any(1)[self.faces].any(1)
        moved = moved_faces[self.parent_face]
        count = int(moved.sum())
        if count > 0.6 * moved.numel():
            return None
        return torch.nonzero(moved).squeeze(1)

    def update(self, vertices: Tensor, expression: Tensor | None = None) -> SceneUpdate:
        """Move the Gaussians to ``vertices [V, 3]``; with ``expression [1, E]`` and an
        ``expression_deform``, also change their shape and colour with the expression."""
        vertices = vertices.detach()
        if self.expression_deform is not None and expression is not None:
            expression = expression.detach().reshape(1, -1)
            if (self._last is not None and self._last_expression is not None and torch.equal(vertices, self._last)
                    and torch.equal(expression, self._last_expression)):  # fmt: skip
                return SceneUpdate(0, 0)
            means, quats, scales, rgb = self.expression_deform(vertices, expression)
            info = self.splats.update(means, quats, scales, rgb=rgb)
            self.last_evaluated = self.num_gaussians
            self._last, self._last_expression = vertices.clone(), expression.clone()
            return SceneUpdate(info.bytes_sent, info.chunks_sent)
        index = self._moved(vertices)
        if index is None:
            means, quats, scales = self.deform(vertices)
            info = self.splats.update(means, quats, scales)
            self.last_evaluated = self.num_gaussians
        elif index.numel() == 0:
            return SceneUpdate(0, 0)
        else:
            means, quats, scales = self.deform(vertices, index)
            info = self.splats.update(means, quats, scales, index=index.numpy())
            self.last_evaluated = int(index.numel())
        self._last = vertices.clone()
        return SceneUpdate(info.bytes_sent, info.chunks_sent)

    def remove(self) -> None:
        self.splats.remove()


_SH_C0 = 0.28209479177387814


def splat_scene_from_representation(scene, representation, rest_vertices: Tensor, chunk_size: int = 2048) -> SplatScene:
    """A :class:`SplatScene` for a trained representation (``avatar.representations``): its
    ``forward(vertices [1, V, 3]) -> Splats``; colours from the degree-0 SH (view-independent).
    A representation with expression blendshapes (``expr_rank`` > 0) also gets the expression."""

    def rgb_of(s) -> np.ndarray:
        colors = s.frame_colors(0)  # [N, 3] or [N, K, 3]
        rgb = (0.5 + _SH_C0 * colors[:, 0]) if colors.dim() == 3 else colors
        return rgb.clamp(0, 1).cpu().numpy()

    with torch.no_grad():
        s = representation(rest_vertices[None], sh_degree=0)
        rgb = rgb_of(s)
        opacities = s.opacities.detach().cpu().numpy()

    def deform(vertices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            out = representation(vertices[None], sh_degree=0)
        return out.means[0], out.quats[0], out.scales[0]

    def expression_deform(vertices: Tensor, expression: Tensor) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
        with torch.no_grad():
            out = representation(vertices[None], sh_degree=0, expression=expression)
        return out.means[0], out.quats[0], out.scales[0], rgb_of(out)

    expressive = bool(getattr(representation, "expr_rank", 0))
    return SplatScene(scene, deform, rest_vertices, rgb, opacities, chunk_size=chunk_size,
                      expression_deform=expression_deform if expressive else None)  # fmt: skip
