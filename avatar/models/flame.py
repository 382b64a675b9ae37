"""FlameHead: the FLAME head model (Li et al. 2017) behind the :class:`HeadModel` interface.

FLAME is optional: the user supplies the model file (FLAME 2020, FLAME 2023, or the CC-BY-4.0
"FLAME 2023 Open"). It is read with :func:`~avatar.models.unpickle.load_pickle_restricted`, never
with ``pickle.load``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from avatar.errors import AvatarError, MissingAssetError
from avatar.models.base import HeadModel, HeadOutput, skin
from avatar.models.rotations import axis_angle_to_matrix, rigid

__all__ = ["FlameHead", "FLAME_HELP"]

FLAME_HELP = (
    "Expected a FLAME model .pkl (FLAME 2020 'generic_model.pkl', FLAME 2023 'flame2023.pkl', or "
    "FLAME 2023 Open) holding v_template, f, shapedirs, posedirs, J_regressor, weights and "
    "kintree_table. FLAME 2023 Open (CC-BY-4.0, no registration) and FLAME 2020/2023 (free "
    "registration, FLAME licence) can be downloaded from https://flame.is.tue.mpg.de ; on the "
    "command line pass --model-path FILE.pkl (from Python: load_head_model('flame', path=...))."
)

JOINT_NAMES = ["root", "neck", "jaw", "eye_left", "eye_right"]
# FLAME's shapedirs holds 300 identity components, then the expression components.
FLAME_SHAPE_COMPONENTS = 300
_REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


def _array(data: Mapping[str, Any], key: str, ndim: int) -> np.ndarray:
    if key not in data:
        raise AvatarError(f"FLAME model file lacks '{key}'. {FLAME_HELP}")
    try:
        arr = np.asarray(data[key])
    except (TypeError, ValueError) as err:
        raise AvatarError(f"FLAME '{key}' is not an array ({err})") from err
    if arr.ndim != ndim or arr.dtype.kind not in "biuf":
        raise AvatarError(f"FLAME '{key}' must be a {ndim}-D numeric array, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _parents_from_kintree(kintree: np.ndarray, num_joints: int) -> list[int]:
    """FLAME's ``kintree_table [2, J]``: row 0 parent ids (root: -1 or 2**32-1), row 1 joint ids."""
    if kintree.shape != (2, num_joints):
        raise AvatarError(f"FLAME 'kintree_table' must be [2, {num_joints}], got {kintree.shape}")
    col_of = {int(j): i for i, j in enumerate(kintree[1])}
    parents = []
    for i, p in enumerate(kintree[0].astype(np.int64)):
        if i == 0:
            parents.append(-1)
            continue
        if int(p) not in col_of or col_of[int(p)] >= i:
            # forward kinematics walks joints in order, so every parent must come first
            raise AvatarError(f"FLAME 'kintree_table' gives joint {i} the parent id {int(p)}, which is not an earlier joint")
        parents.append(col_of[int(p)])
    return parents


def _read_uvs(uv_path: str | Path, num_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """UVs from FLAME's texture-space ``.npz`` (``vt [T,2]``, ``ft [F,3]``) or an ``.obj`` with ``vt``."""
    uv_path = Path(uv_path)
    if not uv_path.is_file():
        raise MissingAssetError(f"FLAME UV file not found: {uv_path} (an .npz with 'vt' and 'ft', or an .obj with vt)")
    if uv_path.suffix.lower() == ".obj":
        vt, ft = [], []
        for line in uv_path.read_text(errors="replace").splitlines():
            parts = line.split()
            if parts[:1] == ["vt"]:
                vt.append([float(parts[1]), float(parts[2])])
            elif parts[:1] == ["f"]:
                corners = [c.split("/") for c in parts[1:]]
                if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                    raise AvatarError(f"{uv_path}: every face must be a triangle with v/vt indices")
                ft.append([int(c[1]) - 1 for c in corners])  # OBJ is 1-based
        uvs, uv_faces = np.asarray(vt, dtype=np.float64).reshape(-1, 2), np.asarray(ft, dtype=np.int64).reshape(-1, 3)
    else:
        try:
            with np.load(uv_path, allow_pickle=False) as npz:
                uvs, uv_faces = np.asarray(npz["vt"], dtype=np.float64), np.asarray(npz["ft"], dtype=np.int64)
        except (KeyError, ValueError, OSError) as err:
            raise AvatarError(f"{uv_path}: expected an .npz with arrays 'vt' [T, 2] and 'ft' [F, 3] ({err})") from err
    if uvs.ndim != 2 or uvs.shape[1] != 2 or uv_faces.shape != (num_faces, 3):
        raise AvatarError(f"{uv_path}: UVs {uvs.shape} / UV faces {uv_faces.shape} do not match the {num_faces} FLAME triangles")
    if uv_faces.size and (uv_faces.min() < 0 or uv_faces.max() >= len(uvs)):
        raise AvatarError(f"{uv_path}: UV face index out of range")
    return uvs, uv_faces


class FlameHead(HeadModel):
    """FLAME: linear identity/expression blendshapes, pose correctives and 5-joint LBS.

    Parameters map onto FLAME's joints as ``neck -> neck``, ``jaw -> jaw``, ``eyes[:, 0] -> eye_left``
    (FLAME's 4th joint, ``leye``), ``eyes[:, 1] -> eye_right``. Joint rotations are local (relative
    to the parent joint, FLAME's and smplx's convention); with zero neck pose the jaw/eye axes are the
    world axes. Expression channels are FLAME's PCA components ``exp00 .. exp99``.

    The rig's root rotation is the identity inside LBS; ``global_orient`` then rotates the whole
    result about the model ORIGIN and ``transl`` is added. FLAME/smplx instead rotate about the root
    joint ``J0`` (which depends on shape and expression): ``v = R (v' - J0) + J0 + t_smplx``. The
    two agree when ``t_ours = t_smplx + J0 - R @ J0``.

    No UVs are in FLAME's model file; they come from FLAME's texture-space file (``uv_path``),
    otherwise ``uvs`` is ``[0, 2]`` and ``uv_faces`` is ``[0, 3]``.

    >>> model = FlameHead.from_file("flame2023.pkl")  # doctest: +SKIP
    >>> model(expression=torch.zeros(4, 100)).vertices.shape  # doctest: +SKIP
    torch.Size([4, 5023, 3])
    """

    name = "flame"

    v_template: Tensor
    shapedirs: Tensor
    exprdirs: Tensor
    posedirs: Tensor
    j_regressor: Tensor
    j_template: Tensor
    j_shapedirs: Tensor
    j_exprdirs: Tensor

    def __init__(
        self,
        v_template: Tensor,  # [V, 3]
        faces: Tensor,  # [F, 3]
        shapedirs: Tensor,  # [V, 3, S]
        exprdirs: Tensor,  # [V, 3, E]
        posedirs: Tensor,  # [V, 3, 9 * (J - 1)]
        j_regressor: Tensor,  # [J, V]
        weights: Tensor,  # [V, J]
        parents: list[int],
        uvs: Tensor | None = None,  # [T, 2]
        uv_faces: Tensor | None = None,  # [F, 3]
    ) -> None:
        super().__init__()
        v = v_template.shape[0]
        j = len(parents)
        checks = {
            "v_template": (v_template, (v, 3)),
            "faces": (faces, (faces.shape[0], 3)),
            "shapedirs": (shapedirs, (v, 3, shapedirs.shape[-1])),
            "exprdirs": (exprdirs, (v, 3, exprdirs.shape[-1])),
            "posedirs": (posedirs, (v, 3, 9 * (j - 1))),
            "J_regressor": (j_regressor, (j, v)),
            "weights": (weights, (v, j)),
        }
        for key, (t, expected) in checks.items():
            if tuple(t.shape) != expected:
                raise AvatarError(f"FLAME '{key}' must have shape {list(expected)}, got {list(t.shape)}")
        if j != len(JOINT_NAMES) or parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents[1:], 1)):
            raise AvatarError(f"FLAME needs {len(JOINT_NAMES)} joints (root, neck, jaw, eyes) in parent-first order, got parents {parents}")
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= v):
            raise AvatarError("FLAME 'f' has a vertex index out of range")
        if (uvs is None) != (uv_faces is None):
            raise AvatarError("give both uvs and uv_faces, or neither")
        dtype = v_template.dtype if v_template.is_floating_point() else torch.get_default_dtype()
        f = lambda t: t.to(dtype)  # noqa: E731

        self.register_buffer("faces", faces.long())
        self.register_buffer("v_template", f(v_template))
        self.register_buffer("shapedirs", f(shapedirs))
        self.register_buffer("exprdirs", f(exprdirs))
        self.register_buffer("posedirs", f(posedirs))
        self.register_buffer("j_regressor", f(j_regressor))
        self.register_buffer("skin_weights", f(weights))
        # FLAME regresses joints from the shaped AND expressed rest mesh (its reference code adds
        # all 400 blendshapes before the regressor). That is linear, so fold the regressor into the
        # blendshapes once: J = J_template + J_shapedirs . beta + J_exprdirs . psi.
        jr = f(j_regressor)
        self.register_buffer("j_template", jr @ f(v_template))
        self.register_buffer("j_shapedirs", torch.einsum("jv,vcs->jcs", jr, f(shapedirs)))
        self.register_buffer("j_exprdirs", torch.einsum("jv,vce->jce", jr, f(exprdirs)))
        self.register_buffer("uvs", f(uvs) if uvs is not None else torch.zeros(0, 2, dtype=dtype))
        self.register_buffer("uv_faces", uv_faces.long() if uv_faces is not None else torch.zeros(0, 3, dtype=torch.long))
        self.landmark_bary = self.landmark_bary.to(dtype)

        self.shape_names = [f"shape{i:03d}" for i in range(shapedirs.shape[-1])]
        self.expression_names = [f"exp{i:02d}" for i in range(exprdirs.shape[-1])]
        self.joint_names = list(JOINT_NAMES)
        self.joint_parents = list(parents)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        data: Mapping[str, Any],
        n_shape: int = 300,
        n_expression: int = 100,
        expression_start: int = FLAME_SHAPE_COMPONENTS,
        uvs: np.ndarray | None = None,
        uv_faces: np.ndarray | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "FlameHead":
        """Build from a dict in FLAME's file layout (numpy arrays; ``J_regressor`` already dense).

        ``shapedirs [V, 3, K]`` holds identity components ``[0, expression_start)`` and expression
        components from ``expression_start`` on (300 in FLAME 2020/2023). ``n_shape`` and
        ``n_expression`` keep the leading components of each and are capped at what the file has.
        """
        for key in _REQUIRED_KEYS:
            if key not in data:
                raise AvatarError(f"FLAME model file lacks '{key}'. {FLAME_HELP}")
        v_template = _array(data, "v_template", 2)
        faces = _array(data, "f", 2)
        dirs = _array(data, "shapedirs", 3)
        posedirs = _array(data, "posedirs", 3)
        j_regressor = _array(data, "J_regressor", 2)
        weights = _array(data, "weights", 2)
        kintree = _array(data, "kintree_table", 2)
        parents = _parents_from_kintree(kintree, j_regressor.shape[0])
        k = dirs.shape[-1]
        if not 0 < expression_start < k:
            raise AvatarError(
                f"FLAME 'shapedirs' has {k} components, so it cannot hold {expression_start} identity components "
                "followed by expression components (set expression_start to where expressions begin)"
            )
        if n_shape < 0 or n_expression < 0:
            raise AvatarError("n_shape and n_expression must be >= 0")
        n_shape = min(n_shape, expression_start)
        n_expression = min(n_expression, k - expression_start)
        t = lambda a, dt=dtype: torch.as_tensor(np.ascontiguousarray(a), device=device).to(dt)  # noqa: E731
        return cls(
            v_template=t(v_template),
            faces=t(faces.astype(np.int64), torch.long),
            shapedirs=t(dirs[:, :, :n_shape]),
            exprdirs=t(dirs[:, :, expression_start : expression_start + n_expression]),
            posedirs=t(posedirs),
            j_regressor=t(j_regressor),
            weights=t(weights),
            parents=parents,
            uvs=None if uvs is None else t(uvs),
            uv_faces=None if uv_faces is None else t(uv_faces, torch.long),
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path | None,
        n_shape: int = 300,
        n_expression: int = 100,
        expression_start: int = FLAME_SHAPE_COMPONENTS,
        uv_path: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "FlameHead":
        """Load a FLAME ``.pkl`` (or an ``.npz`` with the same keys) with the restricted unpickler.

        Args:
            path: the FLAME model file the user downloaded.
            n_shape, n_expression: identity/expression components to keep (capped at the file's).
            expression_start: index in ``shapedirs`` where expression components begin.
            uv_path: optional FLAME texture-space file (``.npz`` with ``vt``/``ft``, or an ``.obj``).
        """
        from avatar.models.unpickle import load_pickle_restricted

        if path is None:
            raise MissingAssetError(f"no FLAME model file given. {FLAME_HELP}")
        path = Path(path)
        if not path.is_file():
            raise MissingAssetError(f"FLAME model file not found: {path}. {FLAME_HELP}")
        try:
            if path.suffix.lower() == ".npz":
                try:
                    with np.load(path, allow_pickle=False) as npz:
                        data: dict[str, Any] = {k: npz[k] for k in npz.files}
                except (ValueError, OSError) as err:
                    raise MissingAssetError(f"{path} is not a readable .npz ({err})") from err
            else:
                data = load_pickle_restricted(path)
        except MissingAssetError as err:
            raise MissingAssetError(f"{err}. {FLAME_HELP}") from err
        if not all(key in data for key in _REQUIRED_KEYS):
            missing = [key for key in _REQUIRED_KEYS if key not in data]
            raise MissingAssetError(f"{path} is not a FLAME model file (no {', '.join(missing)}). {FLAME_HELP}")
        faces_np = _array(data, "f", 2)
        uvs = uv_faces = None
        if uv_path is not None:
            uvs, uv_faces = _read_uvs(uv_path, faces_np.shape[0])
        return cls.from_arrays(data, n_shape, n_expression, expression_start, uvs, uv_faces, dtype, device)

    # --- evaluation ----------------------------------------------------------------------------
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
        """See :meth:`HeadModel.forward`; ``eyes[:, 0]`` is FLAME's left eye, ``eyes[:, 1]`` its right."""
        shape = self._param(shape, (self.num_shape,), "shape")
        expression = self._param(expression, (self.num_expressions,), "expression")
        jaw = self._param(jaw, (3,), "jaw")
        neck = self._param(neck, (3,), "neck")
        eyes = self._param(eyes, (2, 3), "eyes")
        global_orient = self._param(global_orient, (3,), "global_orient")
        transl = self._param(transl, (3,), "transl")
        b = self._batch_size(shape, expression, jaw, neck, eyes, global_orient, transl)
        nv, nj = self.num_vertices, self.num_joints

        # Blendshapes: [B or 1, V, 3] rest mesh and [B or 1, J, 3] rest joints.
        # One [V*3, S] GEMM each (a batched [3, S] matmul per vertex is several times slower).
        offsets = shape @ self.shapedirs.reshape(nv * 3, -1).T + expression @ self.exprdirs.reshape(nv * 3, -1).T
        rest = self.v_template + offsets.reshape(-1, nv, 3)
        j_offsets = shape @ self.j_shapedirs.reshape(nj * 3, -1).T + expression @ self.j_exprdirs.reshape(nj * 3, -1).T
        rest_joints = self.j_template + j_offsets.reshape(-1, nj, 3)

        # Local rotations in joint order root, neck, jaw, eye_left, eye_right; the root stays identity.
        local = torch.stack(
            [torch.zeros_like(neck).expand(b, 3), neck.expand(b, 3), jaw.expand(b, 3),
             eyes[:, 0].expand(b, 3), eyes[:, 1].expand(b, 3)], dim=1,
        )  # [B, 5, 3]
        rot = axis_angle_to_matrix(local)  # [B, J, 3, 3]

        # Pose correctives are linear in the entries of (R_j - I) of the non-root joints (row-major).
        eye3 = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye3).reshape(b, 9 * (nj - 1))
        posed_rest = rest + (pose_feature @ self.posedirs.reshape(nv * 3, -1).T).reshape(b, nv, 3)

        # Forward kinematics: world_j = world_parent @ [R_j | J_j - J_parent].
        rest_joints = rest_joints.expand(b, nj, 3)
        world: list[Tensor] = []
        for j, p in enumerate(self.joint_parents):
            offset = rest_joints[:, j] - (rest_joints[:, p] if p >= 0 else 0.0)
            local_t = rigid(rot[:, j], offset)
            world.append(local_t if p < 0 else world[p] @ local_t)
        world_t = torch.stack(world, dim=1)  # [B, J, 4, 4]
        posed_joints = world_t[..., :3, 3]
        # Skinning transforms map rest positions: x -> R_world (x - J_rest) + J_posed.
        skin_t = rigid(world_t[..., :3, :3], posed_joints - (world_t[..., :3, :3] @ rest_joints[..., None]).squeeze(-1))

        # Our global rotation is about the origin, applied after LBS (see the class docstring).
        g = rigid(axis_angle_to_matrix(global_orient), transl)[:, None]  # [B or 1, 1, 4, 4]
        joint_transforms = g @ skin_t
        vertices = skin(posed_rest, self.skin_weights, joint_transforms)
        joints = (g[..., :3, :3] @ posed_joints[..., None]).squeeze(-1) + g[..., :3, 3]
        return HeadOutput(
            vertices=vertices,
            joints=joints,
            joint_transforms=joint_transforms,
            landmarks=self.landmarks_from_vertices(vertices),
            rest_vertices=rest,
        )
