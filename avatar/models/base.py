"""The head-model interface every model implements (AnnyHead, FlameHead, ...).

A head model is an ``nn.Module``: loading is separate from evaluating, the assets live in
buffers, and ``forward`` takes named, batched parameter tensors and returns a small typed
:class:`HeadOutput`. Conventions: metres, +Y up, the face looks along +Z; batch first.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: The per-frame arguments of :meth:`HeadModel.forward` (``shape`` is per identity, not per frame):
#: what a tracking holds per frame, what a trained avatar is driven by, what an animation exports.
FRAME_PARAMS = ("expression", "jaw", "neck", "eyes", "global_orient", "transl")


@dataclass(frozen=True)
class HeadOutput:
    """What a head model returns for a batch of parameter sets.

    Attributes:
        vertices: ``[B, V, 3]`` posed vertices (world, metres).
        joints: ``[B, J, 3]`` posed joint positions.
        joint_transforms: ``[B, J, 4, 4]`` rest -> posed transforms used for skinning
            (``v_posed = sum_j w_vj T_j v_rest`` before pose correctives).
        landmarks: ``[B, L, 3]`` landmark positions from the model's barycentric landmark
            embedding, or ``None`` when the model has none.
        rest_vertices: ``[B or 1, V, 3]`` identity + expression applied, before any pose.
    """

    vertices: Tensor
    joints: Tensor
    joint_transforms: Tensor
    landmarks: Tensor | None
    rest_vertices: Tensor


class HeadModel(nn.Module):
    """Base class. Subclasses fill the buffers/lists below and implement ``forward``.

    Buffers:
        faces: ``[F, 3]`` int64 triangle vertex indices.
        uvs: ``[T, 2]`` texture coordinates (origin bottom-left, as in OBJ/anny), or empty.
        uv_faces: ``[F, 3]`` int64 per-corner indices into ``uvs`` (seams split here).
        skin_weights: ``[V, J]`` linear-blend-skinning weights (rows sum to 1).
        landmark_faces: ``[L]`` int64 triangle index of each landmark (empty when none).
        landmark_bary: ``[L, 3]`` barycentric coordinates of each landmark in its triangle.
    Lists:
        expression_names: one name per expression channel (ARKit names for AnnyHead).
        shape_names: one name per identity channel.
        joint_names, joint_parents: the skeleton (parent -1 for the root).
    """

    name: str = "head"
    expression_names: list[str]
    shape_names: list[str]
    joint_names: list[str]
    joint_parents: list[int]

    faces: Tensor
    uvs: Tensor
    uv_faces: Tensor
    skin_weights: Tensor
    landmark_faces: Tensor
    landmark_bary: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("landmark_faces", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("landmark_bary", torch.zeros(0, 3), persistent=False)

    # --- sizes -----------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return int(self.skin_weights.shape[0])

    @property
    def num_expressions(self) -> int:
        return len(self.expression_names)

    @property
    def num_shape(self) -> int:
        return len(self.shape_names)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def dtype(self) -> torch.dtype:
        return self.skin_weights.dtype

    @property
    def device(self) -> torch.device:
        return self.skin_weights.device

    # --- landmarks -------------------------------------------------------------------------
    def set_landmark_embedding(self, faces: Tensor, bary: Tensor) -> None:
        """Attach a barycentric landmark embedding: ``faces [L]`` triangle ids, ``bary [L, 3]``."""
        faces = torch.as_tensor(faces, dtype=torch.long, device=self.device)
        bary = torch.as_tensor(bary, dtype=self.dtype, device=self.device)
        if faces.ndim != 1 or bary.shape != (faces.shape[0], 3):
            raise ValueError(f"expected faces [L] and bary [L, 3], got {tuple(faces.shape)} and {tuple(bary.shape)}")
        if faces.numel() and (faces.min() < 0 or faces.max() >= self.faces.shape[0]):
            raise ValueError("landmark triangle index out of range")
        self.landmark_faces = faces
        self.landmark_bary = bary

    def landmarks_from_vertices(self, vertices: Tensor) -> Tensor | None:
        """``[B, V, 3]`` -> ``[B, L, 3]`` by barycentric interpolation (``None`` without an embedding)."""
        if self.landmark_faces.numel() == 0:
            return None
        corners = vertices[:, self.faces[self.landmark_faces]]  # [B, L, 3, 3]
        return (corners * self.landmark_bary[None, :, :, None]).sum(-2)

    # --- parameters ------------------------------------------------------------------------
    def zero_params(self, batch_size: int = 1) -> dict[str, Tensor]:
        """A dict of all-zero parameters (the neutral head) for ``forward(**params)``."""
        z = lambda *s: torch.zeros(batch_size, *s, dtype=self.dtype, device=self.device)  # noqa: E731
        return dict(
            shape=z(self.num_shape), expression=z(self.num_expressions), jaw=z(3), neck=z(3),
            eyes=z(2, 3), global_orient=z(3), transl=z(3),
        )

    def _batch_size(self, *tensors: Tensor | None) -> int:
        sizes = {t.shape[0] for t in tensors if t is not None}
        sizes.discard(1)
        if len(sizes) > 1:
            raise ValueError(f"parameter batch sizes differ: {sorted(sizes)} (each must be B or 1)")
        return sizes.pop() if sizes else 1

    def _param(self, x: Tensor | None, shape: tuple[int, ...], name: str) -> Tensor:
        """A parameter as ``[B or 1, *shape]``; ``None`` means zeros. Checks the trailing shape."""
        if x is None:
            return torch.zeros(1, *shape, dtype=self.dtype, device=self.device)
        if tuple(x.shape[1:]) != tuple(shape) or x.ndim != len(shape) + 1:
            raise ValueError(f"{name} must have shape [B, {', '.join(map(str, shape))}], got {tuple(x.shape)}")
        return x.to(dtype=self.dtype)

    def forward(
        self,
        shape: Tensor | None = None,
        expression: Tensor | None = None,
        jaw: Tensor | None = None,
        neck: Tensor | None = None,
        eyes: Tensor | None = None,
        global_orient: Tensor | None = None,
        transl: Tensor | None = None,
    ) -> HeadOutput:
        """Evaluate the model.

        Args (each ``[B, ...]`` or ``[1, ...]`` to broadcast, or ``None`` for zeros):
            shape: ``[B, num_shape]`` identity coefficients (zero = the model's mean head).
            expression: ``[B, num_expressions]`` expression coefficients.
            jaw: ``[B, 3]`` jaw rotation (axis-angle, world-aligned axes, about the jaw joint).
            neck: ``[B, 3]`` head-on-neck rotation (axis-angle).
            eyes: ``[B, 2, 3]`` left and right eyeball rotations (axis-angle).
            global_orient: ``[B, 3]`` rotation of the whole head about the model origin.
            transl: ``[B, 3]`` translation applied last.
        """
        raise NotImplementedError


def skin(vertices: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Linear blend skinning.

    Args:
        vertices: ``[B, V, 3]`` rest vertices.
        weights: ``[V, J]`` skinning weights.
        transforms: ``[B, J, 4, 4]`` per-joint rest -> posed transforms.
    Returns:
        ``[B, V, 3]`` skinned vertices.
    """
    return skin_vlast(vertices.transpose(1, 2), weights, transforms).transpose(1, 2)


def skin_vlast(vertices_t: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """:func:`skin` with vertices last: ``[B, 3, V]`` in and out.

    Why this layout and a hand-written backward: the blended 3x4 matrices become 12 contiguous
    ``[B, V]`` planes from one matmul, and applying them is three fused multiply-adds over whole
    planes. Autograd through that graph makes ~20 full-size passes (slices whose backward
    zero-fills copies, stacks, broadcast reductions); the explicit backward makes four. Per-vertex
    tiny 3x3 matmuls are slower still on CPU.
    """
    return _SkinVLast.apply(vertices_t, weights, transforms[:, :, :3, :])


class _SkinVLast(torch.autograd.Function):
    """out[b, r, v] = sum_c blend[b, r, c, v] * vh[b, c, v], blend = T[b, :, r, c]^T W^T."""

    @staticmethod
    def forward(ctx, vertices_t: Tensor, weights: Tensor, t34: Tensor) -> Tensor:
        b, j = t34.shape[:2]
        blend = torch.matmul(t34.reshape(b, j, 12).transpose(1, 2), weights.T).view(b, 3, 4, -1)
        out = blend[:, :, 3].clone()
        for k in range(3):
            out.addcmul_(blend[:, :, k], vertices_t[:, k, None])
        ctx.save_for_backward(vertices_t, weights, blend)
        ctx.t_shape = t34.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        vertices_t, weights, blend = ctx.saved_tensors
        b, j = ctx.t_shape[:2]
        grad_v = grad_w = grad_t = None
        if ctx.needs_input_grad[0]:
            # d out[r] / d v[k] = blend[r, k]: sum over the 3 output rows.
            grad_v = (grad[:, :, None, :] * blend[:, :, :3]).sum(1)
        if ctx.needs_input_grad[1]:
            raise NotImplementedError("skinning weights are not differentiable here")
        if ctx.needs_input_grad[2]:
            vh = torch.cat([vertices_t.expand(b, -1, -1), torch.ones_like(vertices_t[:, :1]).expand(b, 1, -1)], 1)
            outer = (grad[:, :, None, :] * vh[:, None, :, :]).reshape(b, 12, -1)  # [B, 12, V]
            grad_t = torch.matmul(outer, weights).transpose(1, 2).reshape(b, j, 3, 4)
        return grad_v, grad_w, grad_t


def global_transform(vertices: Tensor, global_orient: Tensor, transl: Tensor) -> Tensor:
    """Rotate ``[B, N, 3]`` points about the origin by ``[B, 3]`` axis-angle, then translate."""
    from avatar.models.rotations import axis_angle_to_matrix

    rot = axis_angle_to_matrix(global_orient)  # [B, 3, 3]
    return vertices @ rot.transpose(-1, -2) + transl[:, None, :]
