"""Off-mesh seeding: hair/shoulder Gaussians where the matte shows what the head mesh does not
cover, bound to scalp/neck triangles, moving with the head."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from avatar.render.mesh import rasterize_triangles
from avatar.representations import MeshGaussians, render_splats
from avatar.representations.mesh_gaussians import FREE, HAIR, face_regions
from avatar.training.seeding import nearest_covered, seed_off_mesh
from avatar.training.synthetic import FRONTAL_VIEWMAT

SIZE = 64


def test_nearest_covered_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((23, 31)) < 0.05
    mask[3, 4] = True
    ny, nx = nearest_covered(mask)
    cy, cx = np.nonzero(mask)
    yy, xx = np.mgrid[:23, :31]
    best = ((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2).min(-1)
    got = (yy - ny) ** 2 + (xx - nx) ** 2
    assert mask[ny, nx].all()
    # OpenCV's 5x5 mask distance is approximate: the chosen pixel is (nearly) the nearest one.
    assert np.all(np.sqrt(got) <= np.sqrt(best) + 0.5)


@pytest.fixture(scope="module")
def scene(anny_head):
    """One frontal frame of the neutral head with a 'hair' halo around its silhouette in the matte."""
    import cv2

    f = 0.5 * SIZE / np.tan(np.radians(15.0))
    K = np.array([[f, 0, SIZE / 2], [0, f, SIZE / 2], [0, 0, 1]], np.float32)
    transl = torch.tensor([[0.0, -0.13, -0.62]])
    with torch.no_grad():
        verts = anny_head(transl=transl).vertices
    frags = rasterize_triangles(verts[0].double().numpy(), anny_head.faces.numpy(), FRONTAL_VIEWMAT, K.astype(np.float64), SIZE, SIZE)
    matte = (cv2.dilate(frags.mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0).astype(np.uint8) * 255
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[...] = (40, 30, 20)  # dark "hair" everywhere off the mesh
    return verts, transl, frags.mask, matte, image, torch.from_numpy(K), torch.from_numpy(FRONTAL_VIEWMAT.astype(np.float32))


def _seeded(anny_head, scene, reference, body_translation=0.0, stride=2, body=None):
    """Surface Gaussians plus hair seeded from the scene's frame (head pose: ``scene``'s translation;
    tracked body motion ``body``), with the given reference pose ``[1, 4, 4]`` (None: the frame's);
    returns (rep, surface count, frame pose, seeds added)."""
    from avatar.representations.geometry import rigid_transforms

    verts, transl, _, matte, image, K, vm = scene
    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)
    n0 = rep.num_gaussians
    pose = rigid_transforms(torch.zeros(1, 3), transl)
    with torch.no_grad():
        rep.reference_pose.copy_((pose if reference is None else reference)[0])
    rep.set_body_translation(body_translation)
    added = seed_off_mesh(rep, anny_head, verts, image[None], matte[None], vm, K[None], stride=stride, head_poses=pose, body=body)
    return rep, n0, pose, added


def test_seeds_fill_the_off_mesh_foreground_only(anny_head, scene):
    verts, _, mesh_mask, matte, image, K, vm = scene
    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)
    n0 = rep.num_gaussians
    added = seed_off_mesh(rep, anny_head, verts, image[None], matte[None], vm, K[None], stride=1, margin=1)
    off = (matte > 127) & ~mesh_mask
    assert added > 0.5 * off.sum() * 0.5  # most off-mesh pixels (outside the 1 px margin) got a seed
    assert rep.num_gaussians == n0 + added
    new = torch.arange(n0, rep.num_gaussians)
    assert (rep.region[new] == HAIR).all() and (rep.region[:n0] != HAIR).all()
    tri_region = face_regions(anny_head)
    assert (tri_region[rep.face_id[new]] == FREE).all()  # bound to scalp/neck triangles
    # Seeds project into the off-mesh foreground, and carry its colour.
    means = rep(verts).means[0, new]
    cam = means @ vm[:3, :3].T + vm[:3, 3]
    px = (cam @ K.T)[:, :2] / (cam @ K.T)[:, 2:]
    ix, iy = px[:, 0].floor().long(), px[:, 1].floor().long()
    assert off[iy.numpy(), ix.numpy()].mean() > 0.99
    rgb = rep.sh_dc[new] * 0.28209479177387814 + 0.5
    assert torch.allclose(rgb, torch.tensor([40, 30, 20]) / 255.0, atol=1e-5)
    # Rendered, the halo is covered.
    _, alpha, _ = render_splats(rep(verts), vm, K, SIZE, SIZE, torch.ones(3))
    assert alpha[0, ..., 0].detach().numpy()[off].mean() > 0.8


@pytest.mark.parametrize("body_translation", [0.0, 1.0])
def test_seeds_follow_the_head_or_stay_with_the_body(anny_head, scene, body_translation):
    from avatar.models.rotations import axis_angle_to_matrix
    from avatar.representations.geometry import rigid_transforms

    verts, transl, _, matte, image, K, vm = scene
    reference = rigid_transforms(torch.tensor([[0.0, 0.1, 0.0]]), transl + 0.01)
    rep, n0, pose, added = _seeded(anny_head, scene, reference, body_translation, stride=1)
    again = seed_off_mesh(rep, anny_head, verts, image[None], matte[None], vm, K[None], stride=1, head_poses=pose)
    assert again < 0.1 * added  # the same frame again: already covered
    hair = torch.arange(n0, rep.num_gaussians)
    at_seed = {}
    for w in (20.0, -20.0):  # all head-bound, all body-fixed: both put a seed where it was seen
        with torch.no_grad():
            rep.follow_logit[hair] = w
        at_seed[w] = rep(verts, head_pose=pose).means[0, hair]
    assert torch.allclose(at_seed[20.0], at_seed[-20.0], atol=1e-5)
    turn = torch.tensor([[0.0, 0.4, 0.0]])
    with torch.no_grad():
        moved = anny_head(global_orient=turn, transl=transl).vertices
    moved_pose = rigid_transforms(turn, transl)
    R = axis_angle_to_matrix(turn)[0]
    with torch.no_grad():
        rep.follow_logit[hair] = 20.0  # head-bound: rigidly attached to the (rigid) scalp/neck
    head_bound = rep(moved, head_pose=moved_pose).means[0, hair]
    expected = (at_seed[20.0] - transl) @ R.T + transl  # global_orient rotates about the model origin
    assert torch.allclose(head_bound, expected, atol=2e-4)
    with torch.no_grad():
        rep.follow_logit[hair] = -20.0  # body-fixed: stays where it was while the head turns
    assert torch.allclose(rep(moved, head_pose=moved_pose).means[0, hair], at_seed[-20.0], atol=1e-5)
    with torch.no_grad():
        rep.follow_logit[hair] = 0.0  # halfway
    half = rep(moved, head_pose=moved_pose).means[0, hair]
    assert torch.allclose(half, 0.5 * (head_bound + at_seed[-20.0]), atol=1e-5)
    # The head moves 2 cm sideways as well: body-fixed hair goes along only if the body carries the neck.
    shift = torch.tensor([[0.02, 0.0, 0.0]])
    with torch.no_grad():
        rep.follow_logit[hair] = -20.0
        shifted = anny_head(global_orient=turn, transl=transl + shift).vertices
    body = rep(shifted, head_pose=rigid_transforms(turn, transl + shift)).means[0, hair]
    assert torch.allclose(body, at_seed[-20.0] + body_translation * shift, atol=2e-5)
    # Surface Gaussians ignore the blend entirely.
    assert torch.allclose(rep(moved, head_pose=moved_pose).means[0, :n0], rep(moved).means[0, :n0])


def test_no_matte_means_no_seeds(anny_head, scene):
    verts, _, _, _, image, K, vm = scene
    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)
    empty = np.zeros((1, SIZE, SIZE), np.uint8)
    assert seed_off_mesh(rep, anny_head, verts, image[None], empty, vm, K[None]) == 0


def test_avatar_passes_the_head_pose_only_when_given(anny_head, scene):
    from avatar.representations.bundle import Avatar
    from avatar.representations.geometry import rigid_transforms

    transl = scene[1]
    rep, n0, _, _ = _seeded(anny_head, scene, rigid_transforms(torch.zeros(1, 3), transl))
    with torch.no_grad():
        rep.follow_logit[n0:] = -20.0  # all hair body-fixed
    av = Avatar(rep, anny_head, torch.zeros(anny_head.num_shape), {})
    tracked = av.splats({"transl": transl}).means[0]
    at_rest = av.splats({}).means[0]
    # Tracked: the whole avatar where it was seen. At rest: the head and the body-fixed hair both
    # moved back to the origin together (the reference pose is a pure translation here).
    assert torch.allclose(tracked - transl, at_rest, atol=1e-5)


def test_hair_blend_survives_save_and_load(anny_head, scene, tmp_path):
    from avatar.representations.bundle import load_representation, save_representation
    from avatar.representations.geometry import rigid_transforms

    transl = scene[1]
    rep, n0, _, _ = _seeded(anny_head, scene, rigid_transforms(torch.tensor([[0.0, 0.1, 0.0]]), transl))
    with torch.no_grad():
        rep.follow_logit[n0:] = torch.linspace(-3, 3, rep.num_gaussians - n0)
        rep.set_body_translation(torch.tensor([1.0, 0.0, 0.5]))
        rep.set_body_rotation(torch.rand(rep.num_gaussians, generator=torch.Generator().manual_seed(0)))
    save_representation(rep, tmp_path / "rep.safetensors")
    back = load_representation(tmp_path / "rep.safetensors")
    turn = rigid_transforms(torch.tensor([[0.0, 0.3, 0.0]]), transl)
    with torch.no_grad():
        moved = anny_head(global_orient=torch.tensor([[0.0, 0.3, 0.0]]), transl=transl).vertices
    assert torch.allclose(back(moved, head_pose=turn).means, rep(moved, head_pose=turn).means)
    assert torch.equal(back.reference_pose, rep.reference_pose)
    assert torch.equal(back.body_logit, rep.body_logit)
    assert torch.equal(back.turn_logit, rep.turn_logit)


@pytest.mark.parametrize("turn", [0.0, 1.0])
def test_body_frame_turns_with_the_head_by_each_gaussians_share(anny_head, scene, turn):
    """Hair seeded with rotation share 1 turns with the head exactly as head-bound hair does; with
    share 0 it stays where it was seen; with 0.5 it turns halfway. With the translation share 1
    as well, share-1 hair moves like head-bound hair under any head pose."""
    from avatar.models.rotations import axis_angle_to_matrix, matrix_to_axis_angle
    from avatar.representations.geometry import rigid_transforms

    verts, transl, _, matte, image, K, vm = scene
    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)
    n0 = rep.num_gaussians
    with torch.no_grad():
        rep.reference_pose.copy_(rigid_transforms(torch.tensor([[0.1, -0.2, 0.05]]), transl)[0])
    pose = rigid_transforms(torch.tensor([[-0.05, 0.1, 0.0]]), transl)  # seen away from the reference
    with torch.no_grad():
        seen_verts = anny_head(global_orient=torch.tensor([[-0.05, 0.1, 0.0]]), transl=transl).vertices
    seed_off_mesh(rep, anny_head, seen_verts, image[None], matte[None], vm, K[None], stride=2, head_poses=pose, turn=turn)
    hair = torch.arange(n0, rep.num_gaussians)
    assert torch.allclose(rep.body_rotation[hair], torch.tensor(turn), atol=1e-6)

    def means(follow: float, orient: Tensor, shift: Tensor = torch.zeros(1, 3)) -> Tensor:
        with torch.no_grad():
            rep.follow_logit[hair] = follow
            moved = anny_head(global_orient=orient, transl=transl + shift).vertices
            return rep(moved, head_pose=rigid_transforms(orient, transl + shift)).means[0, hair]

    seen = means(20.0, torch.tensor([[-0.05, 0.1, 0.0]]))
    assert torch.allclose(means(-20.0, torch.tensor([[-0.05, 0.1, 0.0]])), seen, atol=1e-5)  # body-fixed: seen there
    turned = torch.tensor([[0.2, 0.4, -0.1]])
    body, head = means(-20.0, turned), means(20.0, turned)
    if turn == 1.0:
        assert torch.allclose(body, head, atol=2e-4)
        rep.set_body_translation(1.0)
        shift = torch.tensor([[0.01, -0.02, 0.03]])
        assert torch.allclose(means(-20.0, turned, shift), means(20.0, turned, shift), atol=2e-4)
    else:
        assert torch.allclose(body, seen, atol=1e-5) and (head - seen).norm(dim=-1).mean() > 0.01
        # Half the turn about the reference: R_ref exp(0.5 log(R_ref^T R)) applied to the stored point.
        rep.set_body_rotation(0.5)
        half = means(-20.0, turned)
        ref = rep.reference_pose[:3, :3]
        part = axis_angle_to_matrix(0.5 * matrix_to_axis_angle(ref.T @ axis_angle_to_matrix(turned)[0])[None])[0]
        stored = (seen - transl) @ ref  # share 0 at seeding: stored in the reference pose's frame
        assert torch.allclose(half, stored @ (ref @ part).T + transl, atol=2e-4)


def test_body_translation_is_learnt_from_where_the_body_hair_is_seen(anny_head, scene):
    """Body-fixed hair seen 2 cm to the side when the head moved 2 cm sideways: gradient descent on
    the x share of the body frame's translation drives it toward 1, and leaves y and z alone."""
    from avatar.representations.geometry import rigid_transforms

    verts, transl = scene[:2]
    rep, n0, pose, _ = _seeded(anny_head, scene, rigid_transforms(torch.zeros(1, 3), transl), body_translation=0.5)
    with torch.no_grad():
        rep.follow_logit[n0:] = -20.0
        seen = rep(verts, head_pose=pose).means[0, n0:] + torch.tensor([0.02, 0.0, 0.0])
    shifted_pose = rigid_transforms(torch.zeros(1, 3), transl + torch.tensor([[0.02, 0.0, 0.0]]))
    opt = torch.optim.Adam(rep.shared_parameters().values(), lr=0.2)
    for _ in range(60):
        opt.zero_grad()
        ((rep(verts, head_pose=shifted_pose).means[0, n0:] - seen) ** 2).sum().backward()
        opt.step()
    share = rep.body_translation.detach()
    assert share[0] > 0.95 and torch.allclose(share[1:], torch.tensor([0.5, 0.5]))


def test_body_fixed_hair_follows_the_tracked_body_motion(anny_head, scene):
    """Seeded on a frame whose body had moved, a body-fixed seed is placed where it was seen; on
    another frame it moves by the difference of the tracked body motions, and the head doesn't."""
    verts = scene[0]
    seen_body = torch.tensor([[0.004, -0.003, 0.0]])
    rep, n0, pose, _ = _seeded(anny_head, scene, None, body=seen_body)
    hair = torch.arange(n0, rep.num_gaussians)
    with torch.no_grad():
        rep.follow_logit[hair] = -20.0
    at_seed = rep(verts, head_pose=pose, body=seen_body).means[0]
    with torch.no_grad():
        rep.follow_logit[hair] = 20.0
    assert torch.allclose(at_seed[hair], rep(verts, head_pose=pose).means[0, hair], atol=1e-5)  # seen where it was
    with torch.no_grad():
        rep.follow_logit[hair] = -20.0
    other = torch.tensor([[-0.01, 0.02, 0.005]])
    moved = rep(verts, head_pose=pose, body=other).means[0]
    assert torch.allclose(moved[hair], at_seed[hair] + (other - seen_body), atol=1e-5)
    assert torch.allclose(moved[:n0], at_seed[:n0])
    assert torch.allclose(rep(verts, body=other).means[0], rep(verts).means[0])  # no pose (rest): no body motion


def test_teeth_follow_the_jaw_and_the_skull(anny_head):
    """The lower arc moves with jawOpen as the lower lip does; the upper stays with the skull; the
    teeth sit behind the lips and carry no expression blendshapes."""
    from avatar.representations.mesh_gaussians import TEETH
    from avatar.training.seeding import INNER_LIP_LOWER, INNER_LIP_UPPER, TEETH_COLUMNS, TEETH_ROWS, seed_teeth

    head = anny_head
    with torch.no_grad():
        v0 = head().vertices[0]
    rep = MeshGaussians.on_surface(head, per_face=1, per_face_face=1, vertices=v0, expr_rank=4)
    n0 = rep.num_gaussians
    added = seed_teeth(rep, head, v0)
    teeth = rep.region == TEETH
    arc = TEETH_COLUMNS * TEETH_ROWS
    assert added == 2 * arc and int(teeth.sum()) == 2 * arc and (~teeth[:n0]).all()
    names = head.expression_names
    e = torch.zeros(1, len(names))
    e[0, names.index("jawOpen")] = 1.0
    with torch.no_grad():
        rest = rep(v0[None]).means[0][teeth]
        v1 = head(expression=e).vertices
        opened = rep(v1, expression=e).means[0][teeth]
        lips0 = head.landmarks_from_vertices(v0[None])[0]
        lips1 = head.landmarks_from_vertices(v1)[0]
        code = rep.expression_code(e)[0]
    upper, lower = slice(0, arc), slice(arc, 2 * arc)
    lip_drop = float(lips0[list(INNER_LIP_LOWER), 1].mean() - lips1[list(INNER_LIP_LOWER), 1].mean())
    assert lip_drop > 0.02  # the fixture's premise: jawOpen lowers the lower lip by centimetres
    drop = rest[lower, 1] - opened[lower, 1]
    assert (drop > 0.5 * lip_drop).all() and (drop < 1.5 * lip_drop).all()
    assert float((opened[upper] - rest[upper]).norm(dim=-1).max()) < 0.002
    assert (rest[:, 2] < lips0[list(INNER_LIP_UPPER), 2].max()).all()  # behind the lips' front
    assert (code[teeth] == 0).all() and (code[~teeth].abs().sum() > 0)


def test_no_teeth_without_a_tongue(anny_head, monkeypatch):
    """A head model without a mouth interior (FLAME) gets none, and the avatar is left as it was."""
    import avatar.training.seeding as seeding

    head = anny_head
    with torch.no_grad():
        v0 = head().vertices[0]
    rep = MeshGaussians.on_surface(head, per_face=1, per_face_face=1, vertices=v0)
    n0 = rep.num_gaussians
    monkeypatch.setattr(seeding, "face_regions", lambda h, v=None: torch.full((h.faces.shape[0],), FREE))
    assert seeding.seed_teeth(rep, head, v0) == 0 and rep.num_gaussians == n0
