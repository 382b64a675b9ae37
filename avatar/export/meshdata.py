"""What every mesh exporter needs from a head model, in plain numpy: seams split into export
vertices, smooth normals, the parts (skin / eyes / mouth) and the neutral rest pose.

Exporters (glTF, OBJ) and the texture baker share this so that a texel, a glTF vertex and an OBJ
vertex all agree on which model vertex and which UV they stand for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatar.models.base import HeadModel

__all__ = ["PART_NAMES", "ExportMesh", "split_seams", "face_parts", "build_export_mesh", "safe_normals", "evaluate"]

# Part ids used for primitives/materials. A model that cannot tell a part apart simply has no
# faces with that id.
PART_NAMES = ("skin", "eyes", "mouth")


@dataclass(frozen=True)
class ExportMesh:
    """A head mesh with its UV seams split (each unique (vertex, uv) pair is one export vertex).

    Attributes:
        positions: ``[N, 3]`` float64 export-vertex positions.
        normals: ``[N, 3]`` unit normals (smooth across seams: computed on the model's vertices).
        uvs: ``[N, 2]`` texture coordinates, origin bottom-left (OBJ-style), or ``None``.
        faces: ``[F, 3]`` int64 indices into the export vertices, same order as the model's faces.
        vertex_map: ``[N]`` int64 model vertex index of each export vertex.
        face_part: ``[F]`` int64 index into :data:`PART_NAMES`.
    """

    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray | None
    faces: np.ndarray
    vertex_map: np.ndarray
    face_part: np.ndarray


def split_seams(faces: np.ndarray, uv_faces: np.ndarray | None, num_uvs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``faces [F, 3]`` and per-corner ``uv_faces [F, 3]`` -> (``vertex_map [N]``, ``uv_index [N]``
    or ``None``, ``new_faces [F, 3]``). Without UVs, only the vertices used by a face are kept."""
    faces = np.asarray(faces, dtype=np.int64)
    if uv_faces is None or num_uvs == 0 or len(uv_faces) == 0:
        used, inverse = np.unique(faces.ravel(), return_inverse=True)
        return used, None, inverse.reshape(faces.shape)
    uv_faces = np.asarray(uv_faces, dtype=np.int64)
    key = faces.ravel() * num_uvs + uv_faces.ravel()
    unique, inverse = np.unique(key, return_inverse=True)
    return unique // num_uvs, unique % num_uvs, inverse.reshape(faces.shape)


def safe_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals; a vertex with no area around it gets +Y (glTF requires
    unit-length normals, and a zero vector would be rejected by validators)."""
    from avatar.render.mesh import vertex_normals

    n = vertex_normals(vertices, faces)
    return np.where(np.linalg.norm(n, axis=1, keepdims=True) > 0.5, n, np.array([0.0, 1.0, 0.0]))


def _components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Connected-component label per vertex (label propagation; the mesh is small)."""
    label = np.arange(num_vertices)
    while True:
        m = np.minimum(np.minimum(label[faces[:, 0]], label[faces[:, 1]]), label[faces[:, 2]])
        new = label.copy()
        for k in range(3):
            np.minimum.at(new, faces[:, k], m)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def face_parts(head: HeadModel, expression_deltas: np.ndarray | None = None) -> np.ndarray:
    """Part id per face (see :data:`PART_NAMES`).

    eyes: all three vertices skinned more than half to joints whose name contains "eye".
    mouth: a separate connected piece (not the largest) whose every vertex moves with the
    ``tongueOut`` channel (AnnyHead's tongue; models without such a piece have no mouth part).
    ``expression_deltas [E, V, 3]`` may be passed to avoid re-evaluating the model.
    """
    faces = head.faces.cpu().numpy().astype(np.int64)
    n_v = head.num_vertices
    part = np.zeros(len(faces), dtype=np.int64)
    eye_joints = [i for i, name in enumerate(head.joint_names) if "eye" in name.lower()]
    if eye_joints:
        w = head.skin_weights[:, eye_joints].sum(1).double().cpu().numpy()
        part[(w[faces] > 0.5).all(1)] = 1
    if "tongueOut" in head.expression_names:
        if expression_deltas is None:
            expression_deltas = evaluate_expression_deltas(head, None)
        moved = np.linalg.norm(expression_deltas[head.expression_names.index("tongueOut")], axis=1) > 0
        label = _components(faces, n_v)
        labels, sizes = np.unique(label[np.unique(faces)], return_counts=True)
        largest = labels[np.argmax(sizes)]
        for c in labels:
            members = label == c
            if c != largest and moved[members].all():
                part[(members[faces]).all(1) & (part == 0)] = 2
    return part


def evaluate(head: HeadModel, shape: torch.Tensor | None = None, **params: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the model without gradients: (vertices ``[B, V, 3]``, joints ``[B, J, 3]``,
    joint_transforms ``[B, J, 4, 4]``) as float64 numpy."""
    with torch.no_grad():
        out = head(shape=shape, **params)
    return (out.vertices.double().cpu().numpy(), out.joints.double().cpu().numpy(),
            out.joint_transforms.double().cpu().numpy())


def evaluate_expression_deltas(head: HeadModel, shape: torch.Tensor | None) -> np.ndarray:
    """``[E, V, 3]`` vertex offsets of each expression channel at weight 1 (zero pose), relative
    to the neutral head of identity ``shape``. At zero pose every joint transform is the identity,
    so these are exactly the model's morph targets."""
    e = head.num_expressions
    expr = torch.cat([torch.zeros(1, e), torch.eye(e)]).to(head.device, head.dtype)
    v, _, _ = evaluate(head, shape, expression=expr)
    return v[1:] - v[:1]


def build_export_mesh(head: HeadModel, shape: torch.Tensor | None = None) -> tuple[ExportMesh, np.ndarray, np.ndarray]:
    """The neutral head of identity ``shape`` ready for export.

    Returns:
        (mesh, rest_joints ``[J, 3]``, expression_deltas ``[E, V, 3]`` per model vertex).
    """
    neutral, joints, transforms = evaluate(head, shape)
    if not np.allclose(transforms[0], np.eye(4), atol=1e-6):
        # Our glTF skin places joints at their rest heads with identity rotations; that is only
        # right if the model's zero pose is its bind pose.
        raise ValueError(f"{type(head).__name__}: zero pose is not the identity; cannot export its skin")
    deltas = evaluate_expression_deltas(head, shape)
    faces = head.faces.cpu().numpy().astype(np.int64)
    uvs = head.uvs.double().cpu().numpy()
    uv_faces = head.uv_faces.cpu().numpy() if len(uvs) else None
    vmap, uv_index, new_faces = split_seams(faces, uv_faces, len(uvs))
    normals = safe_normals(neutral[0], faces)
    mesh = ExportMesh(
        positions=neutral[0][vmap],
        normals=normals[vmap],
        uvs=None if uv_index is None else uvs[uv_index],
        faces=new_faces,
        vertex_map=vmap,
        face_part=face_parts(head, deltas),
    )
    return mesh, joints[0], deltas
