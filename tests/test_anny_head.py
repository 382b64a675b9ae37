"""AnnyHead: shapes, names, determinism, and equivalence with anny's own module."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.models.anny_head import ARKIT_52, JOINTS, PHENOTYPES, _TO_OURS
from avatar.models.rotations import axis_angle_to_matrix

# The 52 ARKit blendshape names, as Apple documents them (alphabetical within ARKit's groups is
# not required; the set and spelling are).
ARKIT_REFERENCE = {
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight",
    "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight", "jawForward",
    "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft",
    "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft",
    "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
}


def test_sizes_and_names(anny_head):
    m = anny_head
    assert m.num_vertices == 4538
    assert tuple(m.faces.shape) == (9014, 3)
    assert m.expression_names == ARKIT_52 and set(ARKIT_52) == ARKIT_REFERENCE and len(ARKIT_52) == 52
    assert m.shape_names[:6] == [f"phenotype:{p}" for p in PHENOTYPES]
    local = [n for n in m.shape_names if n.startswith("local:")]
    assert 120 <= len(local) <= 160, len(local)
    # Only head-region targets: no arm/leg/torso ones.
    assert not any(k in n for n in local for k in ("arm", "leg", "torso", "hip", "foot", "hand", "breast"))
    assert m.joint_names == JOINTS and len(m.joint_parents) == len(JOINTS)
    assert tuple(m.uv_faces.shape) == (9014, 3) and int(m.uv_faces.max()) < m.uvs.shape[0]
    assert float(m.uvs.min()) >= 0.0 and float(m.uvs.max()) <= 1.0
    w = m.skin_weights
    assert torch.allclose(w.sum(1), torch.ones_like(w[:, 0]), atol=1e-5) and float(w.min()) >= 0


def test_neutral_head_is_a_head_in_our_frame(anny_head):
    out = anny_head()
    v = out.vertices[0]
    height = float(v[:, 1].max() - v[:, 1].min())
    assert 0.2 < height < 0.3  # metres: a real head with neck is ~0.25 m
    eye_l, eye_r = out.joints[0, JOINTS.index("eye.L")], out.joints[0, JOINTS.index("eye.R")]
    # +Y up, face toward +Z, the subject's left eye on +X (glTF's convention).
    assert eye_l[0] > 0.02 and eye_r[0] < -0.02
    assert eye_l[1] > out.joints[0, JOINTS.index("jaw"), 1]
    nose_tip = v[v[:, 2].argmax()]
    assert abs(float(nose_tip[0])) < 0.01 and float(nose_tip[2]) > float(eye_l[2])
    assert torch.equal(out.joints[0, 0], torch.zeros(3))  # the root joint is the origin


def test_shapes_broadcast_and_determinism(anny_head):
    torch.manual_seed(0)
    b = 5
    params = dict(
        shape=0.3 * torch.randn(1, anny_head.num_shape),  # one identity shared by the batch
        expression=torch.rand(b, 52),
        jaw=0.1 * torch.randn(b, 3),
        neck=0.1 * torch.randn(b, 3),
        eyes=0.1 * torch.randn(b, 2, 3),
        global_orient=0.2 * torch.randn(b, 3),
        transl=torch.randn(b, 3),
    )
    o1 = anny_head(**params)
    o2 = anny_head(**params)
    assert o1.vertices.shape == (b, 4538, 3)
    assert o1.joints.shape == (b, len(JOINTS), 3)
    assert o1.joint_transforms.shape == (b, len(JOINTS), 4, 4)
    assert torch.equal(o1.vertices, o2.vertices)
    # Batch-1 identity broadcast == the identity repeated per sample.
    rep = dict(params, shape=params["shape"].expand(b, -1))
    assert torch.allclose(anny_head(**rep).vertices, o1.vertices, atol=1e-6)
    # Each sample equals its own batch-1 evaluation.
    one = anny_head(**{k: (v if v.shape[0] == 1 else v[2:3]) for k, v in params.items()})
    assert torch.allclose(one.vertices[0], o1.vertices[2], atol=1e-6)


def test_bad_parameters_are_rejected(anny_head):
    with pytest.raises(ValueError, match="expression"):
        anny_head(expression=torch.zeros(2, 51))
    with pytest.raises(ValueError, match="batch sizes"):
        anny_head(expression=torch.zeros(2, 52), jaw=torch.zeros(3, 3))
    with pytest.raises(TypeError):
        anny_head(expresion=torch.zeros(1, 52))  # misspelled names are not swallowed


def test_expression_moves_the_right_region(anny_head):
    e = torch.zeros(1, 52)
    e[0, ARKIT_52.index("jawOpen")] = 1.0
    d = (anny_head(expression=e).vertices - anny_head().vertices)[0].norm(dim=-1)
    rest = anny_head().vertices[0]
    chin = rest[:, 1] < rest[:, 1].quantile(0.45)
    top = rest[:, 1] > rest[:, 1].quantile(0.9)
    assert float(d[chin].max()) > 0.01  # the jaw opens by centimetres
    assert float(d[top].max()) < 1e-3  # the skull top stays (anny's target spreads < 0.5 mm there)


def test_global_transform_and_gradients(anny_head):
    r = torch.tensor([[0.0, 0.5, 0.0]])
    t = torch.tensor([[0.1, -0.2, 0.3]])
    moved = anny_head(global_orient=r, transl=t)
    plain = anny_head()
    expected = plain.vertices @ axis_angle_to_matrix(r).transpose(-1, -2) + t[:, None]
    assert torch.allclose(moved.vertices, expected, atol=1e-6)
    params = {k: v.requires_grad_(True) for k, v in anny_head.zero_params(3).items()}
    out = anny_head(**params)
    out.vertices.square().sum().backward()
    for k, v in params.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k


def test_gradcheck_float64(anny_head64):
    torch.manual_seed(2)
    m = anny_head64
    shape = (0.2 * torch.randn(1, m.num_shape, dtype=torch.float64)).requires_grad_(True)
    expr = (0.5 * torch.rand(1, 52, dtype=torch.float64)).requires_grad_(True)
    jaw = (0.1 * torch.randn(1, 3, dtype=torch.float64)).requires_grad_(True)
    eyes = (0.1 * torch.randn(1, 2, 3, dtype=torch.float64)).requires_grad_(True)
    idx = torch.arange(0, 4538, 97)  # a subset keeps the numerical Jacobian small

    def f(shape, expr, jaw, eyes):
        return m(shape=shape, expression=expr, jaw=jaw, eyes=eyes).vertices[:, idx]

    assert torch.autograd.gradcheck(f, (shape, expr, jaw, eyes), eps=1e-6, atol=1e-6, fast_mode=True)


def _anny_pose(model, rotations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our world-aligned rotations -> anny's 'local-ref' 4x4 deltas in anny's frame."""
    c = torch.as_tensor(_TO_OURS, dtype=torch.float64)
    out = {}
    for bone, aa in rotations.items():
        r = axis_angle_to_matrix(aa.double())
        d = torch.eye(4, dtype=torch.float64).repeat(aa.shape[0], 1, 1)
        d[:, :3, :3] = c.T @ r @ c
        out[bone] = d
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_anny(anny_head64, anny_reference, seed):
    """Random identity, expression and pose: our evaluator vs anny's module, < 1e-5 m."""
    g = torch.Generator().manual_seed(seed)
    m = anny_head64
    b = 2
    pheno = torch.rand(b, 6, generator=g, dtype=torch.float64)
    local = 2 * torch.rand(b, m.num_shape - 6, generator=g, dtype=torch.float64) - 1
    local = local * (torch.rand(local.shape, generator=g, dtype=torch.float64) < 0.3)  # sparse, both signs
    expr = torch.rand(b, 52, generator=g, dtype=torch.float64) * 0.8
    jaw = 0.2 * torch.randn(b, 3, generator=g, dtype=torch.float64)
    neck = 0.3 * torch.randn(b, 3, generator=g, dtype=torch.float64)
    eyes = 0.2 * torch.randn(b, 2, 3, generator=g, dtype=torch.float64)
    ours = m(shape=torch.cat([pheno - 0.5, local], 1), expression=expr, jaw=jaw, neck=neck, eyes=eyes)

    ref = anny_reference
    names = [n[len("local:"):] for n in m.shape_names[6:]]
    rots = {"neck01": neck / 4, "neck02": neck / 4, "neck03": neck / 4, "head": neck / 4,
            "jaw": jaw, "eye.L": eyes[:, 0], "eye.R": eyes[:, 1]}
    with torch.no_grad():
        out = ref(
            pose_parameters=_anny_pose(ref, rots),
            phenotype_kwargs={p: pheno[:, i] for i, p in enumerate(["gender", "age", "muscle", "weight", "height", "proportions"])},
            local_changes_kwargs={n: local[:, i] for i, n in enumerate(names)},
            facial_actions={n: expr[:, i] for i, n in enumerate(ARKIT_52)},
        )
    theirs = out["vertices"].double() @ torch.as_tensor(_TO_OURS).T
    err = (ours.vertices - theirs).norm(dim=-1).max().item()
    assert err < 1e-5, f"max vertex difference {err:.3e} m"
    # Posed joint positions agree with anny's posed bone heads too.
    bone_idx = [ref.bone_labels.index(j) for j in JOINTS]
    their_joints = out["bone_poses"][:, bone_idx, :3, 3].double() @ torch.as_tensor(_TO_OURS).T
    assert (ours.joints - their_joints).norm(dim=-1).max().item() < 1e-5


def test_float32_close_to_float64(anny_head, anny_head64):
    torch.manual_seed(3)
    p64 = {k: (0.3 * torch.randn_like(v)) for k, v in anny_head64.zero_params(2).items()}
    p32 = {k: v.float() for k, v in p64.items()}
    d = (anny_head(**p32).vertices.double() - anny_head64(**p64).vertices).abs().max().item()
    assert d < 1e-5
    assert np.isfinite(d)


def test_submesh_matches_full_model(anny_head):
    torch.manual_seed(4)
    m = anny_head
    faces = torch.randperm(m.faces.shape[0])[:300]
    bary = torch.softmax(torch.randn(300, 3), dim=1)
    full = __import__("copy").deepcopy(m)
    full.set_landmark_embedding(faces, bary)
    sub = full.submesh(faces)
    assert sub.num_vertices < m.num_vertices
    p = {k: 0.2 * torch.randn_like(v) for k, v in m.zero_params(3).items()}
    a, b = full(**p), sub(**p)
    assert torch.allclose(a.landmarks, b.landmarks, atol=1e-6)
    keep = torch.unique(m.faces[faces])
    assert torch.allclose(a.vertices[:, keep], b.vertices, atol=1e-6)
    assert torch.equal(full.landmark_faces, faces) and full.num_vertices == m.num_vertices  # source untouched


def test_skinning_backward_matches_autograd():
    """The hand-written skinning backward equals autograd through the plain formula (float64)."""
    from avatar.models.base import skin_vlast

    g = torch.Generator().manual_seed(5)
    v = torch.randn(3, 3, 40, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.softmax(torch.randn(40, 5, dtype=torch.float64, generator=g), 1)
    t = torch.randn(3, 5, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, t: skin_vlast(v, w, t), (v, t))
    shared = torch.randn(1, 3, 40, dtype=torch.float64, generator=g, requires_grad=True)  # broadcast rest shape
    assert torch.autograd.gradcheck(lambda v, t: skin_vlast(v.expand(3, -1, -1), w, t), (shared, t))
    plain = torch.einsum("vj,bjrc,bcv->brv", w, t[:, :, :3], torch.cat([v, torch.ones_like(v[:, :1])], 1))
    assert torch.allclose(skin_vlast(v, w, t), plain)
