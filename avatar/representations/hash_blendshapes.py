"""Hash-table blendshapes: expression detail as a field over the head's canonical surface
(NeRFBlendShape, Gao et al. 2022; mesh-anchored hash-table blendshapes, Bai et al. 2024), carried
by mesh-bound Gaussians.

The Gaussians are :class:`~avatar.representations.MeshGaussians` (same triangle binding, regions,
hair, teeth, culling and SH; no per-Gaussian blendshapes). What an expression changes beyond the
mesh comes from a field read at each Gaussian's canonical position x (where it sits on the
identity's neutral head, ``canon``)::

    h(x, t) = H_0(x) + sum_g c_g(t) H_g(x)            H: multi-resolution hash grids (.hashgrid)
    c(t)    = expression(t)                            one grid per expression channel (rank 0)
            = expression(t) @ hash_proj [E, rank]      or a learnt low-rank basis (rank > 0)
    delta   = MLP(h) = W2 relu(W1 h + b1) + b2         [offset (3, triangle units), colour (3, SH DC)]

added to the Gaussian's own offset and degree-0 colour, as MeshGaussians' expression blendshapes
are. With expression weight 0 (or no expression: exports, the viewer at rest) it is the neutral
field MLP(H_0(x)).

Locality: a Gaussian hears only the channels that move the head near its triangle (MeshGaussians'
``expression_reach``), so opening the jaw cannot repaint the brow. Without it, every grid learns
wherever the photometric error of the frames that use its channel lies (after a few steps on the
synthetic clip a jawOpen change moves the forehead's field too: tests/test_hash_blendshapes.py).
Exact per-Gaussian channel sets would cost a blend per Gaussian, so triangles are grouped
(:func:`expression_groups`): group 0 hears no channel (triangles no expression moves, hair, teeth:
the neutral field only), and each other group the channels most of its triangles hear. A frame
blends one grid per group, and each Gaussian gathers from its group's.

With ``expr_rank`` > 0 the Gaussians also keep MeshGaussians' private blendshapes (``expr_rank``
colour and offset coefficients each, module docstring of MeshGaussians), and the field is added on
top: detail a single Gaussian needs stays with it, and what neighbours share (and what the training
frames showed only nearby) comes from the field. ``expr_rank = 0`` is the field alone.

Why offset and colour only: they are what MeshGaussians' per-Gaussian blendshapes carry, so a
side-by-side comparison changes where the detail is stored, not what it may change. Rotation and
scale already follow the triangle's frame as the mesh deforms; opacity cannot vary per frame in a
batch (``Splats.opacities`` is ``[N]``), and hiding the mouth's inside is done by the lips moving
over it (offset) and darkening (colour).

Why splats, not volume rendering (NeRFBlendShape marches rays through the field): the field is
evaluated once per Gaussian per frame (~30k lookups), not per ray sample (~10^6-10^7 per image),
so a CPU step stays a splat step; everything else (the rasteriser, exports to splat viewers,
back-face culling, the trainer's densification and pose refinement) is shared with MeshGaussians.

Speed: canonical positions only change when the Gaussians do (densification, seeding), so their
hash rows and trilinear weights are computed once and cached (:meth:`HashBlendshapes.corners`).
The grids are blended by the frame's weights before the gather (one [B K, G] x [G, P F] product:
the Gaussians of a group share the weights), so a Gaussian gathers from one grid, not from G.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from avatar.errors import AvatarError
from avatar.representations.base import Splats
from avatar.representations.geometry import triangle_frames
from avatar.representations.hashgrid import HashGridSpec, blend_tables, encode, hash_corners
from avatar.representations.mesh_gaussians import HAIR, TEETH, LocalState, MeshGaussians, expression_reach

#: Outputs of the field's MLP: offset (3, triangle units) and base colour (3, SH DC).
DELTAS = 6
# The field's cube: the neutral head's bounding box, its largest side scaled by this (hair and
# shoulders seeded beyond the mesh fall inside; points outside are clamped to the cube's faces).
_DOMAIN_MARGIN = 1.5


def expression_groups(reach: Tensor, groups: int, iterations: int = 50) -> tuple[Tensor, Tensor]:
    """Triangles grouped by the expression channels that reach them (``reach [F, E]`` 0/1,
    :func:`~avatar.representations.mesh_gaussians.expression_reach`): ``(face_group [F] int64,
    channels [1 + groups, E] 0/1)``. Group 0 holds the triangles no channel reaches. The others are
    k-modes clusters of the distinct channel sets (Hamming distance, weighted by triangles), started
    from the ``groups`` most common sets; a group hears the channels most of its triangles hear.
    A majority, not a union: a union lets a few boundary triangles that both the jaw and the brows
    reach give jawOpen to a whole brow group."""
    sets, inverse, counts = np.unique(reach.cpu().numpy() > 0, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    reached = np.nonzero(sets.any(1))[0]
    if not len(reached):  # no channel moves the head: one group, the neutral field
        return torch.zeros(len(inverse), dtype=torch.long), torch.zeros(1, sets.shape[1])
    S, c = sets[reached].astype(np.float64), counts[reached].astype(np.float64)
    centres = S[np.argsort(-c, kind="stable")[:groups]].copy()
    for _ in range(iterations):
        assign = (S @ (1.0 - centres).T + (1.0 - S) @ centres.T).argmin(1)
        moved = centres.copy()
        for k in range(len(centres)):
            mine = assign == k
            if mine.any():
                moved[k] = (c[mine] @ S[mine]) / c[mine].sum() >= 0.5
        if (moved == centres).all():
            break
        centres = moved
    group_of_set = np.zeros(len(sets), np.int64)
    group_of_set[reached] = 1 + assign
    channels = np.concatenate([np.zeros((1, sets.shape[1])), centres])
    return torch.from_numpy(group_of_set[inverse]), torch.from_numpy(channels).float()


class FieldState(NamedTuple):
    """What a batch of frames' expressions make of the Gaussians (:meth:`HashBlendshapes.local_state`)."""

    deltas: Tensor  # [B, N, 6] the field's output (offset, colour); [1, N, 6] without an expression
    code: Tensor | None  # [B, N, expr_rank] the private blendshapes' weights (None: none, or no expression)
    offset: Tensor  # [B, N, 3] offsets in triangle units, field added, eye/mouth clamps applied
    log_scale: Tensor  # [N, 3], clamps applied


class HashBlendshapes(MeshGaussians):
    """Mesh-bound Gaussians whose expression detail comes from hash grids (module docstring).
    Build with :meth:`on_surface` or :meth:`from_mesh_gaussians`.

    >>> rep = HashBlendshapes.on_surface(head, grid=HashGridSpec(levels=8))     # doctest: +SKIP
    >>> splats = rep(head(expression=expr).vertices, expression=expr)          # doctest: +SKIP
    """

    kind: ClassVar[str] = "hash_blendshapes"

    def __init__(self, faces: Tensor, face_id: Tensor, region: Tensor, rest_vertices: Tensor, channels: int,
                 sh_degree: int = 0, cull_backfacing: bool = False, sh_follows_head: bool = False,
                 grid: HashGridSpec = HashGridSpec(), rank: int = 0, hidden: int = 32, seed: int = 0,
                 face_group: Tensor | None = None, group_channels: Tensor | None = None, expr_rank: int = 0) -> None:  # fmt: skip
        """``face_group [F]`` / ``group_channels [K, E]``: :func:`expression_groups`' (default: one
        group hearing every channel); ``expr_rank``: private blendshapes kept beside the field
        (module docstring; 0: none)."""
        super().__init__(faces, face_id, region, sh_degree, cull_backfacing, sh_follows_head, channels if expr_rank else 0,
                         expr_rank)  # fmt: skip
        if channels < 1 or rank < 0 or hidden < 1:
            raise AvatarError(f"hash blendshapes need channels >= 1, rank >= 0, hidden >= 1 (got {channels}, {rank}, {hidden})")
        self.grid, self.channels, self.rank, self.hidden = grid, int(channels), int(rank), int(hidden)
        if face_group is None or group_channels is None:
            face_group = torch.ones(faces.shape[0], dtype=torch.long)
            group_channels = torch.stack([torch.zeros(self.channels), torch.ones(self.channels)])
        self.register_buffer("face_group", face_group.long().cpu().clone())  # [F] group of each triangle
        self.register_buffer("group_channels", group_channels.float().cpu().clone())  # [K, E] 0/1 channels each group hears
        g = torch.Generator().manual_seed(seed)
        bases = 1 + (self.rank or self.channels)
        # Instant-NGP's start: tables near zero; the output layer at zero, so a new avatar renders
        # as its Gaussians alone, and a small positive hidden bias, so that layer has inputs to learn from.
        self.hash_tables = nn.Parameter((torch.rand(bases, grid.num_rows, grid.features, generator=g) * 2 - 1) * 1e-4)
        self.hash_proj = nn.Parameter(torch.randn(self.channels, self.rank, generator=g) / self.channels**0.5) if self.rank else None
        fan_in = grid.encoding_size
        self.hash_mlp_w1 = nn.Parameter((torch.rand(fan_in, self.hidden, generator=g) * 2 - 1) * math.sqrt(6.0 / fan_in))
        self.hash_mlp_b1 = nn.Parameter(torch.full((self.hidden,), 0.01))
        self.hash_mlp_w2 = nn.Parameter(torch.zeros(self.hidden, DELTAS))
        self.hash_mlp_b2 = nn.Parameter(torch.zeros(DELTAS))
        self.register_buffer("rest_vertices", rest_vertices.detach().float().cpu().clone())  # [V, 3] neutral head
        lo, hi = self.rest_vertices.amin(0), self.rest_vertices.amax(0)
        side = float((hi - lo).max()) * _DOMAIN_MARGIN
        self.register_buffer("domain", torch.stack([(lo + hi) / 2 - side / 2, torch.full((3,), side)]))  # [2, 3]: corner, size
        self.register_buffer("canon", self.canonical_positions())  # [N, 3]
        self._corners: tuple[Any, ...] | None = None

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_mesh_gaussians(cls, rep: MeshGaussians, rest_vertices: Tensor, channels: int, grid: HashGridSpec = HashGridSpec(),
                            rank: int = 0, hidden: int = 32, seed: int = 0, reach: Tensor | None = None,
                            groups: int = 16, keep_blendshapes: bool = False) -> "HashBlendshapes":  # fmt: skip
        """``rep``'s Gaussians (with its expression blendshapes if ``keep_blendshapes``, else
        without) with a new field;
        ``rest_vertices [V, 3]``: the identity's neutral head, where canonical positions are read;
        ``reach [F, E]``: the channels that reach each triangle, grouped into ``groups``
        (:func:`expression_groups`; None: every channel reaches every triangle)."""
        face_group, group_channels = (None, None) if reach is None else expression_groups(reach, groups)
        out = cls(rep.faces.cpu(), rep.face_id.cpu(), rep.region.cpu(), rest_vertices, channels, rep.max_sh_degree,
                  rep.cull_backfacing, rep.sh_follows_head, grid, rank, hidden, seed, face_group,
                  group_channels, rep.expr_rank if keep_blendshapes else 0).to(rep.offset.device)  # fmt: skip
        own = {k: v for k, v in rep.state_dict().items() if keep_blendshapes or not k.startswith("expr_")}
        out.load_state_dict({**out.state_dict(), **own})
        out.refresh_canonical()
        return out

    @classmethod
    def on_surface(cls, head: Any, *, vertices: Tensor | None = None, grid: HashGridSpec = HashGridSpec(), rank: int = 0,
                   hidden: int = 32, groups: int = 16, **surface: Any) -> "HashBlendshapes":  # fmt: skip
        """Gaussians as :meth:`MeshGaussians.on_surface` places them (``surface``: its keyword
        arguments; ``expr_rank`` > 0 keeps their private blendshapes beside the field) with a field
        over ``head``'s expression channels, heard in ``groups`` groups of triangles (module docstring)."""
        if vertices is None:
            with torch.no_grad():
                vertices = head().vertices[0]
        mesh = MeshGaussians.on_surface(head, vertices=vertices, **surface)
        return cls.from_mesh_gaussians(mesh, vertices, len(head.expression_names), grid, rank, hidden, surface.get("seed", 0),
                                       expression_reach(head), groups, keep_blendshapes=True)  # fmt: skip

    def config(self) -> dict[str, Any]:
        return {**super().config(), "kind": self.kind, "channels": self.channels, "rank": self.rank, "hidden": self.hidden,
                "grid": dataclasses.asdict(self.grid)}  # fmt: skip

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, Tensor]) -> "HashBlendshapes":
        rep = cls(state["faces"], state["face_id"], state["region"], state["rest_vertices"], int(config["channels"]),
                  int(config["sh_degree"]), bool(config["cull_backfacing"]), bool(config["sh_follows_head"]),
                  HashGridSpec(**config["grid"]), int(config["rank"]), int(config["hidden"]), 0, state["face_group"],
                  state["group_channels"], int(config.get("expr_rank", 0)))  # fmt: skip
        rep.load_state_dict(state)
        return rep

    # --- canonical positions and their cached hash rows ----------------------------------------
    @torch.no_grad()
    def canonical_positions(self) -> Tensor:
        """``[N, 3]`` each Gaussian's head-bound position on the neutral head (its current offset)."""
        v = self.rest_vertices.to(self.offset)[None]
        origin, rot, k = triangle_frames(v, self.faces)
        fid = self.face_id
        return origin[0, fid] + k[0, fid, None] * (rot[0, fid] @ self.offset.detach()[..., None]).squeeze(-1)

    def refresh_canonical(self) -> None:
        """Read the field where the Gaussians now are (after they were added, removed or moved)."""
        self.canon = self.canonical_positions()
        self._corners = None

    def set_primitives(self, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> None:
        """As MeshGaussians'; the canonical positions are then those of the new Gaussians: a
        densification event (or seeding) is when the field's lookups may move."""
        super().set_primitives(params, buffers)
        self.refresh_canonical()

    def corners(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows [L, N, 8], weights [L, N, 8], group [N] int32)``: the cached hash rows and
        trilinear weights of the canonical positions (:func:`~.hashgrid.hash_corners`), and the
        group each Gaussian hears the expression in (0 for hair and teeth: the neutral field only)."""
        key = (self.canon.data_ptr(), self.canon._version, self.canon.device, self.hash_tables.dtype, self.face_id.data_ptr())
        if self._corners is None or self._corners[0] != key:
            unit = (self.canon - self.domain[0]) / self.domain[1]
            rows, weights = hash_corners(unit.to(self.hash_tables.dtype), self.grid)
            group = self.face_group[self.face_id].masked_fill((self.region == HAIR) | (self.region == TEETH), 0)
            self._corners = (key, rows, weights, group.int())
        return self._corners[1:]

    # --- the field ------------------------------------------------------------------------------
    def basis_weights(self, expression: Tensor) -> Tensor:
        """``[B, K, G]`` each group's weights of the grids for expressions ``[B, E]``: 1 for the
        neutral grid, then the channels it hears (rank 0) or their projection on the learnt basis."""
        if expression.dim() != 2 or expression.shape[-1] != self.channels:
            raise AvatarError(f"expression must be [B, {self.channels}] (the channels this avatar was trained with), "
                              f"got {list(expression.shape)}")  # fmt: skip
        coef = expression.to(self.hash_tables)[:, None, :] * self.group_channels.to(self.hash_tables)[None]  # [B, K, E]
        coef = coef @ self.hash_proj if self.rank else coef
        return torch.cat([torch.ones_like(coef[..., :1]), coef], -1)

    def field(self, expression: Tensor | None = None) -> Tensor:
        """``[B, N, L * F]`` the blended hash encoding at the canonical positions (``[1, N, L * F]``,
        the neutral grid's, without an expression)."""
        rows, weights, group = self.corners()
        if expression is None:
            return encode(self.hash_tables[None, :1], rows, weights)
        return encode(blend_tables(self.hash_tables, self.basis_weights(expression)), rows, weights, group)

    def field_deltas(self, expression: Tensor | None = None) -> Tensor:
        """``[B, N, 6]`` the MLP's offset and colour changes (module docstring)."""
        h = torch.relu(self.field(expression) @ self.hash_mlp_w1 + self.hash_mlp_b1)
        return h @ self.hash_mlp_w2 + self.hash_mlp_b2

    def local_state(self, expression: Tensor | None = None) -> FieldState:
        """The field's deltas and the effective offsets and log-scales of frames with expressions
        ``[B, E]`` (or None); computed once per step, shared by :meth:`forward` and
        :meth:`regularization_terms` (``local=``)."""
        deltas = self.field_deltas(expression)
        code = self.expression_code(expression)
        offset, log_scale = self._local(self._frame_offsets(code) + deltas[..., :3])
        return FieldState(deltas, code, offset, log_scale)

    def forward(self, vertices: Tensor, sh_degree: int | None = None, head_pose: Tensor | None = None,
                body: Tensor | None = None, expression: Tensor | None = None,
                local: FieldState | None = None) -> Splats:  # fmt: skip
        """As :meth:`MeshGaussians.forward`, with the field's offset and colour added."""
        state = self.local_state(expression) if local is None else local
        splats = super().forward(vertices, sh_degree, head_pose, body, local=LocalState(state.code, state.offset, state.log_scale))
        B = splats.batch_size
        dc = state.deltas[..., 3:].expand(B, -1, -1)
        colors = splats.colors if splats.per_frame_colors else splats.colors.expand(B, *splats.colors.shape)
        colors = torch.cat([colors[:, :, :1] + dc[:, :, None], colors[:, :, 1:]], 2)
        return dataclasses.replace(splats, colors=colors)

    def regularization_terms(self, offset_tolerance: float = 0.5, scale_tolerance: float = 1.0,
                             expression: Tensor | None = None, local: FieldState | None = None) -> dict[str, Tensor]:  # fmt: skip
        """MeshGaussians' ``offset`` and ``scale`` terms (of the offsets with the field added), and
        ``expression``: the mean squared size of the field's deltas (plus MeshGaussians' term of
        the private blendshapes, when kept)."""
        state = self.local_state(expression) if local is None else local
        terms = super().regularization_terms(offset_tolerance, scale_tolerance,
                                             local=LocalState(state.code, state.offset, state.log_scale))  # fmt: skip
        terms["expression"] = terms.get("expression", 0.0) + state.deltas.square().sum(-1).mean()
        return terms

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        own = {"hash_tables": self.hash_tables, "hash_mlp_w1": self.hash_mlp_w1, "hash_mlp_b1": self.hash_mlp_b1,
               "hash_mlp_w2": self.hash_mlp_w2, "hash_mlp_b2": self.hash_mlp_b2}  # fmt: skip
        return {**super().shared_parameters(), **own, **({"hash_proj": self.hash_proj} if self.rank else {})}
