"""FlameHead on a small synthetic file in FLAME's layout: loading, blendshapes, LBS by hand."""
from __future__ import annotations

import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.errors import AvatarError
from avatar.models import FlameHead, load_head_model

V, S, E, J = 50, 10, 5, 5
ROOT, NECK, JAW, LEYE, REYE = range(5)
V_JAW, V_HALF, V_LEYE, V_REYE, V_ROOT = 10, 11, 12, 13, 14  # vertices with hand-set weights


def _fake_class(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> type:
    """A plain class that pickles as ``module.name`` without chumpy/scipy installed."""
    cls = type(name, (), {})
    cls.__module__, cls.__qualname__ = module, name
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) not in sys.modules:
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    monkeypatch.setattr(sys.modules[module], name, cls, raising=False)
    return cls


def _flame_arrays(n_dirs: int = S + E, posedirs_scale: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    v_template = rng.uniform(-0.1, 0.1, size=(V, 3))
    # Joints: root, neck and the eyes sit on one vertex each; the jaw averages two vertices.
    jreg = np.zeros((J, V))
    jreg[ROOT, 0] = jreg[NECK, 1] = jreg[LEYE, 3] = jreg[REYE, 4] = 1.0
    jreg[JAW, 2] = jreg[JAW, 5] = 0.5
    weights = rng.uniform(size=(V, J))
    weights[:15] = 0.0
    weights[:10, ROOT] = 1.0
    weights[V_JAW, JAW] = 1.0
    weights[V_HALF, [NECK, JAW]] = 0.5
    weights[V_LEYE, LEYE] = weights[V_REYE, REYE] = weights[V_ROOT, ROOT] = 1.0
    weights /= weights.sum(1, keepdims=True)
    return {
        "v_template": v_template,
        "f": rng.integers(0, V, size=(30, 3)).astype(np.uint32),
        "shapedirs": rng.normal(scale=0.01, size=(V, 3, n_dirs)),
        "posedirs": rng.normal(scale=posedirs_scale, size=(V, 3, 36)) if posedirs_scale else np.zeros((V, 3, 36)),
        "J_regressor": jreg,
        "weights": weights,
        # FLAME stores the root's parent as uint32(-1).
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def _write_flame_pickle(path: Path, arrays: dict, monkeypatch: pytest.MonkeyPatch, sparse: bool = True) -> Path:
    """Pickle ``arrays`` as FLAME does: shapedirs a chumpy Ch, J_regressor a scipy csc matrix."""
    ch = _fake_class(monkeypatch, "chumpy.ch", "Ch")
    csc = _fake_class(monkeypatch, "scipy.sparse.csc", "csc_matrix")
    data = dict(arrays)
    shapedirs = ch.__new__(ch)
    shapedirs.__dict__.update({"x": arrays["shapedirs"], "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}})
    data["shapedirs"] = shapedirs
    if sparse:
        dense = arrays["J_regressor"]
        col_idx, row_idx = np.nonzero(dense.T)  # entries sorted by column, as csc stores them
        matrix = csc.__new__(csc)
        matrix.__dict__.update({
            "_shape": dense.shape, "data": dense[row_idx, col_idx], "indices": row_idx.astype(np.int32),
            "indptr": np.searchsorted(col_idx, np.arange(dense.shape[1] + 1)).astype(np.int32), "maxprint": 50,
        })
        data["J_regressor"] = matrix
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    return _flame_arrays()


@pytest.fixture
def model(arrays: dict[str, np.ndarray]) -> FlameHead:
    return FlameHead.from_arrays(arrays, n_shape=S, n_expression=E, expression_start=S, dtype=torch.float64)


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _t(x: np.ndarray | list) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))[None]


# --- loading -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sparse", [True, False])
def test_from_file_matches_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrays: dict, sparse: bool) -> None:
    path = _write_flame_pickle(tmp_path / "flame.pkl", arrays, monkeypatch, sparse=sparse)
    loaded = FlameHead.from_file(path, n_shape=S, n_expression=E, expression_start=S, dtype=torch.float64)
    np.testing.assert_array_equal(loaded.j_regressor.numpy(), arrays["J_regressor"])
    np.testing.assert_array_equal(loaded.shapedirs.numpy(), arrays["shapedirs"][:, :, :S])
    np.testing.assert_array_equal(loaded.exprdirs.numpy(), arrays["shapedirs"][:, :, S:])
    assert loaded.faces.dtype == torch.long and loaded.faces.shape == (30, 3)
    assert loaded.joint_parents == [-1, 0, 1, 1, 1]
    assert loaded.joint_names == ["root", "neck", "jaw", "eye_left", "eye_right"]
    assert loaded.expression_names == [f"exp{i:02d}" for i in range(E)]
    assert loaded.shape_names[0] == "shape000" and loaded.num_shape == S and loaded.name == "flame"
    assert loaded.uvs.shape == (0, 2) and loaded.uv_faces.shape == (0, 3)
    again = FlameHead.from_file(path, n_shape=S, n_expression=E, expression_start=S, dtype=torch.float64)
    torch.testing.assert_close(again().vertices, loaded().vertices, rtol=0, atol=0)


def test_flame_split_300_shape_then_expression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLAME's own layout: 300 identity components first, then expressions; caps at what the file has."""
    arrays = _flame_arrays(n_dirs=300 + 7)
    model = FlameHead.from_file(_write_flame_pickle(tmp_path / "f.pkl", arrays, monkeypatch))  # defaults 300/100
    assert model.num_shape == 300 and model.num_expressions == 7
    np.testing.assert_allclose(model.exprdirs.numpy(), arrays["shapedirs"][:, :, 300:], rtol=1e-6)
    small = FlameHead.from_file(tmp_path / "f.pkl", n_shape=20, n_expression=3)
    np.testing.assert_allclose(small.exprdirs.numpy(), arrays["shapedirs"][:, :, 300:303], rtol=1e-6)
    via_registry = load_head_model("flame", path=str(tmp_path / "f.pkl"), dtype=torch.float64)
    assert via_registry.dtype == torch.float64 and via_registry.num_expressions == 7
    with pytest.raises(AvatarError, match="shapedirs' has 15 components"):
        FlameHead.from_arrays(_flame_arrays())  # 15 < 300: where do expressions begin?


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("posedirs", np.zeros((V, 3, 35)), "posedirs"),
        ("weights", np.zeros((V, 4)), "weights"),
        ("v_template", np.zeros((V, 2)), "v_template"),
        ("J_regressor", np.zeros((5, V + 1)), "J_regressor"),
        ("kintree_table", np.array([[4294967295, 0, 1, 1, 9], [0, 1, 2, 3, 4]]), "kintree_table"),
        ("f", np.full((4, 3), V), "'f'"),
        ("shapedirs", np.zeros((V, 3)), "shapedirs"),
    ],
)
def test_bad_content_names_the_key(arrays: dict, key: str, value: np.ndarray, match: str) -> None:
    arrays[key] = value
    with pytest.raises(AvatarError, match=match):
        FlameHead.from_arrays(arrays, expression_start=S)


def test_missing_key_names_it(arrays: dict) -> None:
    del arrays["posedirs"]
    with pytest.raises(AvatarError, match="lacks 'posedirs'"):
        FlameHead.from_arrays(arrays, expression_start=S)


def test_uv_file(tmp_path: Path, arrays: dict) -> None:
    rng = np.random.default_rng(7)
    vt, ft = rng.uniform(size=(40, 2)), rng.integers(0, 40, size=(30, 3))
    np.savez(tmp_path / "model.npz", **{k: v for k, v in arrays.items() if isinstance(v, np.ndarray)})
    np.savez(tmp_path / "uv.npz", vt=vt, ft=ft)
    model = FlameHead.from_file(tmp_path / "model.npz", expression_start=S, uv_path=tmp_path / "uv.npz")
    np.testing.assert_allclose(model.uvs.numpy(), vt, rtol=1e-6)
    np.testing.assert_array_equal(model.uv_faces.numpy(), ft)
    with pytest.raises(AvatarError, match="do not match"):
        np.savez(tmp_path / "bad.npz", vt=vt, ft=ft[:5])
        FlameHead.from_file(tmp_path / "model.npz", expression_start=S, uv_path=tmp_path / "bad.npz")


# --- blendshapes -------------------------------------------------------------------------------
def test_shapes_and_determinism(model: FlameHead) -> None:
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) * 0.3 for k, v in model.zero_params(4).items()}
    a, b = model(**params), model(**params)
    assert a.vertices.shape == (4, V, 3) and a.joints.shape == (4, J, 3) and a.joint_transforms.shape == (4, J, 4, 4)
    assert a.rest_vertices.shape == (4, V, 3) and a.landmarks is None
    torch.testing.assert_close(a.vertices, b.vertices, rtol=0, atol=0)


def test_zero_params_give_template(model: FlameHead, arrays: dict) -> None:
    out = model(**model.zero_params(2))
    np.testing.assert_allclose(out.vertices.numpy(), np.broadcast_to(arrays["v_template"], (2, V, 3)), atol=1e-12)
    np.testing.assert_allclose(out.joints[0].numpy(), arrays["J_regressor"] @ arrays["v_template"], atol=1e-12)
    np.testing.assert_allclose(out.joint_transforms.numpy(), np.broadcast_to(np.eye(4), (2, J, 4, 4)), atol=1e-12)
    np.testing.assert_allclose(model().vertices[0].numpy(), arrays["v_template"], atol=1e-12)  # None = zeros


def test_blendshapes_are_linear_and_move_joints(model: FlameHead, arrays: dict) -> None:
    rng = np.random.default_rng(3)
    beta, psi = rng.normal(size=S), rng.normal(size=E)
    out = model(shape=_t(beta), expression=_t(psi))
    expected = arrays["v_template"] + arrays["shapedirs"] @ np.concatenate([beta, psi])
    np.testing.assert_allclose(out.vertices[0].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(out.rest_vertices[0].numpy(), expected, atol=1e-12)
    # FLAME regresses joints from the mesh with identity AND expression applied.
    np.testing.assert_allclose(out.joints[0].numpy(), arrays["J_regressor"] @ expected, atol=1e-12)
    twice = model(shape=_t(2 * beta), expression=_t(2 * psi)).vertices[0].numpy() - arrays["v_template"]
    np.testing.assert_allclose(twice, 2 * (expected - arrays["v_template"]), atol=1e-12)


# --- skinning by hand ----------------------------------------------------------------------------
def test_jaw_rotation_by_hand(model: FlameHead, arrays: dict) -> None:
    vt = arrays["v_template"]
    j_jaw = 0.5 * (vt[2] + vt[5])
    r = _rot_x(math.pi / 2)
    out = model(jaw=_t([math.pi / 2, 0.0, 0.0]))
    np.testing.assert_allclose(out.vertices[0, V_JAW].numpy(), j_jaw + r @ (vt[V_JAW] - j_jaw), atol=1e-12)
    # Split 50/50 between neck (not rotated) and jaw: halfway between the two rigid motions.
    half = 0.5 * vt[V_HALF] + 0.5 * (j_jaw + r @ (vt[V_HALF] - j_jaw))
    np.testing.assert_allclose(out.vertices[0, V_HALF].numpy(), half, atol=1e-12)
    np.testing.assert_allclose(out.vertices[0, V_ROOT].numpy(), vt[V_ROOT], atol=1e-12)
    np.testing.assert_allclose(out.joints[0, JAW].numpy(), j_jaw, atol=1e-12)  # rotates about itself


def test_neck_then_jaw_chain_by_hand(model: FlameHead, arrays: dict) -> None:
    vt = arrays["v_template"]
    j_neck, j_jaw = vt[1], 0.5 * (vt[2] + vt[5])
    n, r = _rot_y(0.4), _rot_x(-0.3)
    out = model(neck=_t([0.0, 0.4, 0.0]), jaw=_t([-0.3, 0.0, 0.0]))
    expected = j_neck + n @ (j_jaw - j_neck + r @ (vt[V_JAW] - j_jaw))
    np.testing.assert_allclose(out.vertices[0, V_JAW].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(out.joints[0, JAW].numpy(), j_neck + n @ (j_jaw - j_neck), atol=1e-12)
    np.testing.assert_allclose(out.vertices[0, V_LEYE].numpy(), j_neck + n @ (vt[V_LEYE] - j_neck), atol=1e-12)


def test_eyes_rotate_about_their_joints(model: FlameHead, arrays: dict) -> None:
    vt = arrays["v_template"]
    out = model(eyes=torch.tensor([[[0.0, 0.5, 0.0], [0.2, 0.0, 0.0]]], dtype=torch.float64))
    np.testing.assert_allclose(out.vertices[0, V_LEYE].numpy(), vt[3] + _rot_y(0.5) @ (vt[V_LEYE] - vt[3]), atol=1e-12)
    np.testing.assert_allclose(out.vertices[0, V_REYE].numpy(), vt[4] + _rot_x(0.2) @ (vt[V_REYE] - vt[4]), atol=1e-12)
    np.testing.assert_allclose(out.vertices[0, V_JAW].numpy(), vt[V_JAW], atol=1e-12)


def test_pose_correctives_add_posedirs_times_r_minus_i(arrays: dict) -> None:
    arrays = _flame_arrays(posedirs_scale=0.01)
    model = FlameHead.from_arrays(arrays, expression_start=S, dtype=torch.float64)
    r = _rot_x(math.pi / 2)
    out = model(jaw=_t([math.pi / 2, 0.0, 0.0]))
    feature = np.zeros(36)
    feature[9:18] = (r - np.eye(3)).ravel()  # jaw is the 2nd non-root joint; entries row-major
    corrected = arrays["v_template"] + arrays["posedirs"] @ feature
    np.testing.assert_allclose(out.vertices[0, V_ROOT].numpy(), corrected[V_ROOT], atol=1e-12)
    j_jaw = 0.5 * (arrays["v_template"][2] + arrays["v_template"][5])
    np.testing.assert_allclose(out.vertices[0, V_JAW].numpy(), j_jaw + r @ (corrected[V_JAW] - j_jaw), atol=1e-12)
    # rest_vertices are before any pose, so without correctives.
    np.testing.assert_allclose(out.rest_vertices[0].numpy(), arrays["v_template"], atol=1e-12)


# --- global pose, broadcasting, errors --------------------------------------------------------------
def test_global_orient_is_about_origin(model: FlameHead) -> None:
    gen = torch.Generator().manual_seed(5)
    local = dict(shape=torch.randn(1, S, generator=gen, dtype=torch.float64), jaw=torch.tensor([[0.3, 0.1, 0.0]], dtype=torch.float64))
    go, t = torch.tensor([[0.2, -0.7, 0.4]], dtype=torch.float64), torch.tensor([[0.01, 0.02, -0.5]], dtype=torch.float64)
    base, moved = model(**local), model(**local, global_orient=go, transl=t)
    from avatar.models.rotations import axis_angle_to_matrix

    r = axis_angle_to_matrix(go)[0]
    torch.testing.assert_close(moved.vertices[0], base.vertices[0] @ r.T + t[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(moved.joints[0], base.joints[0] @ r.T + t[0], rtol=0, atol=1e-12)
    # FLAME/smplx rotate about the root joint J0; the documented conversion gives the same head.
    j0 = base.joints[0, ROOT]
    t_smplx = t[0]
    smplx_style = (base.vertices[0] - j0) @ r.T + j0 + t_smplx
    converted = model(**local, global_orient=go, transl=(t_smplx + j0 - r @ j0)[None]).vertices[0]
    torch.testing.assert_close(converted, smplx_style, rtol=0, atol=1e-12)
    # joint_transforms reproduce the skinning of the (corrective-free) rest mesh.
    skinned = torch.einsum("vj,jab,vb->va", model.skin_weights, moved.joint_transforms[0, :, :3, :3], base.rest_vertices[0])
    skinned = skinned + model.skin_weights @ moved.joint_transforms[0, :, :3, 3]
    torch.testing.assert_close(skinned, moved.vertices[0], rtol=0, atol=1e-12)


def test_batch_one_parameters_broadcast(model: FlameHead) -> None:
    gen = torch.Generator().manual_seed(9)
    shape = torch.randn(1, S, generator=gen, dtype=torch.float64)
    jaw = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 0.3
    out = model(shape=shape, jaw=jaw)
    assert out.vertices.shape == (3, V, 3)
    for i in range(3):
        torch.testing.assert_close(out.vertices[i], model(shape=shape, jaw=jaw[i : i + 1]).vertices[0], rtol=0, atol=1e-12)


def test_wrong_shapes_raise(model: FlameHead) -> None:
    with pytest.raises(ValueError, match="expression"):
        model(expression=torch.zeros(2, E + 1))
    with pytest.raises(ValueError, match="eyes"):
        model(eyes=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(jaw=torch.zeros(2, 3), neck=torch.zeros(3, 3))


def test_float32_and_gradcheck(model: FlameHead, arrays: dict) -> None:
    f32 = FlameHead.from_arrays(arrays, expression_start=S)
    assert f32.dtype == torch.float32 and f32(jaw=torch.zeros(2, 3)).vertices.dtype == torch.float32
    gen = torch.Generator().manual_seed(11)
    inputs = (
        torch.randn(1, S, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(1, E, generator=gen, dtype=torch.float64, requires_grad=True),
        (torch.randn(1, 3, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(),
        (torch.randn(1, 3, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(),
    )
    posed = FlameHead.from_arrays(_flame_arrays(posedirs_scale=0.01), expression_start=S, dtype=torch.float64)
    # fast_mode checks random projections of the Jacobian: the same test at a fraction of the cost.
    fn = lambda s, e, j, n: posed(shape=s, expression=e, jaw=j, neck=n).vertices  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
