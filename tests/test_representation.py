"""Mesh-bound Gaussians: they follow the mesh (expressions, eyes, rigid motion), keep eyes and
mouth interior tied to their triangles, and round-trip through safetensors."""
from __future__ import annotations

import math

import pytest
import torch

from avatar.representations import MeshGaussians, load_avatar, load_representation, save_avatar, save_representation
from avatar.representations.geometry import matrix_to_quat, quat_multiply, quat_to_matrix
from avatar.representations.mesh_gaussians import EYE, FACE, MOUTH
from avatar.models.rotations import axis_angle_to_matrix


@pytest.fixture(scope="module")
def rep(anny_head):
    r = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=2, sh_degree=1)
    with torch.no_grad():  # leave the surface a little, as a trained avatar does
        r.offset[:, 2] += 0.1 * torch.randn(r.num_gaussians, generator=torch.Generator().manual_seed(0))
    return r


def test_regions_and_sizes(rep, anny_head):
    counts = rep.region_counts()
    assert counts["eye"] > 0 and counts["mouth"] > 0 and counts["face"] > 0 and counts["free"] > 0
    n_faces = anny_head.faces.shape[0]
    assert rep.num_gaussians == n_faces + counts["face"] // 2  # 2 per face triangle, 1 elsewhere
    s = rep(anny_head().vertices)
    assert s.means.shape == (1, rep.num_gaussians, 3) and s.quats.shape == (1, rep.num_gaussians, 4)
    assert s.colors.shape == (rep.num_gaussians, 4, 3) and s.sh_degree == 1
    assert rep(anny_head().vertices, sh_degree=0).colors.shape == (rep.num_gaussians, 1, 3)


def test_jaw_open_moves_mouth_not_forehead(rep, anny_head):
    names = anny_head.expression_names
    expr = torch.zeros(2, len(names))
    expr[1, names.index("jawOpen")] = 1.0
    with torch.no_grad():
        out = anny_head(expression=expr)
        s = rep(out.vertices)
    move = (s.means[1] - s.means[0]).norm(dim=-1)
    lm = out.landmarks[0]
    chin = lm[17]  # MediaPipe 17: lower lip, bottom centre
    brow_y = lm[[105, 334], 1].mean()  # eyebrows
    p = s.means[0]
    mouth = ((p - chin).norm(dim=-1) < 0.012) & (rep.region == FACE)
    forehead = (p[:, 1] > brow_y + 0.02) & (p[:, 2] > lm[:, 2].mean() - 0.01) & (rep.region == FACE)
    assert mouth.sum() > 20 and forehead.sum() > 20
    assert move[mouth].median() > 0.005, f"mouth Gaussians moved only {move[mouth].median():.4f} m"
    assert move[forehead].max() < 0.0005, f"forehead Gaussians moved {move[forehead].max():.4f} m"


def test_rigid_motion_is_equivariant(rep, anny_head):
    aa = torch.tensor([[0.2, -0.5, 0.1]])
    t = torch.tensor([[0.01, -0.1, -0.6]])
    with torch.no_grad():
        a = rep(anny_head().vertices)
        b = rep(anny_head(global_orient=aa, transl=t).vertices)
    R = axis_angle_to_matrix(aa)[0]
    torch.testing.assert_close(b.means[0], a.means[0] @ R.T + t, atol=2e-5, rtol=0)
    torch.testing.assert_close(b.scales, a.scales, atol=1e-6, rtol=1e-4)
    # float32 normals of mm-sized triangles: ~1e-3 rotation noise on the smallest ones
    torch.testing.assert_close(quat_to_matrix(b.quats[0]), R @ quat_to_matrix(a.quats[0]), atol=2e-3, rtol=0)


def test_eye_gaussians_rotate_with_the_eyes(rep, anny_head):
    eyes = torch.zeros(2, 2, 3)
    eyes[1, :, 1] = 0.4  # both eyes look sideways
    with torch.no_grad():
        out = anny_head(eyes=eyes)
        s = rep(out.vertices)
    on_eye = rep.region == EYE
    centre_l = out.joints[0, anny_head.joint_names.index("eye.L")]
    centre_r = out.joints[0, anny_head.joint_names.index("eye.R")]
    p0, p1 = s.means[0, on_eye], s.means[1, on_eye]
    c = torch.where((p0[:, :1] > 0), centre_l, centre_r)
    # Rotation about the eye centre: distances kept, Gaussians moved.
    torch.testing.assert_close((p1 - c).norm(dim=-1), (p0 - c).norm(dim=-1), atol=1e-4, rtol=0)
    assert (p1 - p0).norm(dim=-1).median() > 0.002
    # Clamps: an eye/mouth Gaussian cannot grow past half its triangle or leave it.
    with torch.no_grad():
        saved = rep.log_scale.clone(), rep.offset.clone()
        rep.log_scale.fill_(2.0)
        rep.offset.fill_(5.0)
        off, ls = rep._local()
        rep.log_scale.copy_(saved[0]), rep.offset.copy_(saved[1])
    rigid = (rep.region == EYE) | (rep.region == MOUTH)
    assert ls[rigid].max() <= math.log(0.5) + 1e-6 and off[rigid, 2].abs().max() <= 0.05 + 1e-6
    assert ls[~rigid].min() == 2.0


def test_quaternion_helpers():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(500, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    m = quat_to_matrix(q)
    back = matrix_to_quat(m)
    torch.testing.assert_close(quat_to_matrix(back), m, atol=1e-5, rtol=0)
    r = torch.randn(500, 4, generator=g)
    torch.testing.assert_close(quat_to_matrix(quat_multiply(q, r)), m @ quat_to_matrix(r), atol=1e-5, rtol=0)


def test_save_load_round_trip(rep, anny_head, tmp_path):
    path = save_representation(rep, tmp_path / "rep.safetensors")
    back = load_representation(path)
    v = anny_head(expression=torch.rand(2, 52) * 0.5).vertices.detach()
    a, b = rep(v), back(v)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))
    shape = torch.zeros(anny_head.num_shape)
    save_avatar(tmp_path / "avatar", rep, model="anny", shape=shape)
    av = load_avatar(tmp_path)  # OUT or OUT/avatar
    assert av.config["model"] == "anny" and av.representation.num_gaussians == rep.num_gaussians
    K = torch.tensor([[120.0, 0, 32], [0, 120.0, 32], [0, 0, 1]])
    vm = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    rgb, alpha = av.render({"transl": torch.tensor([[0.0, -0.12, -0.7]])}, vm, K, 64, 64)
    assert rgb.shape == (1, 64, 64, 3) and alpha[0, 32, 32, 0] > 0.9 and alpha[0, 0, 0, 0] < 0.05
