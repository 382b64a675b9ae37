"""Gaussians bound to a head model's triangles, made up from the mesh alone: a stand-in for a
trained Gaussian avatar so the splat path of the viewer (and its benchmark and browser test) runs
without one.

The binding follows GaussianAvatars (Qian et al. 2024): each Gaussian has a parent triangle with
an orthonormal frame ``R_f`` (first edge, in-plane perpendicular, normal), a centroid ``c_f`` and
a scale ``k_f`` (mean edge length); its local centre ``mu``, rotation ``q`` and scale ``s`` map to
the world as ``mean = c_f + k_f R_f mu``, ``quat = quat(R_f) * q``, ``scale = k_f s``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from avatar.representations.geometry import matrix_to_quat, quat_multiply

__all__ = ["TriangleGaussians", "triangle_frames"]


def triangle_frames(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``vertices [V, 3]``, ``faces [F, 3]`` -> rotations ``[F, 3, 3]`` (columns: edge, in-plane
    perpendicular, normal), centroids ``[F, 3]``, scales ``[F]`` (mean edge length)."""
    tri = vertices[faces]  # [F, 3, 3]
    e0 = tri[:, 1] - tri[:, 0]
    e1 = tri[:, 2] - tri[:, 0]
    x = e0 / e0.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = torch.linalg.cross(e0, e1)
    z = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z], -1)
    k = (e0.norm(dim=-1) + e1.norm(dim=-1) + (tri[:, 2] - tri[:, 1]).norm(dim=-1)) / 3.0
    return rot, tri.mean(1), k


class TriangleGaussians:
    """``num`` flat Gaussians scattered over the rest mesh (area-weighted), coloured by a baked
    head light so the shape reads in a screenshot, moved with the mesh by :meth:`deform`.

    Args:
        faces: ``[F, 3]`` triangles of the head model.
        rest_vertices: ``[V, 3]`` the neutral mesh.
        num: number of Gaussians.
        vertex_rgb: ``[V, 3]`` base colour per vertex (e.g. skin, eye white).
        seed: random seed (the layout is reproducible).
    """

    def __init__(self, faces: Tensor, rest_vertices: Tensor, num: int, vertex_rgb: np.ndarray, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        faces = faces.long()
        verts = rest_vertices.detach().float()
        rot, centre, k = triangle_frames(verts, faces)
        tri = verts[faces]
        area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
        parent = torch.multinomial(area / area.sum(), num, replacement=True, generator=g)
        u = torch.rand(num, 2, generator=g)
        flip = u.sum(1) > 1
        u[flip] = 1 - u[flip]
        bary = torch.cat([1 - u.sum(1, keepdim=True), u], 1)  # [N, 3], uniform on the triangle
        world = (bary[:, :, None] * tri[parent]).sum(1)
        self.faces, self.parent, self.num = faces, parent, num
        kp = k[parent]
        self.local_means = (rot[parent].transpose(1, 2) @ (world - centre[parent])[:, :, None])[:, :, 0] / kp[:, None]
        # Disc-like splats sized so that they overlap and cover the surface: radius ~ 1.5 sqrt(area share).
        radius = 1.5 * torch.sqrt(area.sum() / num / np.pi).item()
        self.local_scales = torch.stack(
            [torch.full((num,), radius), torch.full((num,), radius), torch.full((num,), radius * 0.2)], 1
        ) / kp[:, None]
        angle = torch.rand(num, generator=g) * np.pi  # random in-plane rotation about the normal
        self.local_quats = torch.stack([torch.cos(angle / 2), 0 * angle, 0 * angle, torch.sin(angle / 2)], 1)
        base = torch.as_tensor(vertex_rgb, dtype=torch.float32)[faces[parent]]
        base = (bary[:, :, None] * base).sum(1)
        normal = rot[parent][:, :, 2]
        light = torch.tensor([0.3, 0.5, 0.8])
        shade = 0.35 + 0.65 * (normal @ (light / light.norm())).clamp_min(0)
        self.rgb = (base * shade[:, None]).clamp(0, 1)
        self.opacities = torch.full((num,), 0.95)
        self.rest_means = world
        self._mu_rows = self.local_means.T.contiguous()

    def deform(self, vertices: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``vertices [V, 3]`` (posed mesh) -> ``means [n, 3]``, ``quats [n, 4]`` (wxyz), ``scales [n, 3]``
        of all Gaussians, or of those in ``index [n]``.

        Per-face quantities are gathered once into contiguous rows (``[9, N]``, ...) and combined
        element-wise: batched 3x3 matmuls and strided column ops are several times slower."""
        with torch.no_grad():
            rot, centre, k = triangle_frames(vertices.detach().float(), self.faces)
            face_rows = torch.cat([rot.reshape(-1, 9), matrix_to_quat(rot), centre, k[:, None]], 1).T.contiguous()
            parent = self.parent if index is None else self.parent[index]
            g = face_rows[:, parent]  # [17, n]: R (row-major), quat, centroid, k
            r, fq, c, kp = g[0:9], g[9:13], g[13:16], g[16]
            mu = self._mu_rows if index is None else self._mu_rows[:, index]  # [3, n]
            local_quats = self.local_quats if index is None else self.local_quats[index]
            local_scales = self.local_scales if index is None else self.local_scales[index]
            means = torch.empty(3, parent.shape[0])
            for i in range(3):  # c_i + k * sum_j R_ij mu_j
                torch.mul(r[3 * i], mu[0], out=means[i])
                means[i].addcmul_(r[3 * i + 1], mu[1]).addcmul_(r[3 * i + 2], mu[2]).mul_(kp).add_(c[i])
            quats = quat_multiply(fq.T, local_quats)
            return means.T, quats, local_scales * kp[:, None]


def shaded_representation(head, *, per_face: int = 1, per_face_face: int = 1, sh_degree: int = 1, expr_rank: int = 0,
                          seed: int = 0):  # fmt: skip
    """A :class:`~avatar.representations.MeshGaussians` avatar made up from the mesh alone: opaque
    surface Gaussians coloured skin (eyes white) under a baked head light, with a little noise and
    small random view-dependent (SH) terms, back-face culling on; with ``expr_rank``, random
    expression blendshapes. A stand-in for a trained avatar in the viewer's tests and benchmark: it
    goes through the same representation and renderer."""
    from avatar.representations import MeshGaussians
    from avatar.representations.geometry import quat_to_matrix
    from avatar.representations.mesh_gaussians import EYE, SH_C0

    rep = MeshGaussians.on_surface(head, per_face=per_face, per_face_face=per_face_face, sh_degree=sh_degree,
                                   expr_rank=expr_rank, seed=seed)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rest = rep(head().vertices.float())
        normal = quat_to_matrix(rest.quats[0])[:, :, 2]
        light = torch.tensor([0.3, 0.5, 0.8])
        shade = 0.35 + 0.65 * (normal @ (light / light.norm())).clamp_min(0)
        base = torch.tensor([0.80, 0.62, 0.52]).repeat(rep.num_gaussians, 1)
        base[rep.region == EYE] = torch.tensor([0.93, 0.93, 0.90])
        rgb = (base * shade[:, None] + 0.04 * torch.randn(rep.num_gaussians, 3, generator=g)).clamp(0.02, 0.98)
        rep.sh_dc.copy_((rgb - 0.5) / SH_C0)
        rep.sh_rest.copy_(0.05 * torch.randn(rep.sh_rest.shape, generator=g))
        rep.opacity_logit.fill_(3.0)
        if rep.expr_rank:
            rep.expr_color.normal_(0.0, 1.0, generator=g)
            rep.expr_offset.normal_(0.0, 0.05, generator=g)
    return rep
