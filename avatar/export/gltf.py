"""GLB export: the head mesh with ARKit-named morph targets, a skin, a textured PBR material and,
optionally, a performance (morph weights + joint rotations over time).

Layout of the file (glTF 2.0, one binary buffer):

- node 0: the skinned mesh, at the scene root with no transform (the spec ignores a skinned
  mesh node's transform; validators warn when it has one);
- nodes 1..J: the model's joints in model order, each at its rest head: translation = head -
  parent head, identity rotation; inverse bind matrix = translate(-head). With this, the glTF
  joint matrix ``world(c) @ IBM(c)`` equals the model's rest->posed transform ``T_c`` whenever the
  node's local transform is ``inv(T_p Tr(h_p)) @ T_c Tr(h_c)`` -- which is what the animation
  stores, so a frame of the animation reproduces the model's skinning exactly (up to the 4
  influences per vertex that glTF allows);
- one mesh whose primitives (skin, eyes, mouth) share the vertex attributes and differ in index
  buffer and material; each primitive carries the same E morph targets (glTF requires it), named
  in ``mesh.extras.targetNames``.

Vertices are split at UV seams (:mod:`avatar.export.meshdata`); ``GlbInfo.vertex_map`` maps each
glTF vertex back to its model vertex.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pygltflib as gl
import torch

from avatar.errors import AvatarError
from avatar.export.meshdata import PART_NAMES, build_export_mesh, evaluate, safe_normals
from avatar.models.base import FRAME_PARAMS, HeadModel
from avatar.utils.files import atomic_path

__all__ = ["GltfAnimation", "GlbInfo", "export_glb", "joint_pair_cost", "limit_influences", "matrix_to_quaternion_xyzw"]

_FLOAT, _UBYTE, _USHORT, _UINT = 5126, 5121, 5123, 5125
_COMPONENT = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint8): _UBYTE, np.dtype(np.uint16): _USHORT, np.dtype(np.uint32): _UINT}
_TYPE = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_AUTO_PNG_LIMIT = 4_000_000
# Per part: (material name, roughness). Eyes are glossy, the mouth wet, skin matte-ish.
_MATERIALS = {"skin": ("skin", 0.6), "eyes": ("eyes", 0.15), "mouth": ("mouth", 0.4)}


@dataclass(frozen=True)
class GltfAnimation:
    """A performance to store as a glTF animation: per-frame model parameters at ``fps``.

    Each array is ``[N, ...]`` or ``None`` (zeros): ``expression [N, E]``, ``jaw [N, 3]``,
    ``neck [N, 3]``, ``eyes [N, 2, 3]``, ``global_orient [N, 3]``, ``transl [N, 3]``.
    """

    fps: float
    expression: np.ndarray | None = None
    jaw: np.ndarray | None = None
    neck: np.ndarray | None = None
    eyes: np.ndarray | None = None
    global_orient: np.ndarray | None = None
    transl: np.ndarray | None = None
    name: str = "performance"

    def params(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in FRAME_PARAMS if getattr(self, k) is not None}

    @property
    def num_frames(self) -> int:
        sizes = {len(v) for v in self.params().values()}
        if len(sizes) != 1:
            raise AvatarError(f"animation arrays must all have the same number of frames, got {sorted(sizes)}")
        return sizes.pop()


@dataclass(frozen=True)
class GlbInfo:
    """What :func:`export_glb` wrote.

    Attributes:
        path: the file.
        size_bytes: its size.
        num_vertices: glTF vertices (model vertices split at UV seams).
        vertex_map: ``[N]`` model vertex index of each glTF vertex.
        target_names: morph target names, in order.
        sparse_targets: how many of the position targets were stored as sparse accessors.
        max_dropped_weight: largest skin weight removed by the 4-influence limit (before
            renormalising).
        num_animation_frames: 0 when no animation was written.
    """

    path: Path
    size_bytes: int
    num_vertices: int
    vertex_map: np.ndarray
    target_names: list[str]
    sparse_targets: int
    max_dropped_weight: float
    num_animation_frames: int = 0
    parts: dict[str, int] = field(default_factory=dict)


def joint_pair_cost(head: HeadModel, shape: torch.Tensor | None, rest: np.ndarray, samples: int = 24) -> np.ndarray:
    """``[V, J, J]``: how far apart joints a and b carry vertex v, averaged over random typical
    poses (jaw opening, neck bend, eye turns; seeded). It prices moving a skin weight from one
    joint to another: zero for joints that always move together."""
    rng = np.random.default_rng(0)
    jaw = np.c_[rng.uniform(0.0, 0.4, samples), rng.normal(0.0, 0.05, (samples, 2))]
    params = dict(jaw=jaw, neck=rng.normal(0.0, 0.25, (samples, 3)), eyes=rng.normal(0.0, 0.25, (samples, 2, 3)))
    _, _, T = evaluate(head, shape, **{k: torch.as_tensor(v, dtype=head.dtype, device=head.device) for k, v in params.items()})
    moved = np.einsum("pjab,vb->pjva", T[..., :3, :3], rest) + T[:, :, None, :3, 3]  # [P, J, V, 3]
    cost = np.zeros((len(rest), T.shape[1], T.shape[1]))
    for a in range(T.shape[1]):
        cost[:, a, :] = np.linalg.norm(moved[:, a : a + 1] - moved, axis=-1).mean(0).T
    return cost


def limit_influences(
    weights: np.ndarray, k: int = 4, pair_cost: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """At most ``k`` skin influences per vertex.

    Without ``pair_cost`` the ``k`` largest weights are kept and renormalised. With
    ``pair_cost [V, J, J]`` (see :func:`joint_pair_cost`), each vertex with more than ``k``
    influences keeps the subset of ``k`` joints that minimises ``sum over dropped d of
    w_d * min over kept c of cost[v, d, c]``, and each dropped weight goes to that nearest kept
    joint: a weight on neck02 is better merged into neck01 than dropped from a jaw vertex, which
    "largest k" would do when the jaw weight is small but moves a lot.

    Returns ``(joints [V, k] int, weights [V, k] float32, largest weight moved or dropped)``.
    Unused slots get joint 0 with weight 0. The float32 weights sum to 1 to within float32
    rounding: the first weight absorbs the residual, so validators that check normalisation
    accept them.
    """
    from itertools import combinations

    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(1, keepdims=True)
    if (total <= 0).any() or not np.isfinite(w).all():
        raise AvatarError("a vertex has no skin weight; cannot export the skin")
    w = w / total
    order = np.argsort(-w, axis=1, kind="stable")
    top = order[:, :k].copy()
    kept = np.take_along_axis(w, top, axis=1)
    dropped = float(np.take_along_axis(w, order[:, k:], axis=1).max()) if w.shape[1] > k else 0.0
    if pair_cost is not None and w.shape[1] > k:
        for v in np.nonzero((w > 0).sum(1) > k)[0]:
            nz = np.nonzero(w[v] > 0)[0]
            best = None
            for subset in combinations(nz, k):
                rest = [d for d in nz if d not in subset]
                c = pair_cost[v][np.ix_(rest, list(subset))]  # [dropped, kept]
                score = float((w[v, rest] * c.min(1)).sum())
                if best is None or score < best[0]:
                    best = (score, subset, rest, c.argmin(1))
            _, subset, rest, target = best
            new = w[v, list(subset)].copy()
            np.add.at(new, target, w[v, rest])
            top[v], kept[v] = subset, new
    if w.shape[1] < k:
        pad = k - w.shape[1]
        top = np.concatenate([top, np.zeros((len(w), pad), dtype=top.dtype)], axis=1)
        kept = np.concatenate([kept, np.zeros((len(w), pad))], axis=1)
    out = (kept / kept.sum(1, keepdims=True)).astype(np.float32)
    joints = np.where(out > 0, top, 0)
    out[:, 0] += np.float32(1.0) - out.sum(1, dtype=np.float32)
    return joints, out, dropped


def matrix_to_quaternion_xyzw(rot: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` rotations -> ``[..., 4]`` unit quaternions (x, y, z, w), glTF's order."""
    r = np.asarray(rot, dtype=np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    # Four candidate formulas; each is well conditioned where its denominator is largest.
    cand = np.stack([
        1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22,
    ], axis=-1)
    best = np.argmax(cand, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(cand, best[..., None], -1)[..., 0], 1e-30)) * 2.0
    q = np.empty(r.shape[:-2] + (4,))
    d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    a01, a02, a12 = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    forms = [
        np.stack([d21 / s, d02 / s, d10 / s, 0.25 * s], -1),
        np.stack([0.25 * s, a01 / s, a02 / s, d21 / s], -1),
        np.stack([a01 / s, 0.25 * s, a12 / s, d02 / s], -1),
        np.stack([a02 / s, a12 / s, 0.25 * s, d10 / s], -1),
    ]
    for i, f in enumerate(forms):
        q = np.where((best == i)[..., None], f, q)
    q *= np.where(q[..., 3:] < 0, -1.0, 1.0)  # w >= 0: one canonical sign
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


class _Builder:
    """Collects binary data into one buffer (every bufferView 4-byte aligned) and accessors."""

    def __init__(self, gltf: gl.GLTF2) -> None:
        self.gltf = gltf
        self.data = bytearray()

    def view(self, raw: bytes, target: int | None = None) -> int:
        self.data += b"\0" * (-len(self.data) % 4)
        self.gltf.bufferViews.append(gl.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(raw), target=target))
        self.data += raw
        return len(self.gltf.bufferViews) - 1

    def accessor(self, arr: np.ndarray, target: int | None = None, minmax: bool = False) -> int:
        arr = np.ascontiguousarray(arr)
        width = 1 if arr.ndim == 1 else int(np.prod(arr.shape[1:]))
        acc = gl.Accessor(
            bufferView=self.view(arr.tobytes(), target), byteOffset=0, componentType=_COMPONENT[arr.dtype],
            count=int(arr.shape[0]), type=_TYPE[width],
        )
        if minmax:
            flat = arr.reshape(len(arr), width)
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1

    def sparse_vec3(self, values: np.ndarray, eps: float) -> tuple[int, bool]:
        """A VEC3 float accessor for ``values [N, 3]``, sparse (only rows with ``|row| > eps``) when
        that is smaller than dense. Returns (accessor index, stored sparse)."""
        v = np.asarray(values, dtype=np.float32)
        n = len(v)
        rows = np.nonzero(np.linalg.norm(v.astype(np.float64), axis=1) > eps)[0]
        idx_dtype = np.uint16 if n <= 65535 else np.uint32
        sparse_bytes = len(rows) * (np.dtype(idx_dtype).itemsize + 12)
        if len(rows) == 0 or sparse_bytes >= 0.75 * n * 12:
            # Dense: also when nothing moves (a sparse accessor needs at least one entry; a
            # zero target compresses away in transit anyway and keeps the layout simple).
            kept = v if len(rows) else np.zeros_like(v)
            return self.accessor(kept, _ARRAY_BUFFER, minmax=True), False
        stored = np.zeros_like(v)
        stored[rows] = v[rows]
        acc = gl.Accessor(
            bufferView=None, byteOffset=None, componentType=_FLOAT, count=n, type="VEC3",
            sparse=gl.Sparse(
                count=int(len(rows)),
                indices=gl.AccessorSparseIndices(bufferView=self.view(rows.astype(idx_dtype).tobytes()),
                                                 componentType=_COMPONENT[np.dtype(idx_dtype)]),
                values=gl.AccessorSparseValues(bufferView=self.view(v[rows].tobytes())),
            ),
            min=stored.min(0).tolist(), max=stored.max(0).tolist(),
        )
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1, True


def _as_tensor(x: torch.Tensor | np.ndarray | None, head: HeadModel) -> torch.Tensor | None:
    if x is None:
        return None
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=head.dtype, device=head.device)
    return t.reshape(1, -1) if t.ndim == 1 else t


def _node_locals(transforms: np.ndarray, rest_joints: np.ndarray, parents: list[int]) -> np.ndarray:
    """``T [N, J, 4, 4]`` rest->posed skinning transforms -> glTF node local matrices ``[N, J, 4, 4]``
    with ``world(c) = T_c Tr(h_c)``, so that ``world(c) @ IBM(c) = T_c``."""
    n, j = transforms.shape[:2]
    tr = np.tile(np.eye(4), (j, 1, 1))
    tr[:, :3, 3] = rest_joints
    world = transforms @ tr
    local = world.copy()
    for c, p in enumerate(parents):
        if p >= 0:
            local[:, c] = np.linalg.inv(world[:, p]) @ world[:, c]
    return local


def export_glb(
    path: str | Path,
    head: HeadModel,
    *,
    shape: torch.Tensor | np.ndarray | None = None,
    texture: np.ndarray | None = None,
    animation: GltfAnimation | None = None,
    texture_size: int = 1024,
    texture_format: str = "auto",
    sparse: bool = True,
    name: str = "avatar",
) -> GlbInfo:
    """Write the head as one GLB.

    Args:
        path: output ``.glb`` (written atomically).
        head: the head model (AnnyHead, FlameHead, ...).
        shape: ``[1, num_shape]`` identity; zeros (the model's mean head) when ``None``.
        texture: ``[H, W, 3]`` base colour in the model's UV atlas (float in [0, 1] or uint8). When
            ``None``, a plain painted texture of ``texture_size`` (skin, eyes, tongue) is used;
            a model without UVs gets an untextured skin-coloured material.
        animation: optional performance stored as morph-weight and joint animation.
        texture_size: size of the default texture.
        texture_format: ``"png"``, ``"jpeg"`` or ``"auto"`` (PNG unless that exceeds 4 MB, then JPEG
            quality 90), so the default GLB stays well under 10 MB even with a photographic texture.
        sparse: store morph targets as sparse accessors where that is smaller.
        name: the mesh/node/scene name (suffixed with "_mesh" if a joint has the same name).
    Returns:
        :class:`GlbInfo`.

    >>> info = export_glb("out/exports/head.glb", AnnyHead.load())  # doctest: +SKIP
    """
    from avatar.export.texture import default_texture, encode_image

    path = Path(path)
    tshape = _as_tensor(shape, head)
    mesh, rest_joints, deltas = build_export_mesh(head, tshape)
    gltf = gl.GLTF2(asset=gl.Asset(version="2.0", generator="avatar export_glb"))
    b = _Builder(gltf)
    n = len(mesh.positions)
    vmap = mesh.vertex_map

    # --- vertex attributes (shared by all primitives) ------------------------------------------
    attrs = gl.Attributes(
        POSITION=b.accessor(mesh.positions.astype(np.float32), _ARRAY_BUFFER, minmax=True),
        NORMAL=b.accessor(mesh.normals.astype(np.float32), _ARRAY_BUFFER),
    )
    if mesh.uvs is not None:
        gl_uv = np.stack([mesh.uvs[:, 0], 1.0 - mesh.uvs[:, 1]], axis=1)  # glTF UV origin: top-left
        attrs.TEXCOORD_0 = b.accessor(gl_uv.astype(np.float32), _ARRAY_BUFFER)
    joints, weights, dropped = limit_influences(
        head.skin_weights.double().cpu().numpy()[vmap], 4, joint_pair_cost(head, tshape, mesh.positions))
    jdtype = np.uint8 if head.num_joints <= 256 else np.uint16
    attrs.JOINTS_0 = b.accessor(joints.astype(jdtype), _ARRAY_BUFFER)
    attrs.WEIGHTS_0 = b.accessor(weights, _ARRAY_BUFFER)

    # --- morph targets: position and normal deltas per expression channel -----------------------
    faces_model = head.faces.cpu().numpy().astype(np.int64)
    neutral_model = mesh.positions  # per export vertex
    base_normals = mesh.normals
    model_neutral = np.zeros((head.num_vertices, 3))
    model_neutral[vmap] = neutral_model
    targets, n_sparse = [], 0
    for k in range(head.num_expressions):
        d = deltas[k][vmap]
        # Positions: drop deltas below 1e-7 m (far under float32 resolution at head scale).
        pos_acc, was_sparse = b.sparse_vec3(d, 1e-7) if sparse else (b.accessor(d.astype(np.float32), _ARRAY_BUFFER, minmax=True), False)
        n_sparse += was_sparse
        dn = safe_normals(model_neutral + deltas[k], faces_model)[vmap] - base_normals
        # Normals: changes below 1e-4 (0.006 degrees) are invisible in shading.
        nrm_acc, _ = b.sparse_vec3(dn, 1e-4) if sparse else (b.accessor(dn.astype(np.float32), _ARRAY_BUFFER), False)
        targets.append(gl.Attributes(POSITION=pos_acc, NORMAL=nrm_acc))

    # --- materials and texture ------------------------------------------------------------------
    parts_present = [p for p in range(len(PART_NAMES)) if (mesh.face_part == p).any()]
    tex_index = None
    if mesh.uvs is not None:
        if texture is None:
            texture = default_texture(head, texture_size, mesh.face_part)
        fmt = texture_format
        encoded = encode_image(texture, "png" if fmt in ("png", "auto") else fmt)
        if fmt == "auto" and len(encoded) > _AUTO_PNG_LIMIT:
            # A detailed (photographic) 2048^2 texture is ~10 MB as PNG; JPEG keeps the GLB small.
            fmt, encoded = "jpeg", encode_image(texture, "jpeg")
        mime = "image/jpeg" if fmt in ("jpeg", "jpg") else "image/png"
        gltf.images.append(gl.Image(bufferView=b.view(encoded), mimeType=mime, name="baseColor"))
        gltf.samplers.append(gl.Sampler(magFilter=9729, minFilter=9987, wrapS=33071, wrapT=33071))
        gltf.textures.append(gl.Texture(sampler=0, source=0))
        tex_index = 0
    elif texture is not None:
        raise AvatarError(f"the {head.name} head model has no UVs; a texture cannot be applied (for FLAME, pass its texture-space file: --uv-path FILE)")
    material_of: dict[int, int] = {}
    for p in parts_present:
        mname, rough = _MATERIALS[PART_NAMES[p]]
        pbr = gl.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=rough)
        if tex_index is not None:
            pbr.baseColorTexture = gl.TextureInfo(index=tex_index)
        else:
            pbr.baseColorFactor = [0.80, 0.62, 0.52, 1.0]
        gltf.materials.append(gl.Material(name=mname, pbrMetallicRoughness=pbr))
        material_of[p] = len(gltf.materials) - 1

    # --- primitives: one per part, sharing the attributes --------------------------------------
    idx_dtype = np.uint16 if n < 65535 else np.uint32
    primitives = []
    for p in parts_present:
        tri = mesh.faces[mesh.face_part == p].reshape(-1).astype(idx_dtype)
        primitives.append(gl.Primitive(
            attributes=attrs, indices=b.accessor(tri, _ELEMENT_ARRAY_BUFFER), material=material_of[p],
            mode=4, targets=targets,
        ))
    # Names must be unique for importers that bind bones by name (three.js renames duplicates).
    node_name = name if name not in head.joint_names else f"{name}_mesh"
    names = list(head.expression_names)
    gltf.meshes.append(gl.Mesh(name=node_name, primitives=primitives, weights=[0.0] * len(names), extras={"targetNames": names}))

    # --- skeleton --------------------------------------------------------------------------------
    parents = list(head.joint_parents)
    j = head.num_joints
    gltf.nodes.append(gl.Node(name=node_name, mesh=0, skin=0))
    for c in range(j):
        t = rest_joints[c] - (rest_joints[parents[c]] if parents[c] >= 0 else 0.0)
        children = [1 + k for k in range(j) if parents[k] == c]
        node = gl.Node(name=head.joint_names[c], translation=[float(x) for x in t])
        if children:
            node.children = children
        gltf.nodes.append(node)
    ibm = np.tile(np.eye(4), (j, 1, 1))
    ibm[:, :3, 3] = -rest_joints
    ibm_acc = b.accessor(ibm.transpose(0, 2, 1).reshape(j, 16).astype(np.float32))  # column-major
    roots = [1 + c for c in range(j) if parents[c] < 0]
    gltf.skins.append(gl.Skin(name="skeleton", inverseBindMatrices=ibm_acc, joints=[1 + c for c in range(j)],
                              skeleton=roots[0] if len(roots) == 1 else None))
    gltf.scenes.append(gl.Scene(name=node_name, nodes=[0] + roots))
    gltf.scene = 0

    # --- animation --------------------------------------------------------------------------------
    frames = 0
    if animation is not None:
        frames = _add_animation(gltf, b, head, tshape, animation, rest_joints, parents)

    gltf.buffers.append(gl.Buffer(byteLength=0))
    b.data += b"\0" * (-len(b.data) % 4)
    gltf.buffers[0].byteLength = len(b.data)
    gltf.set_binary_blob(bytes(b.data))
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"".join(gltf.save_to_bytes()))
    parts = {PART_NAMES[p]: int((mesh.face_part == p).sum()) for p in parts_present}
    return GlbInfo(path=path, size_bytes=path.stat().st_size, num_vertices=n, vertex_map=vmap, target_names=names,
                   sparse_targets=n_sparse, max_dropped_weight=dropped, num_animation_frames=frames, parts=parts)


def _add_animation(gltf: gl.GLTF2, b: _Builder, head: HeadModel, shape: torch.Tensor | None, anim: GltfAnimation,
                   rest_joints: np.ndarray, parents: list[int]) -> int:
    n = anim.num_frames
    if not anim.fps > 0:
        raise AvatarError(f"animation fps must be positive, got {anim.fps}")
    params = {k: _as_tensor(v, head) for k, v in anim.params().items()}
    if "eyes" in params:
        params["eyes"] = params["eyes"].reshape(n, 2, 3)
    _, _, transforms = evaluate(head, shape, **params)
    local = _node_locals(transforms, rest_joints, parents)  # [N, J, 4, 4]
    rot = local[..., :3, :3]
    ortho = np.abs(rot @ rot.transpose(0, 1, 3, 2) - np.eye(3)).max()
    if ortho > 1e-4:
        raise AvatarError(f"joint transforms are not rigid (|R R^T - I| = {ortho:.2e}); glTF nodes cannot express them")
    times = (np.arange(n) / anim.fps).astype(np.float32)
    t_acc = b.accessor(times, minmax=True)
    samplers: list[gl.AnimationSampler] = []
    channels: list[gl.AnimationChannel] = []

    def channel(node: int, path: str, values: np.ndarray) -> None:
        samplers.append(gl.AnimationSampler(input=t_acc, output=b.accessor(values.astype(np.float32)), interpolation="LINEAR"))
        channels.append(gl.AnimationChannel(sampler=len(samplers) - 1, target=gl.AnimationChannelTarget(node=node, path=path)))

    expr = params.get("expression")
    weights = np.zeros((n, head.num_expressions)) if expr is None else expr.double().cpu().numpy().reshape(n, -1)
    channel(0, "weights", weights.reshape(-1))
    rest_t = rest_joints - np.where(np.array(parents)[:, None] >= 0, rest_joints[np.maximum(parents, 0)], 0.0)
    for c in range(head.num_joints):
        q = matrix_to_quaternion_xyzw(rot[:, c])
        # Consecutive keys on the same hemisphere, so LINEAR (slerp/nlerp) takes the short way.
        for i in range(1, n):
            if np.dot(q[i], q[i - 1]) < 0:
                q[i] = -q[i]
        if np.abs(q[:, :3]).max() > 1e-8:
            channel(1 + c, "rotation", q)
        t = local[:, c, :3, 3]
        if np.abs(t - rest_t[c]).max() > 1e-7:
            channel(1 + c, "translation", t)
    gltf.animations.append(gl.Animation(name=anim.name, samplers=samplers, channels=channels))
    return n
