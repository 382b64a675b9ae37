"""Neural points (in the spirit of PointAvatar, Zheng et al. 2023): a point cloud free in the head's
canonical (rest) space, deformed per frame by what a small MLP predicts at each point.

Each point n has a learnable canonical position ``canon`` (metres, the identity's neutral head at
rest), a radius, an opacity and SH colour (as MeshGaussians' Gaussians: the same appearance model,
so a comparison changes the geometry only). With ``appearance = "shaded"`` (PointAvatar's) the
colour is instead an albedo times the irradiance of one learnt light at the point's posed normal
(the seed triangle's, turned with the point; hair and teeth have none and see the light's constant
term): view-independent, and lit consistently when the head turns under the clip's fixed light.

A shared MLP on the canonical position predicts, for all points at once (once per step, not per frame: it does not depend on the frame):

    D_n  = D0_n + reach_n * dD(x_n)          [E, 3] expression displacements (metres per unit)
    s_n  = softmax(log S0_n + dS(x_n))       [J + 1] skinning weights over the head's joints + "body"

where D0, S0 are the mesh's own values at the point's seed (barycentric in the seed triangle of the
neutral head: S0 stored per point; e(t) @ D0 read each frame from the mesh's expression
displacement at the seed's barycentric coordinates, so no [N, E, 3] prior is stored) and the MLP's
output layer starts at zero, so a new avatar moves exactly as the mesh does at its seeds
(tests/test_neural_points.py states the tolerance).
``reach_n`` (0/1 per channel: MeshGaussians' ``expression_reach`` of the seed triangle; none for
hair and teeth) keeps what the MLP learns local: opening the jaw cannot move the forehead. A frame
with expression weights e(t), joint transforms T_j(t) and body frame B(t) places the point at

    x_e  = x_n + e(t) @ D_n
    mean = sum_j s_nj T_j(t) x_e + s_nb B(t) x_n     (linear blend skinning; s_nb: the "body" weight,
                                                      the J + 1 weights sum to 1)

The body frame is MeshGaussians' (reference pose, body motion, per-point rotation share
``turn_logit``); seeded hair starts half body-bound, as MeshGaussians' hair does.

Why joint transforms are fitted from the vertices: a representation is handed the posed vertices
(:class:`~avatar.representations.base.Representation`), not the head model's joints. Since the
vertices are the head model's skinning of its rest vertices with the expression applied (linear in
the expression: ``expr_basis``), each joint's rest -> posed transform is the rigid fit (weighted
Kabsch) of the vertices it drives. With the frame's head pose given, the fit is done in the head's
frame and the pose composed after it, so gradients reach the pose refinements through the pose
(the fitted local motion, jaw and eyes, is not differentiated).

Points are isotropic splats: radius = ``unit * exp(log_scale)`` with ``unit`` the seed triangle's
size (MeshGaussians' triangle units), so the densify strategy's thresholds and the scale
regulariser mean what they mean for Gaussians. Points facing away from the camera fade as surface
Gaussians do: the seed triangle's normal is carried and turned by the point's blended rotation.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from avatar.errors import AvatarError
from avatar.render._sh import sh_bases, sh_rotation
from avatar.representations.base import Representation, Splats
from avatar.representations.geometry import triangle_frames
from avatar.representations.mesh_gaussians import EYE, FACE, FREE, HAIR, SH_C0, TEETH, MeshGaussians, expression_reach

# A joint driving at least this many vertices alone (weight > _PURE) is fitted to those; others
# (the neck chain, which drives no vertex alone) to all vertices weighted by weight^4.
_PURE, _MIN_PURE = 0.99, 8
# Floor of the prior skinning weights before their log (a weight of 0 stays ~0 at the start).
_SKIN_FLOOR = 1e-8


def fit_weights(skin_weights: Tensor) -> Tensor:
    """``[J, V]`` weights with which each joint's transform is fitted to the vertices (see ``_PURE``)."""
    pure = (skin_weights > _PURE).float()
    use_pure = pure.sum(0) >= _MIN_PURE
    return torch.where(use_pure[None], pure, skin_weights**4).T.contiguous()


def fit_joint_transforms(rest: Tensor, posed: Tensor, weights: Tensor) -> Tensor:
    """``[B, J, 4, 4]`` rigid rest -> posed transform of each joint: the weighted least-squares
    (Kabsch) fit of ``rest [B|1, V, 3]`` to ``posed [B, V, 3]`` with ``weights [J, V]``; float64."""
    rest, posed, w = rest.double(), posed.double(), weights.double()
    total = w.sum(1).clamp_min(1e-12)[None, :, None]  # [1, J, 1]
    cp = torch.einsum("jv,bvc->bjc", w, rest) / total
    cq = torch.einsum("jv,bvc->bjc", w, posed) / total
    cov = torch.einsum("jv,bvx,bvy->bjxy", w, rest.expand_as(posed), posed) / total[..., None]
    cov = cov - cp[..., :, None] * cq[..., None, :]
    u, _, vh = torch.linalg.svd(cov)
    v = vh.transpose(-1, -2)
    d = torch.sign(torch.linalg.det(v @ u.transpose(-1, -2)))  # no reflections
    rot = v @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ u.transpose(-1, -2)
    T = torch.zeros(*rot.shape[:-2], 4, 4, dtype=rot.dtype, device=rot.device)
    T[..., :3, :3] = rot
    T[..., :3, 3] = cq - (rot @ cp[..., None]).squeeze(-1)
    T[..., 3, 3] = 1.0
    return T


def seed_barycentric(points: Tensor, corners: Tensor) -> Tensor:
    """``[N, 3]`` barycentric coordinates of ``points [N, 3]`` projected on triangles ``corners
    [N, 3, 3]`` (least squares in the plane), clamped to the triangle."""
    a, b, c = corners.double().unbind(1)
    e1, e2, d = b - a, c - a, points.double() - a
    m = torch.stack([e1, e2], -1)  # [N, 3, 2]
    uv = torch.linalg.lstsq(m, d[..., None]).solution.squeeze(-1)  # [N, 2]
    bary = torch.cat([1.0 - uv.sum(-1, keepdim=True), uv], -1).clamp_min(0.0)
    return (bary / bary.sum(-1, keepdim=True).clamp_min(1e-12)).float()


def _unchanged(kept: tuple[Tensor, ...], now: tuple[Tensor, ...]) -> bool:
    """Whether tensors ``now`` hold what ``kept`` (copies of earlier ones) held: shapes, types, devices, values."""
    return all(a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
               for a, b in zip(kept, now, strict=True))  # fmt: skip


class PointState(NamedTuple):
    """The MLP's outputs at every point (:meth:`NeuralPoints.local_state`), shared by a step's
    forward and regulariser."""

    displacement: Tensor  # [N, E, 3] the MLP's expression displacements (metres; added to the mesh's prior)
    skin: Tensor  # [N, J + 1] skinning weights, the last one "body"
    residual: Tensor  # [N, E * 3 + J + 1] the MLP's raw output (0 at the start)


# The MLP's expression displacements are in centimetres (its outputs stay O(1) for O(1 cm) motion).
_DISPLACEMENT_UNIT = 0.01
POINTS_MLP = ("points_w1", "points_b1", "points_w2", "points_b2", "points_w3", "points_b3")
# The tensors NeuralPoints' constructor takes, in its order (state_dict names).
CONSTRUCTOR_TENSORS = ("canon", "face_id", "region", "unit", "normal", "bary", "prior_skin",
                       "faces", "rest_vertices", "expr_basis", "fit_w", "face_reach")  # fmt: skip
# How a point's colour is made: "sh", view-dependent SH as MeshGaussians' Gaussians; "shaded",
# PointAvatar's albedo times the shading of the point's normal under one learnt light.
APPEARANCES = ("sh", "shaded")
_LIGHT_DEGREE = 2  # the light's irradiance as SH of the normal: degree 2 holds ~99 % of a diffuse one
_LIGHT_BASES = (_LIGHT_DEGREE + 1) ** 2


class NeuralPoints(Representation):
    """Points free in canonical space, deformed by an MLP (module docstring). Build with
    :meth:`from_mesh_gaussians` (the trainer's seeds, colours and hair become points).

    >>> rep = NeuralPoints.from_mesh_gaussians(gaussians, head, neutral, shape)   # doctest: +SKIP
    >>> splats = rep(head(expression=e).vertices, expression=e)                   # doctest: +SKIP
    """

    kind: ClassVar[str] = "neural_points"
    # Borrowed from MeshGaussians: the body frame (reference pose, body motion, rotation share).
    body_translation = MeshGaussians.body_translation
    body_rotation = MeshGaussians.body_rotation
    set_body_translation = MeshGaussians.set_body_translation
    set_body_rotation = MeshGaussians.set_body_rotation
    body_origin = MeshGaussians.body_origin
    body_frame = MeshGaussians.body_frame
    region_counts = MeshGaussians.region_counts
    expr_rank = 0  # no per-primitive blendshapes (the report's field)

    def __init__(self, canon: Tensor, face_id: Tensor, region: Tensor, unit: Tensor, normal: Tensor, bary: Tensor,
                 prior_skin: Tensor, faces: Tensor, rest_vertices: Tensor, expr_basis: Tensor, fit_w: Tensor, face_reach: Tensor,
                 sh_degree: int = 0, cull_backfacing: bool = False, sh_follows_head: bool = False, hidden: int = 64,
                 frequencies: int = 4, seed: int = 0, appearance: str = "sh") -> None:  # fmt: skip
        """Per point ``[N, ...]``: canonical positions (also their seeds), seed triangles, regions,
        triangle sizes, canonical normals (zero: never culled), barycentric coordinates ``[N, 3]`` of
        the seed in its triangle (zero: no expression prior) and prior skinning weights ``[N, J + 1]``.
        Shared: the head's triangles ``[F, 3]``, the neutral head ``[V, 3]``, its expression basis
        ``[E, V, 3]``, the joints' fit weights ``[J, V]`` and each triangle's channels ``[F, E]``."""
        super().__init__()
        if not 0 <= sh_degree <= 3 or hidden < 1 or frequencies < 0:
            raise AvatarError(f"neural points need sh_degree 0..3, hidden >= 1, frequencies >= 0 "
                              f"(got {sh_degree}, {hidden}, {frequencies})")  # fmt: skip
        if appearance not in APPEARANCES:
            raise AvatarError(f"neural points' appearance must be one of {', '.join(APPEARANCES)}, got {appearance!r}")
        n, E, J = canon.shape[0], expr_basis.shape[0], fit_w.shape[0]
        if bary.shape != (n, 3) or prior_skin.shape != (n, J + 1):
            raise AvatarError(f"priors must be [N, 3] and [N, {J + 1}], got {list(bary.shape)}, {list(prior_skin.shape)}")
        self.max_sh_degree, self.cull_backfacing, self.sh_follows_head = int(sh_degree), bool(cull_backfacing), bool(sh_follows_head)
        self.hidden, self.frequencies, self.appearance = int(hidden), int(frequencies), appearance
        k = (sh_degree + 1) ** 2
        self.canon = nn.Parameter(canon.detach().float().clone())
        self.log_scale = nn.Parameter(torch.full((n, 1), math.log(0.3)))
        self.opacity_logit = nn.Parameter(torch.full((n,), math.log(0.7 / 0.3)))
        self.sh_dc = nn.Parameter(torch.zeros(n, 3))
        self.sh_rest = nn.Parameter(torch.zeros(n, k - 1, 3))
        self.turn_logit = nn.Parameter(torch.full((n,), -20.0))
        self.body_logit = nn.Parameter(torch.full((3,), -20.0))
        # "shaded": one light for the clip, irradiance as SH of the normal, starting as uniform 1
        if appearance == "shaded":
            light = torch.zeros(_LIGHT_BASES, 3)
            light[0] = 1.0 / SH_C0
            self.light = nn.Parameter(light)
        else:
            self.register_parameter("light", None)
        for name, value in (("seed", canon.float()), ("face_id", face_id.long()), ("region", region.long()),
                            ("unit", unit.float()), ("normal", normal.float()), ("bary", bary.float()),
                            ("prior_skin", prior_skin.float()), ("faces", faces.long()), ("rest_vertices", rest_vertices.float()),
                            ("expr_basis", expr_basis.float()), ("fit_w", fit_w.float()),
                            ("face_reach", face_reach.float())):  # fmt: skip
            self.register_buffer(name, value.detach().clone().contiguous())
        self.register_buffer("reference_pose", torch.eye(4))
        lo, hi = self.rest_vertices.amin(0), self.rest_vertices.amax(0)
        self.register_buffer("domain", torch.stack([(lo + hi) / 2, (hi - lo).max().repeat(3)]))  # centre, size
        g = torch.Generator().manual_seed(seed)
        fan_in, out = 3 + 6 * self.frequencies, E * 3 + J + 1

        def uniform(i: int, o: int) -> nn.Parameter:  # He-uniform for the ReLU layers
            return nn.Parameter((torch.rand(i, o, generator=g) * 2 - 1) * math.sqrt(6.0 / i))

        self.points_w1, self.points_b1 = uniform(fan_in, self.hidden), nn.Parameter(torch.zeros(self.hidden))
        self.points_w2, self.points_b2 = uniform(self.hidden, self.hidden), nn.Parameter(torch.zeros(self.hidden))
        # The output layer at zero: a new avatar moves as the mesh does at its seeds.
        self.points_w3, self.points_b3 = nn.Parameter(torch.zeros(self.hidden, out)), nn.Parameter(torch.zeros(out))

    # --- construction -------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_mesh_gaussians(cls, rep: MeshGaussians, head: Any, neutral: Tensor, shape: Tensor | None = None,
                            hidden: int = 64, frequencies: int = 4, seed: int = 0, appearance: str = "sh") -> "NeuralPoints":  # fmt: skip
        """Points where ``rep``'s Gaussians are on the neutral head ``neutral [V, 3]`` (identity
        ``shape [S]``), with their colours, opacities, regions and hair's body share; radius: each
        Gaussian's largest scale. Priors: the seed triangle's barycentric values."""
        dev = neutral.device
        neutral = neutral.detach().float()
        splats = rep(neutral[None])
        canon, radius = splats.means[0], splats.scales[0].amax(-1)
        faces, fid = rep.faces.to(dev), rep.face_id.to(dev)
        _, rot, size = triangle_frames(neutral[None], faces)
        unit = size[0, fid]
        tri = faces[fid]  # [N, 3]
        bary = seed_barycentric(canon, neutral[tri])
        E = len(head.expression_names)
        eye = torch.eye(E, dtype=head.dtype, device=dev)
        shape_b = None if shape is None else shape.to(head.dtype)[None].expand(E, -1)
        basis = (head(shape=shape_b, expression=eye).vertices.float() - neutral[None])  # [E, V, 3]
        hair, teeth = rep.region == HAIR, rep.region == TEETH
        skin = (bary[..., None] * head.skin_weights.float().to(dev)[tri]).sum(1)  # [N, J]
        body = torch.where(hair, 1.0 - torch.sigmoid(rep.follow_logit), torch.zeros_like(rep.follow_logit))
        prior_skin = torch.cat([skin * (1.0 - body)[:, None], body[:, None]], 1)
        surface = (rep.region == FACE) | (rep.region == FREE) | (rep.region == EYE)
        normal = rot[0, fid, :, 2] * surface[:, None].float()
        out = cls(canon, fid, rep.region, unit, normal, bary * (~hair).float()[:, None], prior_skin, faces, neutral, basis,
                  fit_weights(head.skin_weights.float()).to(dev), expression_reach(head).to(dev), rep.max_sh_degree,
                  rep.cull_backfacing, rep.sh_follows_head, hidden, frequencies, seed, appearance).to(dev)  # fmt: skip
        out.log_scale.copy_(torch.log(radius / unit)[:, None])
        for name in ("opacity_logit", "sh_dc", "sh_rest", "turn_logit", "body_logit"):
            getattr(out, name).copy_(getattr(rep, name))
        out.reference_pose.copy_(rep.reference_pose)
        return out

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "sh_degree": self.max_sh_degree, "cull_backfacing": self.cull_backfacing,
                "sh_follows_head": self.sh_follows_head, "hidden": self.hidden, "frequencies": self.frequencies,
                "appearance": self.appearance}  # fmt: skip

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> "NeuralPoints":
        rep = cls(*(state[k] for k in CONSTRUCTOR_TENSORS),
                  int(config["sh_degree"]), bool(config["cull_backfacing"]), bool(config["sh_follows_head"]),
                  int(config["hidden"]), int(config["frequencies"]), appearance=config.get("appearance", "sh"))  # fmt: skip
        rep.load_state_dict(state)
        return rep

    @property
    def num_gaussians(self) -> int:
        return int(self.canon.shape[0])

    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logit)

    # --- the deformation MLP --------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """``[N, 3 + 6 F]`` canonical positions in the head's box (-0.5..0.5), and their sines and
        cosines at F octaves."""
        u = (x - self.domain[0]) / self.domain[1]
        if not self.frequencies:
            return u
        ang = u[:, None, :] * (math.pi * 2.0 ** torch.arange(self.frequencies, device=x.device, dtype=x.dtype))[:, None]
        return torch.cat([u, ang.sin().flatten(1), ang.cos().flatten(1)], 1)

    def local_state(self, expression: Tensor | None = None) -> PointState:
        """The MLP at every point, once for all frames (``expression`` is not needed: the
        deformation is a function of the canonical position). Without gradients (evaluation, pose
        refinement, the viewer) it is kept until a tensor it reads changes: those draw many
        frames of one avatar, and the MLP is a large part of a frame's cost."""
        if torch.is_grad_enabled():
            return self._local_state()
        # Compared by value: an optimiser may write through ``.data``, which no version counter sees.
        # The copies are small (the MLP's weights, [N, 3] positions) beside what they save.
        inputs = (self.canon, self.face_id, self.region, self.prior_skin, *(getattr(self, name) for name in POINTS_MLP))
        cached = self.__dict__.get("_cached_state")
        if cached is None or not _unchanged(cached[0], inputs):
            cached = (tuple(t.detach().clone() for t in inputs), self._local_state())
            self.__dict__["_cached_state"] = cached  # a plain attribute: not state, not a submodule
        return cached[1]

    def _local_state(self) -> PointState:
        h = torch.relu(self.encode(self.canon) @ self.points_w1 + self.points_b1)
        h = torch.relu(h @ self.points_w2 + self.points_b2)
        out = h @ self.points_w3 + self.points_b3
        n, E = self.canon.shape[0], self.expr_basis.shape[0]
        heard = self.face_reach[self.face_id] * ((self.region != HAIR) & (self.region != TEETH)).float()[:, None]
        # split, not two slices: a slice's backward fills a zero tensor the size of ``out``
        d_out, s_out = out.split([E * 3, out.shape[1] - E * 3], 1)
        disp = d_out.reshape(n, E, 3) * (heard[..., None] * _DISPLACEMENT_UNIT)
        skin = torch.softmax(torch.log(self.prior_skin.clamp_min(_SKIN_FLOOR)) + s_out, -1)
        return PointState(disp, skin, out)

    # --- posing ---------------------------------------------------------------------------------
    def _expression(self, expression: Tensor | None, like: Tensor) -> Tensor:
        E = self.expr_basis.shape[0]
        if expression is None:
            return like.new_zeros(1, E)
        if expression.dim() != 2 or expression.shape[-1] != E:
            raise AvatarError(f"expression must be [B, {E}] (the channels this avatar was trained with), got {list(expression.shape)}")
        return expression.to(like)

    def joint_transforms(self, vertices: Tensor, rest: Tensor, head_pose: Tensor | None) -> Tensor:
        """``[B, J, 4, 4]`` rest -> posed joint transforms fitted to ``vertices [B, V, 3]`` from the
        unposed head with the frames' expressions ``rest [B|1, V, 3]`` (module docstring): in the
        head's frame and composed with ``head_pose`` when given."""
        if head_pose is None:
            return fit_joint_transforms(rest.detach(), vertices.detach(), self.fit_w).to(vertices)
        pose = head_pose.to(vertices)
        local = (vertices.detach() - pose[:, None, :3, 3].detach()) @ pose[:, :3, :3].detach()  # R^T (v - t)
        return pose[:, None] @ fit_joint_transforms(rest.detach(), local, self.fit_w).to(vertices)

    def forward(self, vertices: Tensor, sh_degree: int | None = None, head_pose: Tensor | None = None,
                body: Tensor | None = None, expression: Tensor | None = None,
                local: PointState | None = None) -> Splats:  # fmt: skip
        """``vertices [B, V, 3]`` -> :class:`Splats` (arguments as :meth:`MeshGaussians.forward`;
        ``expression`` is the one the vertices were made with, zeros when None)."""
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise AvatarError(f"vertices must be [B, V, 3], got {list(vertices.shape)}")
        state = self.local_state() if local is None else local
        B, n = vertices.shape[0], self.num_gaussians
        (E, V), J = self.expr_basis.shape[:2], self.fit_w.shape[0]
        expr = self._expression(expression, vertices)
        moved = (expr @ self.expr_basis.reshape(E, -1)).reshape(-1, V, 3)  # the mesh's expression displacement
        T = self.joint_transforms(vertices, self.rest_vertices[None] + moved, head_pose)  # [B, J, 4, 4]
        prior = (self.bary[None, :, :, None] * moved[:, self.faces[self.face_id]]).sum(2)  # [B|1, N, 3] at the seeds
        learnt = (state.displacement.transpose(1, 2) @ expr.T).permute(2, 0, 1)  # [B|1, N, 3]
        x_e = self.canon[None] + prior + learnt
        A = torch.einsum("nj,bjxy->bnxy", state.skin[:, :J], T)  # blended (and weighted by 1 - body)
        means = (A[..., :3, :3] @ x_e.expand(B, -1, -1)[..., None]).squeeze(-1) + A[..., :3, 3]
        if head_pose is not None:
            body_rot, origin = self.body_frame(head_pose.to(vertices), self.body_rotation, body)
            bodied = (body_rot @ self.canon[None, :, :, None]).squeeze(-1) + origin[:, None]
        else:
            bodied = self.canon[None]
        means = means + state.skin[None, :, J, None] * bodied
        quats = means.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(B, n, 4)
        scales = (self.unit[:, None] * self.log_scale.exp()).expand(n, 3)[None].expand(B, -1, -1)
        normals = None
        if self.cull_backfacing or self.appearance == "shaded":  # the seed triangle's normal, turned by the point's blended rotation
            turned = (A[..., :3, :3] @ self.normal[None, :, :, None]).squeeze(-1)
            normals = turned / turned.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.appearance == "shaded":
            colors, deg = self.shaded_colors(normals), 0
        else:
            deg = self.max_sh_degree if sh_degree is None else min(int(sh_degree), self.max_sh_degree)
            colors = torch.cat([self.sh_dc[:, None], self.sh_rest[:, : (deg + 1) ** 2 - 1]], 1)
            if self.sh_follows_head and head_pose is not None and deg > 0:
                turn = head_pose[:, :3, :3].to(colors) @ self.reference_pose[:3, :3].to(colors).T  # [B, 3, 3]
                colors = torch.einsum("bkj,njc->bnkc", sh_rotation(deg, turn), colors)
        return Splats(means, quats, scales, self.opacities(), colors, deg, normals if self.cull_backfacing else None)

    def shaded_colors(self, normals: Tensor) -> Tensor:
        """``[B, N, 1, 3]`` degree-0 SH colours of ``appearance = "shaded"``: albedo (what ``sh_dc``
        draws alone) times the light's irradiance at the posed unit ``normals [B, N, 3]`` (world
        frame: the light stays with the camera while the head turns under it). A zero normal (hair,
        teeth) sees the light's constant term only."""
        albedo = SH_C0 * self.sh_dc + 0.5  # [N, 3]
        shade = sh_bases(_LIGHT_DEGREE, normals) @ self.light  # [B, N, 3]
        return ((albedo[None] * shade - 0.5) / SH_C0)[:, :, None]

    # --- regularisers -------------------------------------------------------------------------
    def regularization_terms(self, offset_tolerance: float = 0.5, scale_tolerance: float = 1.0,
                             expression: Tensor | None = None, local: PointState | None = None) -> dict[str, Tensor]:  # fmt: skip
        """``offset``: squared distance of each point from its seed beyond ``offset_tolerance``
        (seed triangle units), weighted per region as MeshGaussians' offsets (face 1, free 0.1,
        eye/mouth 10, hair and teeth 0); ``scale``: squared log-excess of the radius over
        ``scale_tolerance``; ``expression``: the mean squared MLP output (its departure from the
        mesh's own motion)."""
        state = self.local_state() if local is None else local
        w = self.canon.new_tensor([1.0, 0.1, 10.0, 10.0, 0.0, 0.0])[self.region]
        dist = (self.canon - self.seed).norm(dim=-1) / self.unit
        offset = (w * torch.relu(dist - offset_tolerance) ** 2).mean()
        scale = (torch.relu(self.log_scale[:, 0] - math.log(scale_tolerance)) ** 2).mean()
        return {"offset": offset, "scale": scale, "expression": state.residual.square().sum(-1).mean()}

    # --- per-primitive protocol (densification) -------------------------------------------------
    def primitive_parameters(self) -> dict[str, nn.Parameter]:
        return {"canon": self.canon, "log_scale": self.log_scale, "opacity_logit": self.opacity_logit,
                "sh_dc": self.sh_dc, "sh_rest": self.sh_rest, "turn_logit": self.turn_logit}  # fmt: skip

    def primitive_buffers(self) -> dict[str, Tensor]:
        return {"seed": self.seed, "face_id": self.face_id, "region": self.region, "unit": self.unit,
                "normal": self.normal, "bary": self.bary, "prior_skin": self.prior_skin}  # fmt: skip

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        light = {} if self.light is None else {"light": self.light}
        return {"body_logit": self.body_logit, **light, **{name: getattr(self, name) for name in POINTS_MLP}}

    def split_values(self, idx: Tensor, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Each of points ``idx`` becomes ``n`` children drawn inside it (its radius), radius divided
        by ``0.8 n``; the seed and priors are the parent's."""
        radius = (self.unit[idx] * self.log_scale[idx, 0].exp()).detach()
        eps = torch.randn(n, idx.numel(), 3, generator=generator).to(radius.device)  # CPU generator
        out = {name: t[idx].detach().repeat(n, *([1] * (t.dim() - 1)))
               for name, t in {**self.primitive_parameters(), **self.primitive_buffers()}.items()}  # fmt: skip
        out["canon"] = (self.canon[idx].detach()[None] + eps * radius[None, :, None]).reshape(-1, 3)
        out["log_scale"] = out["log_scale"] - math.log(0.8 * n)
        return out
