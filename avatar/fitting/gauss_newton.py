"""Batched Levenberg-Marquardt for per-frame parameters (one small dense system per frame).

The per-frame stage of the tracker has ~60 parameters per frame and ~1,000 landmark residuals; frames
interact only through the temporal terms. Each iteration here:

- the exact gradient ``g`` of the whole objective (autograd; every term, temporal included);
- an approximate Hessian per frame from the caller: Gauss-Newton ``J^T C J`` of the landmark term
  (``C`` the IRLS weights of the robust loss), plus the regularisers' Hessians (block-Jacobi for the
  temporal terms);
- the damped step ``-(H + lambda diag H)^-1 g`` with box constraints by an active set (a bounded
  parameter at its bound whose gradient points outward is held), accepted per frame when that
  frame's objective decreases (else lambda grows for that frame).

Because the step uses the exact gradient, a fixed point is a stationary point of the true
objective whatever the Hessian approximation.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["levenberg_marquardt"]


def levenberg_marquardt(
    theta: Tensor,  # [N, P] initial parameters
    per_frame: Callable[[Tensor], Tensor],  # theta -> [N] objective per frame (no temporal terms)
    coupled: Callable[[Tensor], Tensor],  # theta -> scalar (temporal terms), or 0
    data_hessian: Callable[[Tensor], Tensor],  # theta -> [N, P, P] approximate Hessian of the data term
    prior_hessian: Tensor | Callable[[Tensor], Tensor],  # [N, P, P] or [P, P] Hessian of the regularisers
    # (and temporal diagonal), or theta -> [N, P, P] when it depends on theta (IRLS weights of a robust term)
    active: Tensor,  # [P] bool: parameters that move
    lower: Tensor | None = None,  # [P] bounds (use -inf/inf where free)
    upper: Tensor | None = None,
    iterations: int = 10,
    lam: float = 1e-3,
) -> Tensor:
    """Minimise ``sum(per_frame(theta)) + coupled(theta)``; returns the final ``theta`` (detached)."""
    theta = theta.detach().clone()
    n, p = theta.shape
    idx = torch.nonzero(active).flatten()
    k = len(idx)
    lam_n = torch.full((n,), lam, dtype=theta.dtype)
    eye_k = torch.eye(k, dtype=theta.dtype)

    def prior(th: Tensor) -> Tensor:
        ph = prior_hessian(th) if callable(prior_hessian) else prior_hessian
        ph = ph if ph.ndim == 3 else ph[None]
        return ph[:, idx][:, :, idx]

    ph = None if callable(prior_hessian) else prior(theta)
    for _ in range(iterations):
        th = theta.clone().requires_grad_(True)
        f = per_frame(th)
        total = f.sum() + coupled(th)
        (g,) = torch.autograd.grad(total, th)
        g = g[:, idx]
        with torch.no_grad():
            H = data_hessian(theta)[:, idx][:, :, idx]
        H = H + (prior(theta) if ph is None else ph)
        f0 = f.detach()
        with torch.no_grad():
            # Active set: parameters at a bound with the gradient pushing outward stay put.
            free = torch.ones(n, k, dtype=torch.bool)
            if lower is not None:
                lo, hi = lower[idx], upper[idx]
                x = theta[:, idx]
                free &= ~((x <= lo + 1e-9) & (g > 0))
                free &= ~((x >= hi - 1e-9) & (g < 0))
            fm = free.to(theta.dtype)
            A = H * fm[:, :, None] * fm[:, None, :]
            diag = torch.diagonal(A, dim1=1, dim2=2)
            A = A + torch.diag_embed(lam_n[:, None] * diag + 1e-10 + (1.0 - fm))
            step = -torch.linalg.solve(A, (g * fm)[..., None])[..., 0] * fm
            new = theta.clone()
            new[:, idx] = theta[:, idx] + step
            if lower is not None:
                new = torch.maximum(torch.minimum(new, upper), lower)
            f1 = per_frame(new)
            ok = f1 <= f0
            theta = torch.where(ok[:, None], new, theta)
            lam_n = torch.where(ok, (lam_n / 3.0).clamp_min(1e-7), lam_n * 10.0)
    return theta
