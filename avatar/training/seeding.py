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
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.representations import MeshGaussians, render_splats
from avatar.representations.geometry import triangle_frames
from avatar.representations.mesh_gaussians import FREE, HAIR, face_regions


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
