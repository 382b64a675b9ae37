"""A fast evaluator of a head model's 478 landmarks for the fitting stage's hot loop.

The solver needs only the landmarks, for hundreds of steps over every frame of a clip. Evaluating
the head model (even its landmark submesh) per step costs ~60 ms for 200 frames on one core; this
evaluator gives the same landmarks from small precomputed tables in ~1 ms.

Why it is exact for the poses the tracker uses: the tracker keeps ``neck = 0`` (a monocular face
cannot tell a neck bend from a head rotation; all head rotation is ``global_orient`` + ``transl``).
With the neck at rest every joint's skinning transform is the global one ``G`` except for the
joints the tracker rotates (the eyes, and the jaw for FLAME), whose transform is ``G [R_g | h_g - R_g h_g]``
(rotation ``R_g`` about the joint head ``h_g``). Linear blend skinning is linear in the rest
vertices, and a landmark is a barycentric combination of three vertices, so with

    A[l, v]   = bary weight of vertex v in landmark l          (the embedding)
    A_g[l, v] = A[l, v] * w_vg                                 (same, times the skin weight of joint g)
    a_g[l]    = sum_v A_g[l, v]

the landmark is ``G( A r + sum_g (R_g - I)(A_g r - a_g h_g) )`` for rest vertices ``r``.
Rest vertices are ``r(shape) + D expression`` (expression blendshapes are additive in both AnnyHead
and FLAME), so ``A D`` and ``A_g D`` are precomputed and the identity part ``A r(shape)`` comes from
one batch-1 evaluation of the model per step (identity is shared by all frames).
What it ignores: the (tiny) effect of expression on joint positions (FLAME regresses joints from
the expressive rest shape; AnnyHead moves only neck bones with expression).
``tests/test_fitting.py`` checks it against ``head.forward``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from avatar.errors import AvatarError
from avatar.models.base import HeadModel
from avatar.models.rotations import axis_angle_to_matrix

__all__ = ["LandmarkModel"]


class LandmarkModel:
    """Landmarks of ``head`` as a cheap differentiable function of the tracker's parameters.

    >>> lm = LandmarkModel(head)                               # doctest: +SKIP
    >>> ident = lm.identity(torch.zeros(1, head.num_shape))    # once per step
    >>> pts = lm(ident, expression, global_orient, transl, eyes=eyes)  # [N, 478, 3]
    """

    def __init__(self, head: HeadModel, rotate_jaw: bool | None = None) -> None:
        if head.landmark_faces.numel() == 0:
            raise AvatarError(f"the {head.name} head model has no landmark embedding; the tracker needs one")
        self.head = head
        sub = head.submesh(head.landmark_faces) if hasattr(head, "submesh") else head
        self.model = sub
        names = [n.lower() for n in head.joint_names]
        eyes = [i for i, n in enumerate(names) if "eye" in n]
        jaws = [i for i, n in enumerate(names) if "jaw" in n]
        if len(eyes) != 2:
            raise AvatarError(f"{head.name}: expected two eye joints, found {eyes}")
        # eyes[:, 0] is the joint listed first in the model (AnnyHead: eye.L, the subject's left).
        self.eye_joints = eyes
        self.rotate_jaw = (head.name != "anny") if rotate_jaw is None else rotate_jaw
        self.jaw_joint = jaws[0] if (jaws and self.rotate_jaw) else None
        dtype, device = head.dtype, head.device
        corners = sub.faces[sub.landmark_faces]  # [L, 3]
        bary = sub.landmark_bary.to(dtype)  # [L, 3]
        L, V = corners.shape[0], sub.num_vertices
        A = torch.zeros(L, V, dtype=dtype, device=device)
        A.scatter_add_(1, corners, bary)
        self.num_landmarks = L
        self.A = A
        groups = list(self.eye_joints) + ([self.jaw_joint] if self.jaw_joint is not None else [])
        self.groups = groups
        self.group_index: list[Tensor] = []  # landmarks a group touches
        self.group_A: list[Tensor] = []  # [Lg, V]
        self.group_a: list[Tensor] = []  # [Lg, 1]
        for j in groups:
            w = sub.skin_weights[:, j].to(dtype)  # [V]
            Ag = A * w[None, :]
            a = Ag.sum(1)
            idx = torch.nonzero(a > 1e-6).flatten()
            self.group_index.append(idx)
            self.group_A.append(Ag[idx])
            self.group_a.append(a[idx, None])
        with torch.no_grad():
            z = sub.zero_params(1)
            base = sub(**z).vertices[0]  # [V, 3]
            E = head.num_expressions
            eye = torch.eye(E, dtype=dtype, device=device)
            dv = sub(expression=eye).vertices - base  # [E, V, 3]
        # Coordinate-major tables ([E, 3 * L]: all x, then all y, then all z), so the per-frame
        # landmarks come out as contiguous [N, 3, L] planes (rotating planes is one small bmm with
        # a long inner dimension; [N, L, 3] @ [N, 3, 3] is 2x slower on CPU).
        self.D = torch.einsum("lv,evc->ecl", A, dv).reshape(E, 3 * L).contiguous()
        self.group_D = [torch.einsum("lv,evc->ecl", Ag, dv).reshape(E, -1).contiguous() for Ag in self.group_A]

    # --- identity: once per step ------------------------------------------------------------
    def identity(self, shape: Tensor) -> dict[str, Tensor]:
        """``shape [1, S]`` -> rest landmarks ``[L, 3]``, per group weighted rest points and joint heads."""
        out = self.model(shape=shape)
        r = out.vertices[0]  # zero pose: rest vertices in the model frame
        joints = out.joints[0]
        return dict(
            rest=(self.A @ r).T,  # [3, L]
            group_rest=[(Ag @ r).T for Ag in self.group_A],  # [3, Lg]
            heads=[joints[j][:, None] for j in self.groups],  # [3, 1]
        )

    def identity_tables(self, phenotype_step: float = 0.1) -> None:
        """Precompute :meth:`identity_fast`: the identity's effect as a piecewise-linear function
        ``f(s) = f(0) + sum_i relu(s_i) P_i + relu(-s_i) N_i`` from one batched model evaluation.
        Exact for linear identity spaces (FLAME) and AnnyHead's local targets (a ReLU pair per
        target, range [-1, 1]); AnnyHead's 6 phenotypes (products of hat functions) are linearised
        by one-sided differences of ``phenotype_step``."""
        S = self.head.num_shape
        dtype, device = self.D.dtype, self.D.device
        step = torch.ones(S, dtype=dtype, device=device)
        if self.head.name == "anny":
            step[:6] = phenotype_step
        shapes = torch.cat([torch.zeros(1, S, dtype=dtype, device=device), torch.diag(step), -torch.diag(step)])
        with torch.no_grad():
            out = self.identity_batch(shapes)  # [2S+1, X]
        f0 = out[:1]
        self._id0 = f0
        self._id_pos = (out[1 : S + 1] - f0) / step[:, None]
        self._id_neg = (out[S + 1 :] - f0) / step[:, None]

    def identity_batch(self, shape: Tensor) -> Tensor:
        """``[B, S]`` -> flat ``[B, X]``: rest landmarks, group rest points and joint heads."""
        out = self.model(shape=shape)
        r, joints = out.vertices, out.joints
        parts = [(self.A @ r).transpose(1, 2).reshape(len(r), -1)]
        parts += [(Ag @ r).transpose(1, 2).reshape(len(r), -1) for Ag in self.group_A]
        parts += [joints[:, j] for j in self.groups]
        return torch.cat(parts, 1)

    def identity_fast(self, shape: Tensor) -> dict[str, Tensor]:
        """:meth:`identity` from the tables of :meth:`identity_tables` (two small matmuls)."""
        if not hasattr(self, "_id0"):
            self.identity_tables()
        # The ReLU pair written with a one-sided gradient at exactly 0 (torch.relu has none there,
        # which would pin a zero-initialised identity).
        zero = torch.zeros_like(shape)
        pos = torch.where(shape >= 0, shape, zero)
        neg = torch.where(shape < 0, -shape, zero)
        flat = (self._id0 + pos @ self._id_pos + neg @ self._id_neg)[0]
        return self._unflatten(flat)

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        L = self.num_landmarks
        k = 3 * L
        rest = flat[:k].view(3, L)
        group_rest = []
        for idx in self.group_index:
            n = len(idx)
            group_rest.append(flat[k : k + 3 * n].view(3, n))
            k += 3 * n
        heads = []
        for _ in self.groups:
            heads.append(flat[k : k + 3].view(3, 1))
            k += 3
        return dict(rest=rest, group_rest=group_rest, heads=heads)

    # --- per frame -------------------------------------------------------------------------------
    def __call__(
        self,
        ident: dict[str, Tensor],
        expression: Tensor,  # [N, E]
        global_orient: Tensor,  # [N, 3]
        transl: Tensor,  # [N, 3]
        eyes: Tensor | None = None,  # [N, 2, 3]
        jaw: Tensor | None = None,  # [N, 3]
        local: bool = False,
    ) -> Tensor:
        """World landmarks ``[N, L, 3]`` (``local=True``: before ``global_orient``/``transl``)."""
        return self.planes(ident, expression, global_orient, transl, eyes, jaw, local).transpose(1, 2)

    def planes(
        self,
        ident: dict[str, Tensor],
        expression: Tensor,
        global_orient: Tensor,
        transl: Tensor,
        eyes: Tensor | None = None,
        jaw: Tensor | None = None,
        local: bool = False,
    ) -> Tensor:
        """As :meth:`__call__` but coordinate-major: ``[N, 3, L]``."""
        n = expression.shape[0]
        L = self.num_landmarks
        lm = ident["rest"][None] + (expression @ self.D).view(n, 3, L)
        # The joint groups that turn (0, 1: the eyes; 2: the jaw), then the head, rotated by one
        # batched call: the solvers evaluate this many times per frame, and small ops dominate.
        turns = {k: aa for k, aa in enumerate((*(eyes.unbind(1) if eyes is not None else (None, None)), jaw))
                 if aa is not None and (k < 2 or self.jaw_joint is not None)}  # fmt: skip
        stacked = list(turns.values()) + ([] if local else [global_orient])
        R = axis_angle_to_matrix(torch.stack(stacked, 1)) if stacked else None  # [N, len(stacked), 3, 3]
        for j, k in enumerate(turns):
            idx = self.group_index[k]
            p = ident["group_rest"][k][None] + (expression @ self.group_D[k]).view(n, 3, -1)
            q = p - self.group_a[k].T[None] * ident["heads"][k]  # [N, 3, Lg]
            lm = lm.index_add(2, idx, R[:, j] @ q - q)
        if local:
            return lm
        G = R[:, -1]
        return torch.baddbmm(transl[:, :, None], G, lm)

    def rigid_mode_gram(self, index: Tensor) -> Tensor:
        """``Q [E, E]`` such that ``e^T Q e`` is the squared norm (summed over landmarks ``index``) of
        the part of expression ``e``'s displacement that a small rigid motion (3 translations, 3
        rotations about the points' centroid) of those landmarks could produce. A penalty on it keeps
        expression from explaining head motion; genuinely non-rigid expressions cost little."""
        E = self.D.shape[0]
        with torch.no_grad():
            rest = self.identity(torch.zeros(1, self.head.num_shape, dtype=self.D.dtype, device=self.D.device))["rest"]
            p = rest[:, index].T  # [n, 3]
            p = p - p.mean(0)
            n = p.shape[0]
            eye = torch.eye(3, dtype=p.dtype, device=p.device)
            B = torch.zeros(n, 3, 6, dtype=p.dtype, device=p.device)
            B[:, :, :3] = eye
            x, y, z = p.unbind(1)
            zero = torch.zeros_like(x)
            # omega x p = [[0, z, -y], [-z, 0, x], [y, -x, 0]] omega
            B[:, :, 3:] = torch.stack([zero, z, -y, -z, zero, x, y, -x, zero], 1).view(n, 3, 3)
            B = B.reshape(n * 3, 6)
            D = self.D.view(E, 3, self.num_landmarks)[:, :, index].transpose(1, 2).reshape(E, n * 3)  # [E, 3n]
            DB = D @ B  # [E, 6]
            return DB @ torch.linalg.solve(B.T @ B, DB.T)

    def expression_displacement(self, expression: Tensor, index: Tensor) -> Tensor:
        """Rest-frame displacement ``[N, len(index), 3]`` of landmarks ``index`` caused by expression."""
        E = self.D.shape[0]
        D = self.D.view(E, 3, self.num_landmarks)[:, :, index].reshape(E, -1)
        return (expression @ D).view(expression.shape[0], 3, -1).transpose(1, 2)
