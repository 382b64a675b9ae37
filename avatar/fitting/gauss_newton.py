"""Hessians of the tracker's frames stage, for the batched Levenberg-Marquardt loop
(:func:`avatar.utils.optim.levenberg_marquardt`; one small dense system per frame).

The frames stage has ~60 parameters per frame (:class:`~avatar.fitting.energy.FrameParams`) and
~1,000 landmark residuals; frames interact only through the temporal terms. Each iteration takes:

- the exact gradient of the whole objective (autograd; every term, temporal included);
- an approximate Hessian per frame from here: Gauss-Newton ``J^T C J`` of the landmark term
  (:func:`data_hessian`, ``C`` the IRLS weights of the robust loss), plus the regularisers'
  Hessians with the temporal terms' diagonal (block Jacobi: :func:`prior_hessian`,
  :func:`gaze_prior_hessian`);
- box constraints for [0, 1] expressions by an active set (:func:`expression_bounds`).

Because the step uses the exact gradient, a fixed point is a stationary point of the true
objective whatever the Hessian approximation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from avatar.fitting.energy import FrameParams, Problem, eyes3, transl
from avatar.fitting.landmark_model import LandmarkModel

__all__ = ["PriorHessian", "data_hessian", "expression_bounds", "gaze_prior_hessian", "prior_hessian"]


@dataclass(frozen=True)
class PriorHessian:
    """The regularisers' Hessian per frame (block Jacobi): one constant ``[p, p]`` block shared by
    every frame plus a per-frame diagonal ``[n, p]`` (the temporal terms), plus the robust gaze
    term's per-frame diagonal ``[n, 4]`` on the gaze columns when it is on. Held in this form (not
    ``[n, p, p]``) so a long clip's frames cost ~p numbers each; :meth:`rows` builds the blocks."""

    num_frames: int
    const: Tensor  # [p, p]
    diag: Tensor | None  # [n, p]: the temporal terms' diagonal (None: no temporal terms)
    eye_cols: Tensor  # [4]: the gaze columns
    eye_diag: Tensor | None = None  # [n, 4]

    def rows(self, frames: slice) -> Tensor:
        """``[m, p, p]``: the blocks of the frames ``frames``."""
        m = len(range(*frames.indices(self.num_frames)))
        H = self.const.expand(m, *self.const.shape).clone()
        if self.diag is not None:
            H += torch.diag_embed(self.diag[frames])
        if self.eye_diag is not None:
            H[:, self.eye_cols, self.eye_cols] += self.eye_diag[frames]
        return H


def prior_hessian(P: Problem, logd: Tensor, num_params: int) -> PriorHessian:
    """Hessians of the regularisers (constant) plus the temporal terms' diagonal (block Jacobi) at
    the log depths ``logd [n]``; the robust gaze term is added by :func:`gaze_prior_hessian` when it
    is on (``smooth_eyes_scale > 0``)."""
    cfg, E, n, p = P.cfg, P.num_expressions, logd.shape[0], num_params
    Hc = torch.zeros(p, p, dtype=logd.dtype)
    ie = slice(6, 6 + E)
    mask = P.expr_mask
    rigid = P.rigid_gram * mask[:, None] * mask[None]
    Hc[ie, ie] += 2.0 * cfg.w_expr_l2 * torch.diag(mask) + 2.0 * cfg.w_rigid * rigid
    iy = torch.arange(6 + E, 10 + E)
    Hc[iy, iy] += 2.0 * cfg.w_eyes
    for a in range(2):  # vergence: w |eye0 - eye1|^2 per (pitch, yaw)
        i0, i1 = 6 + E + a, 6 + E + 2 + a
        Hc[i0, i0] += 2 * cfg.w_vergence
        Hc[i1, i1] += 2 * cfg.w_vergence
        Hc[i0, i1] -= 2 * cfg.w_vergence
        Hc[i1, i0] -= 2 * cfg.w_vergence
    if P.fit_jaw:
        ij = torch.arange(10 + E, 13 + E)
        Hc[ij, ij] += 2.0 * cfg.w_jaw
    diag = None
    if P.temporal and n > 1:
        nb = _neighbour_weight(P.gap_w[:, None], n).squeeze(1)
        dz2 = logd.detach().exp() ** 2
        diag = torch.zeros(n, p, dtype=logd.dtype)
        diag[:, :3] = 2 * cfg.w_smooth_rot
        diag[:, 3:5] = 2 * cfg.w_smooth_transl / P.iod_m**2
        diag[:, 5] = 2 * cfg.w_smooth_transl * dz2 / P.iod_m**2
        diag[:, ie] = 2 * cfg.w_smooth_expr * mask * P.smooth_w
        if cfg.smooth_eyes_scale <= 0:
            diag[:, 6 + E : 10 + E] = 2 * cfg.w_smooth_eyes
        diag = diag * nb[:, None]
    return PriorHessian(n, Hc, diag, iy)


def gaze_prior_hessian(P: Problem, Hp: PriorHessian, theta: Tensor) -> PriorHessian:
    """``Hp`` plus the block-Jacobi diagonal of the robust gaze smoothness term at ``theta``
    (its curvature depends on the gaze changes: IRLS weights)."""
    cfg, E, n = P.cfg, P.num_expressions, theta.shape[0]
    ey = FrameParams.unflat(theta, E, P.fit_jaw).eyes  # [n, 2 eyes, 2]
    w_pair = P.gap_w[:, None] / torch.sqrt(1.0 + ((ey[1:] - ey[:-1]) ** 2).sum(-1) / cfg.smooth_eyes_scale**2)
    nb_eye = _neighbour_weight(w_pair, n)
    return dataclasses.replace(Hp, eye_diag=2 * cfg.w_smooth_eyes * nb_eye.repeat_interleave(2, 1))


def _neighbour_weight(w_pair: Tensor, n: int) -> Tensor:
    """``[n, k]``: per frame, the sum of the weights ``w_pair [n - 1, k]`` of the pairs it is in."""
    nb = torch.zeros(n, w_pair.shape[1], dtype=w_pair.dtype)
    nb[1:] += w_pair
    nb[:-1] += w_pair
    return nb


def expression_bounds(P: Problem, num_params: int, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """Box bounds ``[p]`` of the flat per-frame parameters: expressions in [0, 1] when bounded."""
    if not P.bounded:
        return None, None
    lower = torch.full((num_params,), -torch.inf, dtype=dtype)
    upper = torch.full((num_params,), torch.inf, dtype=dtype)
    lower[6 : 6 + P.num_expressions], upper[6 : 6 + P.num_expressions] = 0.0, 1.0
    return lower, upper


def _rotation_derivatives(aa: Tensor, h: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``R(aa) [n, 3, 3]`` and ``dR/daa_i [n, 3, 3, 3]`` (i first) by central differences."""
    from avatar.models.rotations import axis_angle_to_matrix

    eye = torch.eye(3, dtype=aa.dtype) * h
    pert = torch.cat([aa[:, None] + eye[None], aa[:, None] - eye[None]], 1)  # [n, 6, 3]
    R = axis_angle_to_matrix(torch.cat([aa[:, None], pert], 1))  # [n, 7, 3, 3]
    return R[:, 0], (R[:, 1:4] - R[:, 4:7]) / (2 * h)


def data_hessian(P: Problem, ident: dict, focal: Tensor, theta: Tensor) -> Tensor:
    """Gauss-Newton Hessian ``[n, p, p]`` of the landmark term at ``theta`` (identity tables
    ``ident``, focal length ``focal``), from an analytic Jacobian of the projected landmarks
    (expression columns ignore the small eye/jaw-joint corrections; exact gradients are used for
    the step, so this only affects the convergence rate)."""
    lm, E = P.lm, P.num_expressions
    f = FrameParams.unflat(theta, E, P.fit_jaw)
    ex = P.expression(f.expression)
    n, p = theta.shape
    sub = _hessian_subset(lm, P.cfg.hessian_stride)  # landmarks used for the (approximate) Hessian
    L = len(sub)
    t = f.transl()
    local = lm.planes(ident, ex, f.rot, t, eyes=eyes3(f.eyes), jaw=f.jaw, local=True)[:, :, sub]  # [n, 3, L]
    G, dG = _rotation_derivatives(f.rot)
    X = G @ local + t[:, :, None]
    depth = -X[:, 2]
    du_dx, du_dz = focal / depth, focal * X[:, 0] / depth**2
    dv_dy, dv_dz = -focal / depth, -focal * X[:, 1] / depth**2
    zero = torch.zeros_like(du_dx)
    a_u = torch.stack([du_dx, zero, du_dz], 1)  # [n, 3(c), L]: d(u, v)/d(camera-frame point)
    a_v = torch.stack([zero, dv_dy, dv_dz], 1)
    dx_rot = torch.einsum("nicd,ndl->nicl", dG, local)  # [n, 3(i), 3(c), L]
    dx_joints = _joint_derivatives(P, ident, ex, f, G, sub)
    rows = [_projection_jacobian(P, a, G, dx_rot, dx_joints, t, sub) for a in (a_u, a_v)]  # [n, p, L] each
    u = X[:, 0] * focal / depth + P.cx
    v = P.cy - X[:, 1] * focal / depth
    iod2 = (P.iod**2)[:, None]
    det = P.det[:, sub]
    r2 = ((u - det[..., 0]) ** 2 + (v - det[..., 1]) ** 2) / iod2
    s2 = P.cfg.robust_sigma**2
    rho1 = 1.0 / torch.sqrt(1.0 + r2 / s2)  # Charbonnier's IRLS weight
    scale = lm.num_landmarks / L  # the subset stands in for all landmarks
    wl = P.w / P.w.sum()
    c = 2.0 * wl[sub][None] * P.frame_w[:, sub] * rho1 / iod2 * scale  # [n, L]
    J = torch.cat(rows, 2)  # [n, p, 2L]
    cw = torch.cat([c, c], 1)[:, None, :]
    return (J * cw) @ J.transpose(1, 2)


def _joint_derivatives(P: Problem, ident: dict, ex: Tensor, f: FrameParams, G: Tensor,
                       sub: Tensor) -> list[tuple[int, int, Tensor, Tensor]]:  # fmt: skip
    """Per rotated joint group (the eyes, the jaw when fitted): ``(first column among the eye/jaw
    parameters, columns, positions in sub [Lg], d(camera-frame point)/d(parameter) [n, m, 3, Lg])``."""
    lm, n = P.lm, ex.shape[0]
    groups = [(eyes3(f.eyes)[:, 0], 0, 2), (eyes3(f.eyes)[:, 1], 2, 2)]
    if P.fit_jaw:
        groups.append((f.jaw, 4, 3))
    out = []
    for k, (aa, start, m) in enumerate(groups):
        gi, pos = _group_in_subset(lm, k, sub)
        if len(gi) == 0:
            continue
        pg = ident["group_rest"][k][None] + (ex @ lm.group_D[k]).view(n, 3, -1)
        qg = (pg - lm.group_a[k].T[None] * ident["heads"][k])[:, :, gi]
        _, dR = _rotation_derivatives(aa)
        dx = torch.einsum("ncd,nidl->nicl", G, torch.einsum("nicd,ndl->nicl", dR[:, :m], qg))  # [n, m, 3, Lg]
        out.append((start, m, pos, dx))
    return out


def _projection_jacobian(P: Problem, a: Tensor, G: Tensor, dx_rot: Tensor, dx_joints: list, t: Tensor,
                         sub: Tensor) -> Tensor:  # fmt: skip
    """``[n, p, L]``: the Jacobian of one image coordinate (``a [n, 3, L]``: its derivative by the
    camera-frame point) by every flat parameter."""
    lm, E = P.lm, P.num_expressions
    n, L = a.shape[0], a.shape[2]
    p = 10 + E + (3 if P.fit_jaw else 0)
    w = torch.einsum("ncl,ncd->ndl", a, G)
    act = torch.nonzero(P.expr_mask > 0).flatten()
    Dt = lm.D.view(E, 3, lm.num_landmarks)[act][:, :, sub]  # [Ea, 3, L]
    je = w[:, None, 0] * Dt[None, :, 0]
    je = je + w[:, None, 1] * Dt[None, :, 1]
    je = je + w[:, None, 2] * Dt[None, :, 2]  # [n, Ea, L]
    jr = (a[:, None] * dx_rot).sum(2)  # [n, 3, L]
    jt = torch.stack([a[:, 0], a[:, 1], a[:, 2] * t[:, 2:3]], 1)  # [n, 3, L]
    jg = torch.zeros(n, p - 6 - E, L, dtype=a.dtype)  # eyes (and jaw)
    for start, m, pos, dx in dx_joints:
        jg[:, start : start + m, pos] = (a[:, None, :, pos] * dx).sum(2)
    full_e = torch.zeros(n, E, L, dtype=a.dtype)
    full_e[:, act] = je
    return torch.cat([jr, jt, full_e, jg], 1)


def _hessian_subset(lm: LandmarkModel, stride: int) -> Tensor:
    """Every ``stride``-th mesh landmark plus every landmark an eye/jaw joint moves (iris...);
    cached on the landmark model."""
    cache = lm.__dict__.setdefault("_hessian_subsets", {})
    if stride not in cache:
        keep = torch.zeros(lm.num_landmarks, dtype=torch.bool)
        keep[::stride] = True
        for idx in lm.group_index:
            keep[idx] = True
        cache[stride] = torch.nonzero(keep).flatten()
    return cache[stride]


def _group_in_subset(lm: LandmarkModel, k: int, sub: Tensor) -> tuple[Tensor, Tensor]:
    """Positions (in group k's landmark list, in ``sub``) of group k's landmarks kept in ``sub``."""
    pos_of = torch.full((lm.num_landmarks,), -1, dtype=torch.long)
    pos_of[sub] = torch.arange(len(sub))
    pos = pos_of[lm.group_index[k]]
    keep = pos >= 0
    return torch.nonzero(keep).flatten(), pos[keep]
