"""A new avatar before its first training step: Gaussians on the neutral head's surface coloured
from the frames, the unseen surface closed, teeth, the body reference pose, and hair/shoulder
Gaussians seeded where the matte shows what the mesh does not cover."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.representations import MeshGaussians, Representation
from avatar.representations.hash_blendshapes import HashBlendshapes
from avatar.representations.hashgrid import HashGridSpec
from avatar.representations.geometry import params_pose, rigid_transforms
from avatar.representations.mesh_gaussians import FREE
from avatar.representations.neural_points import NeuralPoints
from avatar.training.config import TrainConfig
from avatar.representations.base import BODY
from avatar.training.evaluation import spread
from avatar.training.frames import FrameRenderer
from avatar.training.seeding import seed_off_mesh, seed_teeth
from avatar.training.state import MIN_EXPRESSION_FRAMES


def new_avatar(frames: FrameRenderer, config: TrainConfig, progress: bool = False) -> Representation:
    """The initial :class:`MeshGaussians` of ``frames.clip`` (see the module docstring), or its
    :class:`HashBlendshapes` kind, or :class:`NeuralPoints` where those Gaussians would start
    (``config.representation``)."""
    clip, head = frames.clip, frames.head
    with torch.no_grad():
        neutral = frames.head_vertices({})[0]
    enough = len(clip.train_ids) >= MIN_EXPRESSION_FRAMES
    if config.representation == "hash-blendshapes":
        rep = new_hash_blendshapes(head, neutral, config, config.hash.expr_rank if enough else 0).to(frames.device)
    else:
        expr_rank = config.expr_rank if enough else 0
        if config.representation == "neural-points":  # the points' expression motion comes from their MLP
            expr_rank = 0
        rep = MeshGaussians.on_surface(head, per_face=config.per_face, per_face_face=config.per_face_face,
                                       sh_degree=config.sh_degree, vertices=neutral, seed=config.seed,
                                       cull_backfacing=config.cull_backfacing, sh_follows_head=config.sh_follows_head,
                                       expr_rank=expr_rank).to(frames.device)  # fmt: skip
    seen = init_colors_from_frames(rep, frames, spread(clip.train_ids, config.color_init_frames))
    if config.cull_backfacing:
        close_unseen_surface(rep, seen)
    if config.teeth:
        seed_teeth(rep, head, neutral)
    with torch.no_grad():  # body-fixed hair is stored relative to the mean training head pose
        train_params = frames.params(clip.train_ids)
        rep.reference_pose.copy_(rigid_transforms(train_params["global_orient"].mean(0, keepdim=True),
                                                  train_params["transl"].mean(0, keepdim=True))[0])  # fmt: skip
        rep.set_body_translation(config.body_translation)
    if config.seed_off_mesh:
        rows = spread(clip.train_ids, config.seed_frames)
        n = seed_hair(rep, frames, rows, config)
        if progress:
            print(f"seeded {n} off-mesh (hair) Gaussians from {len(rows)} frames")
    if config.representation == "neural-points":
        rep = NeuralPoints.from_mesh_gaussians(rep, head, neutral, frames.shape, hidden=config.points.hidden,
                                               frequencies=config.points.frequencies, seed=config.seed,
                                               appearance=config.points.appearance)  # fmt: skip
    return rep


def new_hash_blendshapes(head: Any, neutral: Tensor, config: TrainConfig, expr_rank: int = 0) -> HashBlendshapes:
    """The Gaussians :class:`MeshGaussians` would start with (with ``expr_rank`` private
    blendshapes each), and a hash-grid field sized by the ``hash`` settings over the identity's
    neutral head ``neutral [V, 3]``."""
    h = config.hash
    grid = HashGridSpec(levels=h.levels, log2_size=h.log2_size, features=h.features,
                        min_resolution=h.min_resolution, max_resolution=h.max_resolution)  # fmt: skip
    return HashBlendshapes.on_surface(head, vertices=neutral, grid=grid, rank=h.rank, hidden=h.hidden,
                                      groups=h.groups, per_face=config.per_face, per_face_face=config.per_face_face,
                                      sh_degree=config.sh_degree, seed=config.seed, cull_backfacing=config.cull_backfacing,
                                      sh_follows_head=config.sh_follows_head, expr_rank=expr_rank)  # fmt: skip


def seed_hair(rep: MeshGaussians, frames: FrameRenderer, rows: np.ndarray, config: TrainConfig) -> int:
    """Hair/shoulder Gaussians seeded from frames ``rows`` (:func:`~avatar.training.seeding.seed_off_mesh`)."""
    clip = frames.clip
    with torch.no_grad():
        params = frames.params(rows)
        verts = frames.head_vertices(params)
    return seed_off_mesh(rep, frames.head, verts, clip.images[rows], clip.mattes[rows], clip.viewmat, clip.Ks[rows],
                         stride=config.seed_stride, head_poses=params_pose(params), body=params.get(BODY),
                         turn=config.body_rotation, options=frames.options)  # fmt: skip


@torch.no_grad()
def init_colors_from_frames(rep: MeshGaussians, frames: FrameRenderer, rows: np.ndarray) -> Tensor:
    """Base colour of each Gaussian = mean of the frame colours at its projection over ``rows``
    where it is visible (depth within 5 mm of the mesh's z-buffer) and in the matte. Gaussians
    never seen take the colour of their nearest seen neighbours on the neutral head (the back of
    the scalp gets hair colour, not an average of the face). Returns the ``[N]`` seen mask."""
    from avatar.render.mesh import rasterize_triangles

    clip, head = frames.clip, frames.head
    W, H = clip.size
    acc = torch.zeros(rep.num_gaussians, 3, dtype=torch.float64)
    cnt = torch.zeros(rep.num_gaussians, dtype=torch.float64)
    vm = clip.viewmat.double().cpu()
    faces = head.faces.cpu().numpy()
    for r in rows:
        verts = frames.head_vertices(frames.params([r]))
        means = rep(verts).means[0].double().cpu()
        cam = means @ vm[:3, :3].T + vm[:3, 3]
        uv = cam @ clip.Ks[r].double().T
        px = (uv[:, :2] / uv[:, 2:].clamp_min(1e-6)).floor().long()
        inside = (cam[:, 2] > 0) & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
        frags = rasterize_triangles(verts[0].double().cpu().numpy(), faces, vm.numpy(), clip.Ks[r].double().numpy(), W, H)
        depth = torch.from_numpy(frags.depth)
        x, y = px[:, 0].clamp(0, W - 1), px[:, 1].clamp(0, H - 1)
        vis = inside & (cam[:, 2] <= depth[y, x] + 0.005) & (torch.from_numpy(np.array(clip.mattes[r]))[y, x] > 127)
        img = torch.from_numpy(np.array(clip.images[r])).double() / 255.0
        acc[vis] += img[y[vis], x[vis]]
        cnt[vis] += 1
    seen = cnt > 0
    if not seen.any():
        return seen
    rgb = torch.empty(rep.num_gaussians, 3, dtype=torch.float64)
    rgb[seen] = acc[seen] / cnt[seen, None]
    unseen = ~seen
    if unseen.any():
        pos = rep(frames.head_vertices({})).means[0].double().cpu()
        rgb[unseen] = nearest_colors(pos[unseen], pos[seen], rgb[seen])
    rep.set_colors(rgb.float().to(frames.device))
    return seen


@torch.no_grad()
def close_unseen_surface(rep: MeshGaussians, seen: Tensor, opacity: float = 0.95, grow: float = 1.5) -> int:
    """Make the surface no frame shows (the back of the scalp and neck: ``free`` Gaussians not in
    ``seen``) an opaque shell: opacity ``opacity``, in-plane scale x ``grow``. With back-face
    culling nothing trains them, and at their initial 0.7 opacity on flat, gapped discs a novel
    view from behind saw through them to the inside of the face. Returns how many were closed."""
    shell = (~seen.to(rep.region.device)) & (rep.region == FREE)
    rep.opacity_logit[shell] = math.log(opacity / (1.0 - opacity))
    rep.log_scale[shell, :2] += math.log(grow)
    return int(shell.sum())


def nearest_colors(query: Tensor, points: Tensor, colors: Tensor, k: int = 8, chunk: int = 2048) -> Tensor:
    """Mean colour of the ``k`` nearest ``points`` for each ``query`` point (``[Q, 3]``, ``[P, 3]``,
    ``[P, 3]`` -> ``[Q, 3]``), in chunks to bound memory."""
    k = min(k, points.shape[0])
    out = torch.empty(query.shape[0], 3, dtype=colors.dtype)
    for i in range(0, query.shape[0], chunk):
        idx = torch.cdist(query[i : i + chunk], points).topk(k, largest=False).indices  # [q, k]
        out[i : i + chunk] = colors[idx].mean(1)
    return out
