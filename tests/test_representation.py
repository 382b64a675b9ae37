"""Mesh-bound Gaussians: they follow the mesh (expressions, eyes, rigid motion), keep eyes and
mouth interior tied to their triangles, and round-trip through safetensors."""
from __future__ import annotations

import math

import pytest
import torch

from avatar.representations import MeshGaussians, Splats, load_avatar, load_representation, render_splats, save_avatar, save_representation
from avatar.representations.base import facing_factor
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


def test_view_dependent_colour_turns_with_the_head(anny_head):
    """Head and camera turned together: every Gaussian shows the same colour (SH in the head's
    frame); with world-frame SH (old bundles) it would not."""
    from avatar.render._sh import spherical_harmonics
    from avatar.representations.geometry import rigid_transforms

    r = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=2)
    with torch.no_grad():
        r.sh_rest.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
    aa, t = torch.tensor([[0.3, -0.4, 0.2]]), torch.tensor([[0.0, 0.0, -0.6]])
    pose = rigid_transforms(aa, t)
    eye = torch.tensor([0.05, 0.02, 0.5])  # camera centre in the head's frame
    with torch.no_grad():
        rest = r(anny_head().vertices, head_pose=torch.eye(4)[None])
        turned = r(anny_head(global_orient=aa, transl=t).vertices, head_pose=pose)
    assert turned.colors.shape == (1, r.num_gaussians, 9, 3) and turned.per_frame_colors
    R = axis_angle_to_matrix(aa)[0]
    seen_rest = spherical_harmonics(2, rest.means[0] - eye, rest.frame_colors(0))
    seen_turned = spherical_harmonics(2, turned.means[0] - (R @ eye + t[0]), turned.frame_colors(0))
    torch.testing.assert_close(seen_turned, seen_rest, atol=1e-4, rtol=0)
    r.sh_follows_head = False
    with torch.no_grad():
        world = r(anny_head(global_orient=aa, transl=t).vertices, head_pose=pose)
    assert not world.per_frame_colors
    assert (spherical_harmonics(2, world.means[0] - (R @ eye + t[0]), world.colors) - seen_rest).abs().max() > 0.05


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
    for name in ("means", "quats", "scales", "opacities", "colors", "normals"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))
    assert back.cull_backfacing  # the default of on_surface survives the round trip
    shape = torch.zeros(anny_head.num_shape)
    save_avatar(tmp_path / "avatar", rep, model="anny", shape=shape)
    av = load_avatar(tmp_path)  # OUT or OUT/avatar
    assert av.config["model"] == "anny" and av.representation.num_gaussians == rep.num_gaussians
    K = torch.tensor([[120.0, 0, 32], [0, 120.0, 32], [0, 0, 1]])
    vm = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    rgb, alpha = av.render({"transl": torch.tensor([[0.0, -0.12, -0.7]])}, vm, K, 64, 64)
    assert rgb.shape == (1, 64, 64, 3) and alpha[0, 32, 32, 0] > 0.9 and alpha[0, 0, 0, 0] < 0.05


def test_interrupted_bundle_write_leaves_the_previous_bundle(rep, anny_head, tmp_path, monkeypatch):
    """A crash while the new bundle is written (here: writing its performance file) leaves the old
    bundle whole, not the new representation beside the old avatar.json; no temporary folder stays."""
    import avatar.representations.bundle as bundle

    shape = torch.zeros(anny_head.num_shape)
    save_avatar(tmp_path / "avatar", rep, model="anny", shape=shape, extra={"run": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "avatar").iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle, "save_file", crash)
    other = MeshGaussians.from_state(rep.config(), rep.state_dict())
    other.set_colors(torch.zeros(rep.num_gaussians, 3))
    with pytest.raises(KeyboardInterrupt):
        save_avatar(tmp_path / "avatar", other, model="anny", shape=shape, extra={"run": 2},
                    performance={"transl": torch.zeros(3, 3)})  # fmt: skip
    assert {p.name: p.read_bytes() for p in (tmp_path / "avatar").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avatar"]
    assert load_avatar(tmp_path).config["run"] == 1


def _front_camera(z: float = 0.0) -> torch.Tensor:
    """The tracking's world-to-camera matrix (camera looking down -z) for a camera at (0, 0, z)."""
    vm = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    vm[2, 3] = z
    return vm


def test_facing_factor():
    vm = _front_camera(1.0)
    means = torch.zeros(6, 3)
    c = math.sqrt(1 - 0.15**2)
    normals = torch.tensor([[0, 0, 1.0], [0, 0, -1.0], [0, 0, 0.0], [1.0, 0, 0], [0, c, -0.15], [0, 0.6, -0.8]])
    f = facing_factor(means, normals, vm)
    # toward the camera, away, no normal (never hidden), edge-on (a silhouette), halfway down the ramp
    torch.testing.assert_close(f, torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.0]), atol=1e-5, rtol=0)


def test_back_facing_surface_does_not_show_through():
    """Two Gaussians on one line of sight: the nearer one's normal faces away from the camera, so
    the image is the farther one's colour; turn the normal round and the nearer one covers it."""
    vm = _front_camera()
    K = torch.tensor([[40.0, 0, 8], [0, 40.0, 8], [0, 0, 1]])
    means = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, -1.2]]])
    quats = torch.tensor([[[1.0, 0, 0, 0]] * 2])
    scales = torch.full((1, 2, 3), 0.2)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    for nz, expect in ((-1.0, [0.0, 0.0, 1.0]), (1.0, [1.0, 0.0, 0.0])):
        normals = torch.tensor([[[0.0, 0.0, nz], [0.0, 0.0, 0.0]]])
        s = Splats(means, quats, scales, torch.tensor([0.99, 0.99]), colors, None, normals)
        rgb, _, _ = render_splats(s, vm, K, 16, 16, torch.ones(3))
        torch.testing.assert_close(rgb[0, 8, 8], torch.tensor(expect), atol=0.02, rtol=0)


def test_face_is_hidden_from_behind(rep, anny_head):
    """With culling the face region's Gaussians face +z: a camera behind the head hides them all,
    one in front draws them; hair and mouth Gaussians are never culled (zero normals)."""
    s = rep(anny_head().vertices)
    face = rep.region == FACE
    front = _front_camera(1.0)
    back = torch.eye(4)
    back[2, 3] = 1.0  # camera at z = -1 looking down +z
    f_front, f_back = facing_factor(s.means[0], s.normals[0], front), facing_factor(s.means[0], s.normals[0], back)
    frontal = face & (s.normals[0, :, 2] > 0.8)  # the front of the face, not the sides of the cheeks
    assert frontal.sum() > 1000
    assert f_back[frontal].max() == 0 and f_front[frontal].min() == 1
    assert (s.normals[0][rep.region == MOUTH] == 0).all()
    old = MeshGaussians.from_state({k: v for k, v in rep.config().items() if k != "cull_backfacing"}, rep.state_dict())
    assert old(anny_head().vertices).normals is None  # bundles from before culling render as they were trained


def _see_through(rep: MeshGaussians) -> MeshGaussians:
    """Opacity 0.3 everywhere: the state in which a trained head without culling showed its
    back layers through its face."""
    with torch.no_grad():
        rep.opacity_logit.fill_(math.log(0.3 / 0.7))
    return rep


@pytest.mark.parametrize("cull", [True, False])
def test_frames_from_the_front_cannot_paint_the_back_of_the_head(anny_head, cull):
    rep = _see_through(MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1, cull_backfacing=cull))
    v = anny_head(transl=torch.tensor([[0.0, -0.12, -0.7]])).vertices
    vm = _front_camera()
    K = torch.tensor([[120.0, 0, 32], [0, 120.0, 32], [0, 0, 1]])
    rgb, _, _ = render_splats(rep(v), vm, K, 64, 64, torch.ones(3))
    ((rgb - torch.tensor([1.0, 0.0, 0.0])) ** 2).mean().backward()
    normals = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)(anny_head().vertices).normals[0]
    back = normals[:, 2] < -0.7  # the back of the head faces away from a camera in front
    grad = rep.sh_dc.grad.abs().sum(-1)
    assert back.sum() > 300
    if cull:
        assert grad[back].max() == 0
    else:  # what culling prevents: the back of the head learns the face seen through it
        assert (grad[back] > 0).float().mean() > 0.2


def test_back_of_the_head_is_a_closed_shell(anny_head):
    """The unseen back of the scalp and neck, closed by close_unseen_surface, is opaque: a camera
    behind the head sees the shell's colour, fully covered."""
    from avatar.render.mesh import intrinsics, orbit_viewmat
    from avatar.representations.mesh_gaussians import FREE
    from avatar.training.initialise import close_unseen_surface

    rep = _see_through(MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=2))
    v = anny_head().vertices
    seen = rep(v).normals[0, :, 2] > 0  # what a camera in front could see of the surface
    rep.set_colors(torch.where((rep.region == FREE)[:, None], torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])))
    scale_before = rep.log_scale.detach().clone()
    assert close_unseen_surface(rep, seen) > 500
    closed = (~seen) & (rep.region == FREE)
    assert torch.allclose(rep.opacities()[closed], torch.tensor(0.95)) and torch.allclose(rep.opacities()[~closed], torch.tensor(0.3))
    torch.testing.assert_close(rep.log_scale[closed, :2] - scale_before[closed, :2], torch.full_like(scale_before[closed, :2], math.log(1.5)))
    torch.testing.assert_close(rep.log_scale[~closed], scale_before[~closed])
    centre = (0.5 * (v[0].amax(0) + v[0].amin(0))).detach().double().numpy()
    behind = torch.tensor(orbit_viewmat(centre, 0.8, 180.0, 0.0), dtype=torch.float32)
    with torch.no_grad():
        rgb, alpha, _ = render_splats(rep(v), behind, torch.tensor(intrinsics(64, 64, 30.0), dtype=torch.float32), 64, 64)
    pix = rgb[0, 28:36, 28:36].reshape(-1, 3).mean(0)  # the back of the head, at eye height
    assert alpha[0, 28:36, 28:36].min() > 0.99 and pix[2] > 0.95, (alpha[0, 28:36, 28:36].min(), pix)


def test_expression_blendshapes_change_colour_and_shape_with_the_expression(anny_head, tmp_path):
    from avatar.representations.mesh_gaussians import HAIR

    r = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=1, expr_rank=4)
    r.append(torch.arange(3), torch.full((3,), HAIR), torch.zeros(3, 3), torch.full((3, 3), -2.0), torch.rand(3, 3))
    E = len(anny_head.expression_names)
    assert r.config()["expr_channels"] == E and r.expr_color.shape == (r.num_gaussians, 4, 3)
    expr = torch.zeros(2, E)
    expr[1, anny_head.expression_names.index("jawOpen")] = 0.8
    v = anny_head(expression=expr).vertices
    before = r(v, expression=expr)
    assert torch.allclose(before.means, r(v).means) and torch.allclose(before.colors[1], r(v).colors)  # zero blendshapes: no change
    with torch.no_grad():
        r.expr_color.normal_(generator=torch.Generator().manual_seed(1))
        r.expr_offset.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    s = r(v, expression=expr)
    hair = r.region == HAIR
    assert s.colors.shape == (2, r.num_gaussians, 4, 3)
    assert torch.allclose(s.colors[0], r(v[:1]).colors)  # neutral expression: code 0
    moved = (s.colors[1, :, 0] - s.colors[0, :, 0]).abs().amax(-1)
    reached = r.expr_reach[r.face_id, anny_head.expression_names.index("jawOpen")] > 0
    assert 0.1 < reached[~hair].float().mean() < 0.9  # the lower face, not all of the head
    assert (moved[reached & ~hair] > 0).all() and (moved[~reached | hair] == 0).all()  # nor hair (no blendshapes)
    brow = r.expr_reach[r.face_id, anny_head.expression_names.index("browInnerUp")] > 0
    assert (brow & ~reached).sum() > 0 and (moved[brow & ~reached] == 0).all()  # opening the jaw does not repaint the brow
    assert torch.equal(s.colors[1, :, 1:], s.colors[0, :, 1:])  # only the base colour changes
    shift = (s.means[1] - r(v[1:]).means[0]).norm(dim=-1)
    assert shift[reached & ~hair].amax() > 1e-4 and shift[~reached | hair].amax() == 0
    # the regulariser sees them; gradients reach the shared projection and the coefficients
    reg = r.regularization_terms()["expression"]
    (reg + s.colors[1].sum()).backward()
    assert r.expr_proj.grad.abs().sum() > 0 and r.expr_color.grad[~hair].abs().sum() > 0
    # the offset regulariser holds the Gaussians where the blendshapes take them, too
    with torch.no_grad():
        r.expr_offset[~hair] = 0.0
        r.expr_offset[~hair, :, 2] = 1.0  # straight off the surface at any non-zero code
        r.expr_proj.abs_()  # codes of one sign: the offsets cannot cancel
    r.zero_grad()
    assert r.regularization_terms(expression=expr)["offset"] > r.regularization_terms(expression=expr[:1])["offset"] + 1e-3
    r.regularization_terms(expression=expr)["offset"].backward()
    assert r.expr_offset.grad[~hair, :, 2].abs().sum() > 0
    # a training step computes the frames' local state once and hands it to both: same values
    local = r.local_state(expr)
    shared, own = r(v, expression=torch.zeros_like(expr), local=local), r(v, expression=expr)
    assert torch.equal(shared.means, own.means) and torch.equal(shared.colors, own.colors)
    for k, t in r.regularization_terms(expression=expr).items():
        assert torch.equal(r.regularization_terms(local=local)[k], t), k
    # round trip
    save_representation(r, tmp_path / "rep.safetensors")
    back = load_representation(tmp_path / "rep.safetensors")
    again, now = back(v, expression=expr), r(v, expression=expr)
    assert torch.allclose(again.colors, now.colors.detach(), atol=1e-6) and torch.allclose(again.means, now.means.detach(), atol=1e-6)
    assert torch.equal(back.expr_reach, r.expr_reach)
    with pytest.raises(Exception, match="channels"):
        back(v, expression=torch.zeros(2, E + 1))


def test_no_expression_blendshapes_by_default(rep, anny_head):
    assert rep.expr_rank == 0 and rep.expr_color is None
    assert not any(k.startswith("expr_") for k in rep.state_dict())
    assert not any(k.startswith("expr_") for k in rep.primitive_parameters())
    v = anny_head().vertices
    s = rep(v, expression=torch.ones(1, len(anny_head.expression_names)))
    assert torch.equal(s.colors, rep(v).colors) and torch.equal(s.means, rep(v).means)
