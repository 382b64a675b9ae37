"""The two optimisers of the code base: Adam over named tensors (optionally row by row) and a
batched Levenberg-Marquardt loop (one small dense system per batch item), with
:func:`fd_least_squares` to drive the loop from residuals alone (a forward-difference Jacobian).

Lowest layer: imports only torch. The callers bring their problem (which tensors, which loss, how
to get a gradient and a Hessian); these classes own only the update rules.

    >>> opt = Adam({"rot": rot, "expr": expr}, {"rot": 0.02, "expr": 0.04})    # doctest: +SKIP
    >>> loss.backward(); opt.step()                                           # doctest: +SKIP
    >>> x = levenberg_marquardt(x0, loss_fn, model_fn, iterations=6)          # doctest: +SKIP
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Adam", "LMOptions", "cosine_schedule", "fd_least_squares", "levenberg_marquardt"]


def cosine_schedule(steps: int, floor: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor of step ``k`` (1-based) over ``steps`` steps: cosine from 1 down to ``floor``."""
    steps = max(steps, 1)
    return lambda k: floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (k - 1) / steps))


class Adam:
    """Adam (Kingma & Ba) over named tensors with a learning rate per name.

    Args:
        params: name -> tensor (a leaf; its ``.grad`` is read by :meth:`step`).
        lrs: name -> learning rate.
        betas, eps: Adam's.
        schedule: ``k -> factor`` on every learning rate at the ``k``-th step (1-based), e.g.
            :func:`cosine_schedule`; ``None``: constant.
        row_wise: every tensor has the same ``N`` rows (e.g. one per frame) and a step may update
            only some of them (:meth:`step`'s ``rows``). Each row keeps its own step count, and rows
            outside a step neither move nor decay: torch's Adam would keep moving them on stale
            momentum long after their frame was last seen.

    Not row-wise, it is ``torch.optim.Adam`` (to rounding; tests/test_optim.py), written out
    because torch's first construction imports torch._dynamo (seconds per process: more than the
    whole fit of a short clip), and torch's has no row subsets.

    >>> opt = Adam({"p": p}, {"p": 0.1}, row_wise=True)    # doctest: +SKIP
    >>> loss.backward(); opt.step(rows)                    # doctest: +SKIP
    """

    def __init__(self, params: dict[str, Tensor], lrs: dict[str, float], *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, schedule: Callable[[int], float] | None = None,
                 row_wise: bool = False) -> None:  # fmt: skip
        if set(lrs) != set(params):
            raise ValueError(f"one learning rate per tensor: params {sorted(params)}, lrs {sorted(lrs)}")
        first = next(iter(params.values()))
        if row_wise and any(p.ndim == 0 or p.shape[0] != first.shape[0] for p in params.values()):
            raise ValueError("row_wise: every tensor needs the same number of rows")
        self.params, self.lrs, self.betas, self.eps, self.schedule = params, lrs, betas, eps, schedule
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}
        # Steps taken: per row when row-wise, else one count.
        self.count = torch.zeros(first.shape[:1] if row_wise else (), dtype=torch.long, device=first.device)
        self.steps = 0  # calls of step(), what the schedule reads

    @torch.no_grad()
    def step(self, rows: Tensor | None = None) -> None:
        """Update every tensor (or only ``rows``, ``[B]`` long, when row-wise) from its ``.grad``,
        then clear the grads. A tensor without a grad is skipped."""
        if rows is not None and self.count.ndim == 0:
            raise ValueError("rows given to an Adam that is not row_wise")
        idx: Any = ... if rows is None else torch.unique(rows)
        self.count[idx] += 1
        self.steps += 1
        factor = 1.0 if self.schedule is None else self.schedule(self.steps)
        b1, b2 = self.betas
        for k, p in self.params.items():
            if p.grad is None:
                continue
            lr = self.lrs[k] * factor
            if self.count.ndim == 0:  # one count: the bias corrections are numbers, folded into the step size
                n = int(self.count)
                m = self.m[k].mul_(b1).add_(p.grad, alpha=1 - b1)
                v = self.v[k].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, (v / (1 - b2**n)).sqrt_().add_(self.eps), value=-lr / (1 - b1**n))
            else:  # one count per row
                c = self.count[idx].to(p.dtype)
                c = c.reshape(c.shape + (1,) * (p.ndim - 1))
                g = p.grad[idx]
                m = self.m[k][idx].mul_(b1).add_(g, alpha=1 - b1)
                v = self.v[k][idx].mul_(b2).addcmul_(g, g, value=1 - b2)
                self.m[k][idx], self.v[k][idx] = m, v
                p[idx] -= lr * (m / (1 - b1**c)) / ((v / (1 - b2**c)).sqrt() + self.eps)
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"m": {k: t.cpu() for k, t in self.m.items()}, "v": {k: t.cpu() for k, t in self.v.items()},
                "count": self.count.cpu(), "steps": self.steps}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.params:
            self.m[k].copy_(state["m"][k])
            self.v[k].copy_(state["v"][k])
        self.count.copy_(state["count"])
        self.steps = int(state.get("steps", int(self.count.max()) if self.count.numel() else 0))


# Items whose damped systems are solved together (a long clip's frames: each system's copies are
# [items, P, P]).
_STEP_CHUNK = 1024


@dataclass(frozen=True)
class LMOptions:
    """Damping and scaling of :func:`levenberg_marquardt` (``lambda`` per batch item)."""

    damping: float = 1e-3  # lambda at the start
    decrease: float = 3.0  # lambda is divided by this after an accepted step
    increase: float = 10.0  # and multiplied by this after a rejected one
    min_damping: float = 0.0  # lambda never goes below this
    # The damped system is H + diag(lambda * (d + relative_floor * mean(d)) + jitter), d = diag(H):
    # relative_floor keeps a parameter that an item does not see (a zero column) put, jitter keeps
    # the system invertible even undamped.
    relative_floor: float = 0.0
    jitter: float = 0.0


def levenberg_marquardt(
    x: Tensor,  # [B, P] start
    loss: Callable[[Tensor], Tensor],  # x [B, P] -> [B] each item's objective at a trial point (the accept test)
    # (x, at_trial [B] bool) -> (grad [B, P], hess [B, P, P] or a function of a slice of the items
    # -> their [b, P, P], called once per chunk of items after this call: nothing [B, P, P] is built)
    model: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | Callable[[slice], Tensor]]],
    iterations: int,
    options: LMOptions = LMOptions(),
    *,
    active: Tensor | None = None,  # [P] bool: the parameters that move (default all)
    lower: Tensor | None = None,  # [P] box bounds (-inf / inf where free)
    upper: Tensor | None = None,
) -> Tensor:
    """Minimise independent (or loosely coupled) problems of a batch by damped Newton steps; returns
    the final ``x`` (detached).

    Each iteration asks ``model`` for the gradient and an approximate Hessian at ``x``, solves
    ``(H + lambda D) step = -grad`` per item (``D`` the scaled diagonal, see :class:`LMOptions`),
    and keeps the step of the items whose ``loss`` does not rise (their lambda shrinks; the others'
    grows). ``at_trial`` tells ``model`` which items sit where ``loss`` was last called (all on the
    first call, then the accepted ones), so a caller can reuse what that call computed (e.g. the
    residuals). The gradient may be of a larger objective than ``loss`` (e.g. with terms that
    couple the items): the accept test is per item.

    Box bounds by an active set: a bounded parameter at its bound whose gradient points outward is
    held for that step, and every step is projected into the box.
    """
    x = x.detach().clone()
    n, p = x.shape
    idx = torch.arange(p, device=x.device) if active is None else torch.nonzero(active).flatten()
    f = loss(x).detach()
    lam = torch.full((n,), options.damping, dtype=x.dtype, device=x.device)
    at_trial = torch.ones(n, dtype=torch.bool, device=x.device)
    for _ in range(iterations):
        g, H = model(x, at_trial)
        with torch.no_grad():
            new = x.clone()
            for a in range(0, n, _STEP_CHUNK):  # the per-item systems in chunks: their copies stay small
                s = slice(a, min(a + _STEP_CHUNK, n))
                Hs = H(s) if callable(H) else H[s]
                new[s, idx] = x[s, idx] + _bounded_step(x[s, idx], g[s, idx], Hs[:, idx][:, :, idx], lam[s], lower,
                                                        upper, idx, options)  # fmt: skip
            if lower is not None or upper is not None:
                new = new.clamp(lower, upper)
            f_new = loss(new).detach()
            at_trial = f_new <= f
            x = torch.where(at_trial[:, None], new, x)
            f = torch.where(at_trial, f_new, f)
            lam = torch.where(at_trial, (lam / options.decrease).clamp_min(options.min_damping), lam * options.increase)
    return x


def _bounded_step(xa: Tensor, g: Tensor, H: Tensor, lam: Tensor, lower: Tensor | None, upper: Tensor | None,
                  idx: Tensor, options: LMOptions) -> Tensor:  # fmt: skip
    """The damped step of items at ``xa [B, K]`` (the active parameters ``idx``), holding a
    bounded parameter at its bound whose gradient points outward."""
    free = torch.ones_like(g, dtype=torch.bool)
    if lower is not None:
        free &= ~((xa <= lower[idx] + 1e-9) & (g > 0))
    if upper is not None:
        free &= ~((xa >= upper[idx] - 1e-9) & (g < 0))
    return _damped_step(H, g, lam, free, options)


def _damped_step(H: Tensor, g: Tensor, lam: Tensor, free: Tensor, options: LMOptions) -> Tensor:
    """``-(H + lambda D)^-1 g`` per item (``H [B, K, K]``, ``g [B, K]``, ``lam [B]``) over the
    ``free [B, K]`` parameters; the held ones get a unit diagonal and step 0."""
    fm = free.to(H.dtype)
    A = H * fm[:, :, None] * fm[:, None, :]
    d = torch.diagonal(A, dim1=1, dim2=2)
    d = d + options.relative_floor * d.mean(1, keepdim=True) + 1e-30  # 1e-30: an item that sees nothing
    A = A + torch.diag_embed(lam[:, None] * d + options.jitter + (1.0 - fm))
    return -torch.linalg.solve(A, (g * fm)[..., None])[..., 0] * fm


def fd_least_squares(residuals: Callable[[Tensor], Tensor], steps: Tensor, renew_every: int = 1):
    """``(loss, model)`` for :func:`levenberg_marquardt` from ``residuals: x [B, P] -> [B, R]`` (a
    least-squares problem: the loss is their squared sum): Gauss-Newton with a forward-difference
    Jacobian (steps ``[P]``), renewed every ``renew_every`` iterations and reused in between. The
    residuals of the accepted trial points are kept, so an iteration costs one call of
    ``residuals`` plus ``P`` for a new Jacobian."""
    probes = torch.diag(steps)  # row j: the step of parameter j
    state: dict[str, Any] = {"calls": 0}

    def loss(x: Tensor) -> Tensor:
        state["trial"] = residuals(x)
        return state["trial"].square().sum(1)

    def model(x: Tensor, at_trial: Tensor) -> tuple[Tensor, Tensor]:
        res = state["trial"] if "res" not in state else torch.where(at_trial[:, None], state["trial"], state["res"])
        state["res"] = res
        if state["calls"] % renew_every == 0:
            jac = torch.stack([(residuals(x + probes[j]) - res) / steps[j] for j in range(len(steps))], 1)  # [B, P, R]
            state["jac"], state["hess"] = jac, jac @ jac.transpose(1, 2)
        state["calls"] += 1
        return (state["jac"] @ res[:, :, None])[..., 0], state["hess"]

    return loss, model
