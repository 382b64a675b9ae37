"""Mesh-bound Gaussians (in the spirit of GaussianAvatars, Qian et al. 2024).

Every Gaussian belongs to one triangle of the head mesh. Its centre, rotation and scale live in
that triangle's frame (:func:`~avatar.representations.geometry.triangle_frames`):

    mean_world  = origin_f + k_f * R_f @ offset            (offset in triangle units)
    R_world     = R_f @ R(rot)                             (rot: local wxyz quaternion)
    scale_world = k_f * exp(log_scale)

with origin_f the centroid, R_f (edge, in-plane perpendicular, normal) and k_f = sqrt(2 area_f).
So a Gaussian follows identity, expression, jaw, neck and eye motion, and grows or shrinks with
its triangle. Opacity (a logit) and colour (SH coefficients, degree configurable) are learnable.

Regions (``REGIONS``) control how far a Gaussian may go:
    face   - the landmark-covered front of the face: offset regularised, scale limited.
    free   - scalp, ears, neck: allowed to drift off the surface (hair, shoulders), weakly regularised.
    eye    - eyeballs: offset and scale are clamped to the triangle, so irises rotate with the
             eye and never smear across the lids.
    mouth  - mouth interior (tongue and other closed inner parts): clamped like the eyes, so
             nothing bridges the lips when the jaw opens.
    hair   - off-surface Gaussians seeded where the frames show foreground the mesh does not
             cover (hair, shoulders; :mod:`avatar.training.seeding`), bound to a nearby scalp or
             neck triangle far outside it; their offset is free (no pull back to the surface).
    teeth  - two arcs behind the lips (:func:`avatar.training.seeding.seed_teeth`): the lower
             bound to the tongue, which the jaw carries, the upper to the face triangles nearby
             that expressions move least. AnnyHead has no teeth, so without them the tongue
             carried the teeth's colours and a mouth opened wider than in the training frames
             showed them smeared over it. Offset free like hair; no expression blendshapes.

Back-face culling (``cull_backfacing``, on for new avatars): the face, free and eye Gaussians carry
their triangle's normal (``Splats.normals``) and fade out when it faces away from the camera
(:func:`~avatar.representations.base.facing_factor`). Without it, a video that only shows the
front trains the back of the scalp as a second, see-through layer of the face, and a novel view
from behind shows blotches of face colour; with it nothing the camera cannot see is trained, and
the trainer closes the unseen back as an opaque shell in the colour of its seen neighbours.
Off-surface hair, the mouth interior and the teeth are never culled.

View-dependent colour (``sh_follows_head``, on for new avatars): the light in a phone clip is fixed
and the head turns under it, so the shading a Gaussian shows depends on the view direction *in the
head's frame*, not in the world. The SH coefficients are therefore stored in the head frame at the
reference pose and turned each frame by the head's rotation away from it
(:func:`~avatar.render._sh.sh_rotation`), giving per-frame colours ``[B, N, K, 3]``. In world
space the view direction barely changes when the head turns in front of a still camera, so the
colour could not follow the shading; in the head frame camera and light sit in a fixed relation,
and the view direction tells the SH where the light is.

Hair and shoulders do not all turn with the head: long hair rests on the shoulders, and the
shoulders stay where the body is. So a ``hair`` Gaussian blends two positions with a learnt weight
``w = sigmoid(follow_logit)``: the head-bound one above and a body-fixed one, ``static_pos``,
stored in the head frame at the clip's ``reference_pose`` (its mean head pose)::

    mean = w * mean_head + (1 - w) * B(t) @ static_pos       when the frame's head pose is given
    mean = w * mean_head + (1 - w) * static_pos              otherwise (the head at rest, e.g. exports)

The body frame ``B(t)`` (:meth:`MeshGaussians.body_frame`) starts from the reference pose, is
moved by the frame's tracked body motion when there is one (``body``: a world translation measured
from the mattes below the chin, :func:`avatar.training.data.body_motion`; the person leaning or
shifting in the chair, which the head pose does not tell), and follows the head by two shares in
0..1, both learnable:
    ``body_translation`` (one per axis, shared by all hair) of the head's translation away from
        the reference. At 1 the body carries the neck: when the person shifts, shoulders and
        hanging hair shift with the head. At 0 the body stays put, as when the tracked translation
        is the head bobbing on the neck.
    ``body_rotation`` (one per Gaussian, ``sigmoid(turn_logit)``) of the head's rotation away from
        the reference (axis-angle). A seated speaker's shoulders stay while the head turns (0); in
        a selfie clip the torso, and the hair resting on it, lean with the head (toward 1). Each
        Gaussian learns its own: one clip-wide share of 1 gained 0.8 dB held out on one shared
        clip and lost up to 4 dB on others; learnt per Gaussian from 0.02 it keeps most of that
        gain and costs the others at most about 0.3 dB (bench/bench_avatar.py).

Expression-dependent appearance (``expr_rank`` > 0; off unless asked for, the trainer asks for
it): a mesh follows an expression, but what the camera sees changes beyond that - teeth hide
behind puckered lips, creases darken, the lids fold. Each Gaussian may carry ``expr_rank`` colour
and offset blendshapes, mixed by weights ``code_n`` from the frame's ARKit weights through a
shared learnt projection ``expr_proj [E, expr_rank]``. Each Gaussian hears only the channels
that move the head near its triangle (``expr_reach [F, E]``: a vertex within 1.5 cm of the
triangle's centroid moves more than 1 mm per unit on the neutral head model; the margin lets
the eyeballs darken under closing lids and skin just beside a moving part crease), so opening the
jaw cannot repaint the brow:

    code_n(t) = (expression(t) * expr_reach[face_n]) @ expr_proj
    sh_dc(t)  = sh_dc  + code_n(t) @ expr_color[n]     ([r] @ [r, 3], per Gaussian n)
    offset(t) = offset + code_n(t) @ expr_offset[n]    (triangle units; eye/mouth clamps still apply)

With no expression given (exports, the viewer's rest pose) nothing is added. Off-surface hair
carries none (the deltas of its neighbours would swing it with the mouth), nor do the teeth.

Seeded hair starts at w = 0.5 and at the rotation share the seeding is given; every other Gaussian
follows the head (``follow_logit`` and ``turn_logit`` unused).
"""
from __future__ import annotations

import functools
import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from avatar.errors import AvatarError
from avatar.render._sh import sh_rotation
from avatar.representations.base import Representation, Splats
from avatar.representations.geometry import matrix_to_quat, quat_multiply, quat_to_matrix, triangle_frames


class LocalState(NamedTuple):
    """What a batch of frames' expressions make of the Gaussians in their triangles' frames
    (:meth:`MeshGaussians.local_state`)."""

    code: Tensor | None  # [B, N, expr_rank] blendshape weights, None without blendshapes/expression
    offset: Tensor  # [B, N, 3] (or [1, N, 3]) offsets in triangle units, eye/mouth clamps applied
    log_scale: Tensor  # [N, 3], clamps applied


def _share_logit(value: float | Tensor) -> Tensor:
    v = torch.as_tensor(value, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
    return torch.log(v / (1 - v))


def _set_share(logit: nn.Parameter, value: float | Tensor) -> None:
    with torch.no_grad():
        logit.copy_(_share_logit(value).to(logit).expand_as(logit))


REGIONS = ("face", "free", "eye", "mouth", "hair", "teeth")
FACE, FREE, EYE, MOUTH, HAIR, TEETH = range(6)
SH_C0 = 0.28209479177387814
# Limits for the clamped (eye, mouth) regions, in triangle units: in-plane offset, normal offset,
# largest scale.
_RIGID_INPLANE, _RIGID_NORMAL, _RIGID_SCALE = 0.6, 0.05, 0.5
# An expression channel reaches a triangle's Gaussians when a full unit of it moves a vertex within
# _EXPR_NEAR of the triangle's centroid further than _EXPR_MOVE (metres, on the neutral head).
_EXPR_MOVE, _EXPR_NEAR = 1e-3, 0.015


def expression_reach(head: Any, near: float = _EXPR_NEAR, move: float = _EXPR_MOVE) -> Tensor:
    """``[F, E]`` 1 where expression channel e moves the head near triangle f (see the module
    docstring), else 0."""
    E = len(head.expression_names)
    with torch.no_grad():
        rest = head().vertices
        moved = ((head(expression=torch.eye(E, dtype=head.dtype, device=head.device)).vertices - rest).norm(dim=-1)
                 > move).cpu().float()  # [E, V]  # fmt: skip
        v = rest[0].cpu().float()
        centroid = v[head.faces.cpu()].mean(1)  # [F, 3]
        out = torch.cat([((torch.cdist(c, v) < near).float() @ moved.T > 0).float() for c in centroid.split(1024)])
    return out


def _mix(code: Tensor, shapes: Tensor) -> Tensor:
    """``[B, N, r]`` weights x ``[N, r, 3]`` blendshapes -> ``[B, N, 3]``. On the CPU a C++ kernel
    (:func:`avatar.render._cpu.mix`; one pass each way, no ``[B, N, r, 3]`` temporary): half the
    time of :func:`_mix_reference` forward and backward at N = 36k, r = 8."""
    if code.device.type == "cpu" and code.dtype == shapes.dtype and code.dtype in (torch.float32, torch.float64) \
            and _cpu_kernels():
        from avatar.render._cpu import mix

        return mix(code, shapes)
    return _mix_reference(code, shapes)


def _mix_reference(code: Tensor, shapes: Tensor) -> Tensor:
    """:func:`_mix` in torch ops (GPU, and CPUs without a compiler): a broadcast product; as an
    einsum it became N tiny matrix products, 5x slower on CPU."""
    return (code[..., None] * shapes[None]).sum(-2)


@functools.cache
def _cpu_kernels() -> bool:
    """Whether the CPU kernels load here (built once; a missing compiler is not retried per call)."""
    from avatar.render._cpu_backend import has_cpu_kernels

    return has_cpu_kernels()


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] -> the degree-0 SH coefficient that renders it (3DGS convention)."""
    return (rgb - 0.5) / SH_C0


def face_regions(head: Any, vertices: Tensor | None = None, face_radius: float = 0.012) -> Tensor:
    """``[F]`` int64 region per triangle of a head model (see the module docstring).

    eye: all corners skinned > 0.5 to an eye joint; mouth: triangles of the smaller connected
    components that are not eyes (AnnyHead's tongue); face: main-component triangles whose
    centroid lies within ``face_radius`` m of a face landmark (the 468-point mesh part), on the
    neutral head; free: the rest.
    """
    from avatar.models.landmark_embedding import connected_components

    faces = head.faces.cpu()
    if vertices is None:
        with torch.no_grad():
            vertices = head().vertices[0]
    v = vertices.detach().cpu().double()
    weights = head.skin_weights.detach().cpu().double()
    eye_joints = [i for i, n in enumerate(head.joint_names) if "eye" in n.lower()]
    region = torch.full((faces.shape[0],), FREE, dtype=torch.long)
    comp = torch.from_numpy(connected_components(faces.numpy(), v.shape[0]))
    if eye_joints:
        eye_v = weights[:, eye_joints].sum(1) > 0.5
        is_eye = eye_v[faces].all(1)
    else:
        is_eye = torch.zeros(faces.shape[0], dtype=torch.bool)
    in_small = (comp[faces] != 0).all(1)
    if head.landmark_faces.numel():
        lm = head.landmarks_from_vertices(v[None].to(head.dtype).to(head.device))[0].cpu().double()[:468]
        cent = v[faces].mean(1)
        near = torch.cdist(cent, lm).amin(1) < face_radius
        region[near & (comp[faces[:, 0]] == 0)] = FACE
    region[in_small & ~is_eye] = MOUTH
    region[is_eye] = EYE
    return region


class MeshGaussians(Representation):
    """Gaussians bound to the triangles of a head mesh. Build with :meth:`on_surface`.

    >>> rep = MeshGaussians.on_surface(head, per_face=1, per_face_face=3)  # doctest: +SKIP
    >>> splats = rep(head(expression=expr).vertices)                        # doctest: +SKIP
    >>> splats.means.shape                                                   # [B, N, 3]
    """

    kind: ClassVar[str] = "mesh_gaussians"

    def __init__(self, faces: Tensor, face_id: Tensor, region: Tensor, sh_degree: int = 0,
                 cull_backfacing: bool = False, sh_follows_head: bool = False, expr_channels: int = 0,
                 expr_rank: int = 0) -> None:  # fmt: skip
        super().__init__()
        if not 0 <= sh_degree <= 3:
            raise AvatarError(f"sh_degree must be 0..3, got {sh_degree}")
        n = int(face_id.shape[0])
        self.max_sh_degree = int(sh_degree)
        # Surface Gaussians (face, free, eye) fade when their triangle faces away from the camera
        # (Splats.normals): see the module docstring.
        self.cull_backfacing = bool(cull_backfacing)
        # View-dependent colour (SH degree >= 1) is stored in the head's frame at the reference
        # pose and turned with the head (see the module docstring).
        self.sh_follows_head = bool(sh_follows_head)
        self.register_buffer("faces", faces.long().clone())
        self.register_buffer("face_id", face_id.long().clone())
        self.register_buffer("region", region.long().clone())
        k = (sh_degree + 1) ** 2
        self.offset = nn.Parameter(torch.zeros(n, 3))
        self.rot = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1))
        self.log_scale = nn.Parameter(torch.full((n, 3), math.log(0.3)))
        self.opacity_logit = nn.Parameter(torch.full((n,), math.log(0.7 / 0.3)))
        self.sh_dc = nn.Parameter(torch.zeros(n, 3))
        self.sh_rest = nn.Parameter(torch.zeros(n, k - 1, 3))
        self.follow_logit = nn.Parameter(torch.full((n,), 20.0))  # hair: head-bound (20: w = 1) vs body-fixed
        # hair only: the share of the head's rotation its body frame turns with (-20: none; module doc)
        self.turn_logit = nn.Parameter(torch.full((n,), -20.0))
        self.static_pos = nn.Parameter(torch.zeros(n, 3))  # hair only: body-fixed position (see module doc)
        self.register_buffer("reference_pose", torch.eye(4))
        # Per axis, how far the body frame moves with the head's translation: sigmoid(body_logit), 1 = the
        # body carries the neck, 0 = it stays put (see the module docstring). Learnt per clip.
        self.body_logit = nn.Parameter(torch.full((3,), -20.0))
        # Expression blendshapes of colour and offset (module docstring); None when off.
        self.expr_rank = int(expr_rank) if expr_channels > 0 else 0
        self.expr_channels = int(expr_channels) if self.expr_rank else 0
        self.expr_proj: nn.Parameter | None = None
        self.register_buffer("expr_reach", None)
        self.expr_color: nn.Parameter | None = None
        self.expr_offset: nn.Parameter | None = None
        if self.expr_rank:
            g = torch.Generator().manual_seed(0)
            self.expr_proj = nn.Parameter(torch.randn(self.expr_channels, self.expr_rank, generator=g) / self.expr_channels**0.5)
            self.expr_color = nn.Parameter(torch.zeros(n, self.expr_rank, 3))
            self.expr_offset = nn.Parameter(torch.zeros(n, self.expr_rank, 3))
            self.expr_reach = torch.ones(faces.shape[0], self.expr_channels)  # [F, E] 0/1, a buffer

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def on_surface(
        cls,
        head: Any,
        *,
        per_face: int = 1,
        per_face_face: int = 3,
        sh_degree: int = 0,
        vertices: Tensor | None = None,
        seed: int = 0,
        cull_backfacing: bool = True,
        sh_follows_head: bool = True,
        expr_rank: int = 0,
    ) -> "MeshGaussians":
        """Gaussians sampled on the surface: ``per_face`` per triangle, ``per_face_face`` on the
        face region, flat (thin along the normal) and sized to tile their triangle.
        ``expr_rank``: expression blendshapes per Gaussian (module docstring), over the head
        model's expression channels."""
        region_f = face_regions(head, vertices)
        counts = torch.where(region_f == FACE, per_face_face, per_face)
        face_id = torch.repeat_interleave(torch.arange(region_f.shape[0]), counts)
        channels = len(getattr(head, "expression_names", ())) if expr_rank else 0
        rep = cls(head.faces.cpu(), face_id, region_f[face_id], sh_degree, cull_backfacing, sh_follows_head, channels, expr_rank)
        if rep.expr_rank:
            rep.expr_reach.copy_(expression_reach(head))
        g = torch.Generator().manual_seed(seed)
        # Uniform barycentrics (square-root trick); the first sample of a triangle is its centroid.
        r1, r2 = torch.rand(face_id.shape[0], generator=g), torch.rand(face_id.shape[0], generator=g)
        s = r1.sqrt()
        bary = torch.stack([1 - s, s * (1 - r2), s * r2], -1)
        first = torch.ones_like(face_id, dtype=torch.bool)
        first[1:] = face_id[1:] != face_id[:-1]
        bary[first] = 1.0 / 3.0
        if vertices is None:
            with torch.no_grad():
                vertices = head().vertices[0]
        v = vertices.detach().cpu().float()[None]
        origin, rot, k = triangle_frames(v, rep.faces)
        corners = v[0][rep.faces[face_id]]  # [N, 3, 3]
        p = (bary[..., None] * corners).sum(1)
        local = ((p - origin[0, face_id])[:, None, :] @ rot[0, face_id]).squeeze(1) / k[0, face_id, None]
        n_here = counts[face_id].float()
        plane = 0.6 * torch.sqrt(1.0 / (2.0 * n_here))
        with torch.no_grad():
            rep.offset.copy_(local)
            rep.log_scale.copy_(torch.stack([plane, plane, 0.3 * plane], -1).log())
            rep.sh_dc.copy_(rgb_to_sh_dc(torch.tensor([0.8, 0.62, 0.52])).expand_as(rep.sh_dc))
        return rep

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "sh_degree": self.max_sh_degree, "num_gaussians": self.num_gaussians,
                "cull_backfacing": self.cull_backfacing, "sh_follows_head": self.sh_follows_head,
                "expr_channels": self.expr_channels, "expr_rank": self.expr_rank}  # fmt: skip

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> "MeshGaussians":
        # Bundles written before back-face culling were trained without it (their faces rely on
        # the layers behind them): they keep rendering without it.
        # Likewise bundles from before view-dependent colour turned with the head (world-frame SH).
        rep = cls(state["faces"], state["face_id"], state["region"], int(config["sh_degree"]),
                  bool(config.get("cull_backfacing", False)), bool(config.get("sh_follows_head", False)),
                  int(config.get("expr_channels", 0)), int(config.get("expr_rank", 0)))  # fmt: skip
        # Bundles written before hair could stay with the body: every Gaussian follows the head.
        defaults = {"follow_logit": torch.full_like(rep.follow_logit, 20.0), "static_pos": rep.static_pos.detach(),
                    "reference_pose": rep.reference_pose, "body_logit": rep.body_logit.detach(),
                    "turn_logit": torch.full_like(rep.turn_logit, -20.0)}  # fmt: skip
        rep.load_state_dict({**defaults, **state})
        return rep

    @property
    def num_gaussians(self) -> int:
        return int(self.face_id.shape[0])

    # --- appearance ---------------------------------------------------------------------------
    def set_colors(self, rgb: Tensor, where: Tensor | None = None) -> None:
        """Set the base colour (degree-0 SH) of all Gaussians, or of those in mask ``where``."""
        dc = rgb_to_sh_dc(rgb.to(self.sh_dc))
        with torch.no_grad():
            if where is None:
                self.sh_dc.copy_(dc)
            else:
                self.sh_dc[where] = dc[where] if dc.shape[0] == self.num_gaussians else dc

    def append(self, face_id: Tensor, region: Tensor, offset: Tensor, log_scale: Tensor, rgb: Tensor,
               opacity: float = 0.7, static_pos: Tensor | None = None, turn: float = 0.0) -> None:  # fmt: skip
        """Add Gaussians (``[M]`` triangle ids and regions, ``[M, 3]`` local offsets, log-scales and
        RGB colours; identity rotation, no higher SH; ``static_pos`` for hair, in the body frame of
        rotation share ``turn``; ``w`` starts at 0.5). Call before building the optimiser."""
        m = int(face_id.shape[0])
        dev = self.offset.device
        params = self.primitive_parameters()
        new = {
            "offset": offset, "rot": self.rot.new_tensor([1.0, 0.0, 0.0, 0.0]).repeat(m, 1), "log_scale": log_scale,
            "opacity_logit": torch.full((m,), math.log(opacity / (1 - opacity))), "sh_dc": rgb_to_sh_dc(rgb.float()),
            "sh_rest": torch.zeros(m, *self.sh_rest.shape[1:]), "follow_logit": torch.zeros(m),
            "turn_logit": _share_logit(turn).expand(m),
            "static_pos": static_pos if static_pos is not None else torch.zeros(m, 3),
        }  # fmt: skip
        if self.expr_rank:
            new.update(expr_color=torch.zeros(m, self.expr_rank, 3), expr_offset=torch.zeros(m, self.expr_rank, 3))
        self.set_primitives(
            {k: torch.cat([p.detach(), new[k].to(p)]) for k, p in params.items()},
            {"face_id": torch.cat([self.face_id, face_id.long().to(dev)]), "region": torch.cat([self.region, region.long().to(dev)])},
        )  # fmt: skip

    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logit)

    # --- evaluation ---------------------------------------------------------------------------
    def _local(self, offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Effective offset (``[N, 3]``, or ``offset [B, N, 3]`` when given) and log-scale, with
        the eye/mouth clamps applied."""
        offset = self.offset if offset is None else offset
        rigid = (self.region == EYE) | (self.region == MOUTH)
        lim = self.offset.new_tensor([_RIGID_INPLANE, _RIGID_INPLANE, _RIGID_NORMAL])
        offset = torch.where(rigid[:, None], torch.maximum(torch.minimum(offset, lim), -lim), offset)
        log_scale = torch.where(rigid[:, None], self.log_scale.clamp(max=math.log(_RIGID_SCALE)), self.log_scale)
        return offset, log_scale

    @property
    def body_translation(self) -> Tensor:
        """``[3]`` per-axis fraction (0..1) of the head's translation that the body frame follows."""
        return torch.sigmoid(self.body_logit)

    @property
    def body_rotation(self) -> Tensor:
        """``[N]`` per-Gaussian fraction (0..1) of the head's rotation (axis-angle, away from the
        reference pose) that a hair Gaussian's body frame turns with."""
        return torch.sigmoid(self.turn_logit)

    def set_body_translation(self, value: float | Tensor) -> None:
        _set_share(self.body_logit, value)

    def set_body_rotation(self, value: float | Tensor) -> None:
        """Set every Gaussian's rotation share to ``value`` (a number or ``[N]``)."""
        _set_share(self.turn_logit, value)

    def body_origin(self, head_pose: Tensor, body: Tensor | None = None) -> Tensor:
        """``[B, 3]`` origin of the body frame for head poses ``[B, 4, 4]``: the reference pose's
        translation, moved per axis by ``body_translation`` times the head's translation away from
        it, plus the tracked body motion ``body [B, 3]`` when given."""
        t_ref = self.reference_pose[:3, 3].to(head_pose)
        origin = t_ref + self.body_translation.to(head_pose) * (head_pose[:, :3, 3] - t_ref)
        return origin if body is None else origin + body.to(head_pose)

    def body_frame(self, head_pose: Tensor, share: Tensor | None = None, body: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``([B, M, 3, 3], [B, 3])`` rotations and origin of the body frames for head poses
        ``[B, 4, 4]`` and rotation shares ``share [M]`` (default: every Gaussian's
        ``body_rotation``): body-fixed point m is ``R[:, m] @ static_pos[m] + origin``. Each rotation
        is the reference pose's, turned by its share of the head's rotation away from it; the
        origin is :meth:`body_origin`'s."""
        from avatar.models.rotations import axis_angle_to_matrix, matrix_to_axis_angle

        share = (self.body_rotation if share is None else share).to(head_pose)
        r_ref = self.reference_pose[:3, :3].to(head_pose)
        with torch.no_grad():  # how far the head turned: data, not a parameter of the body frame
            turn = matrix_to_axis_angle(r_ref.T @ head_pose[:, :3, :3])  # [B, 3]
        part = axis_angle_to_matrix((share[None, :, None] * turn[:, None, :]).reshape(-1, 3))
        return r_ref @ part.reshape(head_pose.shape[0], -1, 3, 3), self.body_origin(head_pose, body)

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        return {"body_logit": self.body_logit, **({"expr_proj": self.expr_proj} if self.expr_rank else {})}

    def _frame_offsets(self, code: Tensor | None) -> Tensor:
        """``[B, N, 3]`` offsets at blendshape weights ``code [B, N, r]`` (``[1, N, 3]`` without)."""
        if code is None:
            return self.offset[None]
        return self.offset[None] + _mix(code, self.expr_offset)

    def expression_code(self, expression: Tensor | None) -> Tensor | None:
        """``[B, N, expr_rank]`` each Gaussian's blendshape weights for expressions ``[B, E]`` (0 for
        hair), or None when the representation has no expression blendshapes or no expression is given."""
        if not self.expr_rank or expression is None:
            return None
        if expression.shape[-1] != self.expr_channels:
            raise AvatarError(f"expression has {expression.shape[-1]} channels, this avatar was trained with {self.expr_channels}")
        # per triangle (F is a fifth of N), then gathered: the per-Gaussian product cost 5x a step
        per_face = (expression.to(self.expr_proj)[:, None, :] * self.expr_reach[None]) @ self.expr_proj  # [B, F, r]
        shaped = (self.region != HAIR) & (self.region != TEETH)  # hair and teeth: none (module doc)
        return per_face[:, self.face_id] * shaped.to(per_face)[None, :, None]

    def local_state(self, expression: Tensor | None = None) -> LocalState:
        """The frames' blendshape weights and effective triangle-local offsets and log-scales
        (clamps applied) for expressions ``[B, E]`` (or None). :meth:`forward` and
        :meth:`regularization_terms` both need it: a training step computes it once and passes it
        to both (``local=``) rather than having each derive it from the expression again."""
        code = self.expression_code(expression)
        offset, log_scale = self._local(self._frame_offsets(code))
        return LocalState(code, offset, log_scale)

    def _geometry(self, vertices: Tensor, offset: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(means [B, N, 3], quats [B, N, 4], scales [B, N, 3], normals [B, N, 3] or None)`` in
        world for ``vertices [B, V, 3]`` and :meth:`local_state`'s ``offset`` and ``log_scale``;
        normals (of the surface Gaussians, zero elsewhere) with back-face culling only. With
        ``inference_kernels`` and no gradient recorded, one CPU kernel does it all
        (:func:`avatar.render._cpu.mesh_pose`)."""
        surface = None
        if self.cull_backfacing:
            surface = ((self.region == FACE) | (self.region == FREE) | (self.region == EYE)).to(vertices.dtype)
        if self.inference_kernels and not torch.is_grad_enabled() and vertices.device.type == "cpu" \
                and vertices.dtype in (torch.float32, torch.float64) and _cpu_kernels():
            from avatar.render._cpu import mesh_pose

            return mesh_pose(vertices, self.faces, self.face_id, offset, self.rot, torch.exp(log_scale), surface)
        origin, rot, k = triangle_frames(vertices, self.faces)
        fid = self.face_id
        o, r, s = origin[:, fid], rot[:, fid], k[:, fid]  # [B, N, 3], [B, N, 3, 3], [B, N]
        means = o + s[..., None] * (r * offset[:, :, None, :]).sum(-1)
        quats = quat_multiply(matrix_to_quat(rot)[:, fid], self.rot[None].expand(vertices.shape[0], -1, -1))
        scales = torch.exp(log_scale)[None] * s[..., None]
        normals = None if surface is None else rot[:, fid, :, 2] * surface[None, :, None].to(rot.dtype)
        return means, quats, scales, normals

    def forward(self, vertices: Tensor, sh_degree: int | None = None, head_pose: Tensor | None = None,
                body: Tensor | None = None, expression: Tensor | None = None,
                local: LocalState | None = None) -> Splats:  # fmt: skip
        """``vertices [B, V, 3]`` (a head model's output) -> :class:`Splats` for B frames.

        ``sh_degree``: evaluate up to this degree (default: all stored); 0 still uses SH.
        ``head_pose``: ``[B, 4, 4]`` head-to-world transforms of the frames (global_orient, transl;
        :func:`~avatar.representations.geometry.rigid_transforms`), in the coordinates the
        representation was trained in; body-fixed hair uses it (see the module docstring).
        ``body``: ``[B, 3]`` tracked body motion (world translation away from the reference; used
        with ``head_pose`` only). ``expression``: ``[B, E]`` the frames' expression weights, for
        the expression blendshapes (ignored without them). ``local``: :meth:`local_state` of those
        frames, already computed (then ``expression`` is not read)."""
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise AvatarError(f"vertices must be [B, V, 3], got {list(vertices.shape)}")
        code, offset, log_scale = self.local_state(expression) if local is None else local
        means, quats, scales, normals = self._geometry(vertices, offset, log_scale)
        hair = torch.nonzero(self.region == HAIR).squeeze(-1)
        if hair.numel():  # the blend (module docstring), evaluated for the hair Gaussians only
            static = self.static_pos[hair][None].expand(means.shape[0], -1, -1)
            if head_pose is not None:
                body_rot, origin = self.body_frame(head_pose.to(means), torch.sigmoid(self.turn_logit[hair]), body)
                static = (body_rot @ static[..., None]).squeeze(-1) + origin[:, None]
            w = torch.sigmoid(self.follow_logit[hair])[None, :, None]
            means = means.index_copy(1, hair, w * means[:, hair] + (1.0 - w) * static)
        deg = self.max_sh_degree if sh_degree is None else min(int(sh_degree), self.max_sh_degree)
        colors = torch.cat([self.sh_dc[:, None], self.sh_rest[:, : (deg + 1) ** 2 - 1]], 1)
        if self.sh_follows_head and head_pose is not None and deg > 0:
            turn = head_pose[:, :3, :3].to(colors) @ self.reference_pose[:3, :3].to(colors).T  # [B, 3, 3]
            colors = torch.einsum("bkj,njc->bnkc", sh_rotation(deg, turn), colors)  # per frame
        if code is not None:  # degree 0 is rotation-invariant: add the per-frame base colour change
            dc = _mix(code, self.expr_color)  # [B, N, 3]
            colors = colors.expand(code.shape[0], *colors.shape[-3:]) if colors.dim() == 3 else colors
            colors = torch.cat([colors[:, :, :1] + dc[:, :, None], colors[:, :, 1:]], 2)
        return Splats(means, quats, scales, self.opacities(), colors, deg, normals)

    # --- regularisers -------------------------------------------------------------------------
    def regularization_terms(self, offset_tolerance: float = 0.5, scale_tolerance: float = 1.0,
                             expression: Tensor | None = None, local: LocalState | None = None) -> dict[str, Tensor]:  # fmt: skip
        """Scalar terms for the trainer to weight.

        ``offset``: squared offset beyond ``offset_tolerance`` triangle units from the triangle's
        centroid plane (the normal part counts fully: leaving the surface costs), weighted per
        region (face 1, free 0.1 - hair and shoulders may drift, eye/mouth 10, hair and teeth 0).
        With expression blendshapes and the batch's ``expression [B, E]``, of the offsets at those
        expressions (the blendshapes move Gaussians too, and must not take them where the offset
        may not go).
        ``scale``: squared log-excess of the largest scale over ``scale_tolerance`` triangle units.
        ``expression`` (with expression blendshapes): their squared size, per Gaussian.
        ``local``: :meth:`local_state` of the batch, when the step already has it (then
        ``expression`` is not read).
        """
        _, offset, log_scale = self.local_state(expression) if local is None else local
        w = self.offset.new_tensor([1.0, 0.1, 10.0, 10.0, 0.0, 0.0])[self.region]
        inplane = torch.relu(offset[..., :2].norm(dim=-1) - offset_tolerance)
        normal = offset[..., 2]
        off = (w * (inplane**2 + normal**2)).mean()
        sc = (torch.relu(log_scale.amax(-1) - math.log(scale_tolerance)) ** 2).mean()
        terms = {"offset": off, "scale": sc}
        if self.expr_rank:  # the blendshapes' size per unit of code (the code's scale is free)
            # sum_r |proj_r|^2 |shapes[:, r]|^2 / N: reduced over N before the product (these
            # [N, r, 3] passes are a large share of a CPU step)
            proj2 = self.expr_proj.square().sum(0)  # [r]
            size2 = self.expr_color.square().sum((0, 2)) + self.expr_offset.square().sum((0, 2))
            terms["expression"] = (proj2 * size2).sum() / self.expr_color.shape[0]
        return terms

    # --- per-primitive protocol (densification) -------------------------------------------------
    def primitive_parameters(self) -> dict[str, nn.Parameter]:
        return {"offset": self.offset, "rot": self.rot, "log_scale": self.log_scale,
                "opacity_logit": self.opacity_logit, "sh_dc": self.sh_dc, "sh_rest": self.sh_rest,
                "follow_logit": self.follow_logit, "turn_logit": self.turn_logit,
                "static_pos": self.static_pos,
                **({"expr_color": self.expr_color, "expr_offset": self.expr_offset} if self.expr_rank else {})}  # fmt: skip

    def primitive_buffers(self) -> dict[str, Tensor]:
        return {"face_id": self.face_id, "region": self.region}

    def split_values(self, idx: Tensor, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Each of Gaussians ``idx`` becomes ``n`` children sampled inside it (same triangle),
        with scales divided by ``0.8 n`` (3DGS's rule)."""
        offset, log_scale = self.offset[idx].detach(), self.log_scale[idx].detach()
        r = quat_to_matrix(self.rot[idx].detach())
        eps = torch.randn(n, *offset.shape, generator=generator).to(offset.device)  # CPU generator
        delta = (r[None] @ (eps * log_scale.exp()[None])[..., None]).squeeze(-1)
        out = {name: p[idx].detach().repeat(n, *([1] * (p.dim() - 1))) for name, p in self.primitive_parameters().items()}
        out["offset"] = (offset[None] + delta).reshape(-1, 3)
        out["log_scale"] = (log_scale - math.log(0.8 * n)).repeat(n, 1)
        out.update({name: b[idx].repeat(n) for name, b in self.primitive_buffers().items()})
        return out

    def region_counts(self) -> dict[str, int]:
        counts = np.bincount(self.region.cpu().numpy(), minlength=len(REGIONS))
        return {name: int(c) for name, c in zip(REGIONS, counts)}
