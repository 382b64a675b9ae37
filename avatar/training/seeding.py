"""Seed Gaussians where the frames show foreground that the head mesh does not cover.

The head model ends at the scalp and the neck, but most of the error of a mesh-bound avatar is
outside it: hair volume, loose strands, shoulders (measured on the shared clips: 73-88 % of the
held-out foreground error lies on pixels the posed mesh does not cover). Surface Gaussians can
only reach there by drifting and densifying for thousands of steps, so we put Gaussians there at
the start:

* a pixel is a seed candidate when the matte says foreground, the posed mesh does not cover it
  (with a small margin) and the Gaussians seeded so far do not already cover it;
* its depth is the mesh depth at the nearest covered pixel (hair beside the face sits at about
  the depth of the head's silhouette);
* it is bound to the nearest scalp/neck ("free") triangle, in that triangle's frame, as region
  ``hair`` (offset not pulled back to the surface), coloured with the pixel.

Frames are processed in turn and each only fills what the previous ones left uncovered, so a
few frames with different head poses fill the silhouette without duplicating it.

:func:`seed_teeth` adds the teeth the head model lacks (region ``teeth``): two arcs of small
Gaussians behind the inner lips of the neutral head, the lower one bound to the tongue (the jaw
carries it) and the upper one to the nearby face triangles that the expressions move least.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.representations import MeshGaussians, render_splats
from avatar.representations.geometry import triangle_frames
from avatar.representations.mesh_gaussians import EYE, FREE, HAIR, MOUTH, TEETH, face_regions


def nearest_covered(covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of a ``[H, W]`` bool mask, the ``(y, x)`` of the nearest ``True`` pixel
    (``[H, W]`` int arrays each). ``covered`` must have at least one ``True`` pixel."""
    import cv2

    src = (~covered).astype(np.uint8)  # distance transform measures to the nearest zero pixel
    _, labels = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(covered)  # row-major: OpenCV numbers zero pixels 1.. in the same scan order
    idx = labels.astype(np.int64) - 1
    return ys[idx], xs[idx]


@torch.no_grad()
def seed_off_mesh(
    rep: MeshGaussians,
    head: Any,
    vertices: Tensor,
    images: np.ndarray,
    mattes: np.ndarray,
    viewmat: Tensor,
    Ks: Tensor,
    *,
    stride: int = 2,
    margin: int = 2,
    max_new: int = 30_000,
    head_poses: Tensor | None = None,
    body: Tensor | None = None,
    turn: float = 0.0,
    options: Any = None,
) -> int:
    """Append ``hair`` Gaussians to ``rep`` (see the module docstring); returns how many.

    Args:
        vertices: ``[F, V, 3]`` posed head vertices of the seeding frames.
        images: ``[F, H, W, 3]`` uint8 frames.  mattes: ``[F, H, W]`` uint8 (255 = foreground).
        viewmat: ``[4, 4]`` world-to-camera.  Ks: ``[F, 3, 3]`` intrinsics at the image size.
        stride: seed on every ``stride``-th pixel in x and y (the Gaussians are sized to match).
        margin: pixels around the mesh silhouette left to the surface Gaussians.
        head_poses: ``[F, 4, 4]`` head-to-world transforms of the frames; each seed's body-fixed
            position (``static_pos``, relative to ``rep.reference_pose``) is where it was seen.
            Without them every frame is taken to be at the reference pose.
        body: ``[F, 3]`` the frames' tracked body motion (moves that body frame; with ``head_poses``).
        turn: the seeds' initial ``body_rotation`` share (their body frame's share of the head's turn).
    """
    import cv2

    from avatar.render.mesh import rasterize_triangles

    device = rep.offset.device
    faces = head.faces.cpu()
    H, W = images.shape[1:3]
    allowed = torch.nonzero(face_regions(head) == FREE).squeeze(-1)
    if allowed.numel() == 0:
        return 0
    vm = viewmat.double().cpu().numpy()
    cam_to_world_r, t = vm[:3, :3].T, vm[:3, 3]
    added = 0
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    bg = torch.zeros(3, device=device)
    for f in range(vertices.shape[0]):
        if added >= max_new:
            break
        v = vertices[f : f + 1].detach().double().cpu()
        K = Ks[f].double().cpu().numpy()
        frags = rasterize_triangles(v[0].numpy(), faces.numpy(), vm, K, W, H)
        covered = frags.face_id >= 0
        if not covered.any():
            continue
        near_mesh = cv2.dilate(covered.astype(np.uint8), kernel) > 0
        pose = None if head_poses is None else head_poses[f : f + 1].to(device)
        b = None if body is None or pose is None else body[f : f + 1].to(device)
        _, alpha, _ = render_splats(rep(vertices[f : f + 1].to(device), head_pose=pose, body=b), viewmat.to(device), Ks[f].to(device),
                                    W, H, bg, options)  # fmt: skip
        cand = (mattes[f] > 127) & ~near_mesh & (alpha[0, ..., 0].cpu().numpy() < 0.5)
        grid = np.zeros_like(cand)
        grid[(f % stride) :: stride, (f % stride) :: stride] = True  # frames seed interleaved grids
        ys, xs = np.nonzero(cand & grid)
        if ys.size == 0:
            continue
        if ys.size > max_new - added:
            keep = np.random.default_rng(f).choice(ys.size, max_new - added, replace=False)
            ys, xs = ys[keep], xs[keep]
        ny, nx = nearest_covered(covered)
        depth = frags.depth[ny[ys, xs], nx[ys, xs]]
        pix = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs, dtype=np.float64)], -1)
        cam = (pix @ np.linalg.inv(K).T) * depth[:, None]
        world = torch.from_numpy((cam - t) @ cam_to_world_r.T)  # R^T (cam - t), row-wise
        origin, rot, k = triangle_frames(v, faces)
        o, r, kk = origin[0, allowed], rot[0, allowed], k[0, allowed]
        tri = torch.cat([torch.cdist(c, o).argmin(1) for c in world.split(4096)])
        local = ((world - o[tri])[:, None, :] @ r[tri]).squeeze(1) / kk[tri, None]
        footprint = torch.from_numpy(0.6 * stride * depth / K[0, 0])  # world std of one seed's share
        log_scale = (footprint / kk[tri]).log()[:, None].expand(-1, 3)
        rgb = torch.from_numpy(images[f][ys, xs].astype(np.float32) / 255.0)
        region = torch.full((ys.size,), HAIR, dtype=torch.long)
        static = world  # without poses the frame is taken to be at the reference pose
        if head_poses is not None:  # the same world point, in each seed's body frame at this frame's pose
            rot, origin = rep.body_frame(head_poses[f : f + 1].double().cpu(), torch.tensor([float(turn)]),
                                         None if b is None else b.double().cpu())  # fmt: skip
            static = (world - origin) @ rot[0, 0]  # R^T (world - origin), row-wise; one share for all seeds
        rep.append(allowed[tri], region, local.float(), log_scale.float(), rgb, static_pos=static.float(), turn=turn)
        added += int(ys.size)
    return added


#: FaceMesh's inner-lip contours, mouth corner to mouth corner (upper; lower).
INNER_LIP_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


# The teeth's geometry (metres, on the neutral head): arcs TEETH_COLUMNS wide along the middle
# TEETH_WIDTH of each inner-lip contour, TEETH_ROWS from the lip line to TEETH_HEIGHT (up for the
# upper teeth, down for the lower), TEETH_DEPTH behind the lips; Gaussians of std TEETH_SIZE.
TEETH_COLUMNS, TEETH_ROWS = 15, 5
TEETH_WIDTH, TEETH_HEIGHT, TEETH_DEPTH, TEETH_SIZE = 0.7, 0.008, 0.004, 0.0015
TEETH_RGB = (0.85, 0.82, 0.76)
# Upper teeth are bound to a triangle within this distance (metres).
TEETH_ANCHOR_RADIUS = 0.06


@torch.no_grad()
def seed_teeth(rep: MeshGaussians, head: Any, vertices: Tensor) -> int:
    """Append ``teeth`` Gaussians to ``rep`` (module docstring); returns how many (0 when the head
    model has no tongue to carry the lower teeth, or no landmark embedding to find the lips).

    The arcs (``TEETH_*`` above) follow the inner-lip contours of the neutral head ``vertices
    [V, 3]`` (metres; +y up, the face toward +z). The lower teeth are bound to the nearest tongue
    triangle; each upper tooth to the triangle, within ``TEETH_ANCHOR_RADIUS`` and outside the eyes
    and the mouth interior, that carries it least far under any one expression channel (the
    nearest to a skull-fixed point the mesh offers).
    """
    region_f = face_regions(head, vertices)
    tongue = torch.nonzero(region_f == MOUTH).squeeze(-1)
    if tongue.numel() == 0 or not head.landmark_faces.numel():
        return 0
    v = vertices.detach().cpu().to(head.dtype)
    lm = head.landmarks_from_vertices(v[None].to(head.device))[0].cpu().double()
    faces = head.faces.cpu()
    origin, rot, k = (x[0] for x in triangle_frames(v[None].double(), faces))
    lo, hi = 0.5 - TEETH_WIDTH / 2, 0.5 + TEETH_WIDTH / 2
    along = np.linspace(lo, hi, TEETH_COLUMNS)
    up = torch.linspace(0.0, TEETH_HEIGHT, TEETH_ROWS, dtype=torch.float64)
    arcs = []
    for contour, sign in ((INNER_LIP_UPPER, 1.0), (INNER_LIP_LOWER, -1.0)):
        line = lm[list(contour)].numpy()
        t = np.linspace(0, 1, len(contour))
        arc = torch.from_numpy(np.stack([np.interp(along, t, line[:, c]) for c in range(3)], -1))
        p = arc[:, None, :] + sign * up[None, :, None] * arc.new_tensor([0.0, 1.0, 0.0])
        arcs.append(p.reshape(-1, 3) - arc.new_tensor([0.0, 0.0, TEETH_DEPTH]))
    upper, lower = arcs
    tri_lower = tongue[torch.cdist(lower, origin[tongue]).argmin(1)]
    near = torch.nonzero((region_f != MOUTH) & (region_f != EYE)).squeeze(-1)
    near = near[torch.cdist(origin[near], upper).amin(1) < TEETH_ANCHOR_RADIUS]
    tri_upper = near[_steadiest(head, v, faces, near, upper, origin, rot, k)]
    p, tri = torch.cat([upper, lower]), torch.cat([tri_upper, tri_lower])
    local = ((p - origin[tri])[:, None, :] @ rot[tri]).squeeze(1) / k[tri, None]
    log_scale = (TEETH_SIZE / k[tri]).log()[:, None].expand(-1, 3)
    colour = torch.tensor(TEETH_RGB).expand(p.shape[0], 3)
    rep.append(tri, torch.full((p.shape[0],), TEETH, dtype=torch.long), local.float(), log_scale.float(), colour, opacity=0.9)
    return int(p.shape[0])


def _steadiest(head: Any, vertices: Tensor, faces: Tensor, candidates: Tensor, points: Tensor,
               origin: Tensor, rot: Tensor, k: Tensor, keep: int = 256) -> Tensor:
    """``[P]`` index into ``candidates [A]`` (triangle ids) of the triangle that carries each of
    ``points [P, 3]`` (bound in its frame, as a Gaussian is) least far when any one expression
    channel is at full weight: the largest such move over the channels, smallest over the triangles
    (among the ``keep`` whose centroids move least, to bound the cost). ``origin/rot/k``: the
    triangle frames of the neutral ``vertices``; this identity's offset from the model's rest is
    added to every expression as it is (blendshapes taken as additive)."""
    names = getattr(head, "expression_names", ())
    shape_offset = vertices[None].double() - head().vertices.double().cpu()
    frames = []
    for chunk in torch.eye(len(names), dtype=head.dtype).split(8):
        moved = head(expression=chunk.to(head.device)).vertices.double().cpu() + shape_offset
        frames.append(tuple(x[:, candidates] for x in triangle_frames(moved, faces)))  # [C, A, ...]
    o_all = torch.cat([f[0] for f in frames])  # [E, A, 3]
    still = (o_all - origin[candidates][None]).norm(dim=-1).amax(0).argsort()[:keep]  # [keep] into A
    o0, r0, k0 = origin[candidates][still], rot[candidates][still], k[candidates][still]
    local = torch.einsum("aji,paj->pai", r0, points[:, None, :] - o0[None]) / k0[None, :, None]  # [P, keep, 3]
    worst = torch.zeros(local.shape[:2], dtype=local.dtype)
    for o, r, kk in frames:
        o, r, kk = o[:, still], r[:, still], kk[:, still]
        where = o[:, None] + kk[:, None, :, None] * torch.einsum("caij,paj->cpai", r, local)  # [C, P, keep, 3]
        worst = torch.maximum(worst, (where - points[None, :, None]).square().sum(-1).amax(0))
    return still[worst.argmin(1)]
