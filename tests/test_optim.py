"""avatar.utils.optim: the one Adam (named tensors, row subsets, schedule) and the one batched
Levenberg-Marquardt loop."""
from __future__ import annotations

import math

import pytest
import torch

from avatar.utils.optim import Adam, LMOptions, cosine_schedule, fd_least_squares, levenberg_marquardt


def _grads(g: torch.Generator, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}


@pytest.mark.parametrize("schedule", [False, True])
def test_adam_full_update_matches_torch(schedule: bool) -> None:
    """Every tensor (a scalar among them), a learning rate per name, 8 steps: torch's Adam with the
    same betas, eps and (for the schedule) a LambdaLR gives the same numbers."""
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (4, 3), "b": (7,), "c": ()}
    lrs = {"a": 0.1, "b": 0.02, "c": 0.3}
    ours = {k: torch.randn(s, generator=g, dtype=torch.float64).requires_grad_(True) for k, s in shapes.items()}
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in ours.items()}
    sched = cosine_schedule(8) if schedule else None
    opt = Adam(ours, lrs, betas=(0.9, 0.99), eps=1e-8, schedule=sched)
    ref_opt = torch.optim.Adam([{"params": [ref[k]], "lr": lrs[k]} for k in shapes], betas=(0.9, 0.99), eps=1e-8)
    # LambdaLR applies factor(epoch) from epoch 0 on; ours reads the 1-based step.
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda e: sched(e + 1)) if schedule else None
    for _ in range(8):
        grads = _grads(g, shapes)
        for k in shapes:
            ours[k].grad, ref[k].grad = grads[k].clone(), grads[k].clone()
        opt.step()
        ref_opt.step()
        if ref_sched is not None:
            ref_sched.step()
        assert all(p.grad is None for p in ours.values())
    for k in shapes:
        torch.testing.assert_close(ours[k].detach(), ref[k].detach(), rtol=0, atol=1e-6)
        assert (ours[k].detach() - ref[k].detach()).abs().max() < 1e-12  # float64: the same to rounding
    assert opt.steps == 8 and int(opt.count) == 8


def test_adam_row_wise_on_every_row_matches_torch() -> None:
    """Row-wise (a count per row), every row in every step (``rows`` all, or ``None``): torch's Adam."""
    g = torch.Generator().manual_seed(2)
    p = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    ref = p.detach().clone().requires_grad_(True)
    opt = Adam({"p": p}, {"p": 0.05}, eps=1e-12, row_wise=True)
    ref_opt = torch.optim.Adam([ref], lr=0.05, eps=1e-12)
    for i in range(6):
        grad = torch.randn(5, 3, generator=g, dtype=torch.float64)
        p.grad, ref.grad = grad.clone(), grad.clone()
        opt.step(torch.arange(5) if i % 2 else None)
        ref_opt.step()
    torch.testing.assert_close(p.detach(), ref.detach(), rtol=0, atol=1e-12)
    assert opt.count.tolist() == [6] * 5


def test_adam_row_subset_leaves_other_rows_and_their_moments_untouched() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.zeros(6, 2, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(6, 3, dtype=torch.float64, requires_grad=True)
    opt = Adam({"p": p, "q": q}, {"p": 0.1, "q": 0.05}, row_wise=True)
    for rows in (torch.tensor([0, 2]), torch.tensor([2, 5]), torch.tensor([2, 2, 0])):
        before = {k: (t.detach().clone(), opt.m[k].clone(), opt.v[k].clone()) for k, t in (("p", p), ("q", q))}
        p.grad = torch.randn(6, 2, generator=g, dtype=torch.float64)
        q.grad = torch.randn(6, 3, generator=g, dtype=torch.float64)
        opt.step(rows)
        out = torch.ones(6, dtype=torch.bool)
        out[rows] = False
        for k, t in (("p", p), ("q", q)):
            value, m, v = before[k]
            assert torch.equal(t.detach()[out], value[out]) and torch.equal(opt.m[k][out], m[out])
            assert torch.equal(opt.v[k][out], v[out])
            assert (t.detach()[rows] != value[rows]).all()
    assert opt.count.tolist() == [2, 0, 3, 0, 0, 1]
    state = opt.state_dict()
    other = Adam({"p": p, "q": q}, {"p": 0.1, "q": 0.05}, row_wise=True)
    other.load_state_dict(state)
    assert torch.equal(other.count, opt.count) and torch.equal(other.v["q"], opt.v["q"]) and other.steps == 3


def test_adam_rejects_what_it_cannot_do() -> None:
    a, b = torch.zeros(3, 2, requires_grad=True), torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError):
        Adam({"a": a, "b": b}, {"a": 0.1, "b": 0.1}, row_wise=True)  # row counts differ
    with pytest.raises(ValueError):
        Adam({"a": a}, {"b": 0.1})
    with pytest.raises(ValueError):
        Adam({"a": a}, {"a": 0.1}).step(torch.tensor([0]))  # rows without row_wise


def _curves(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a exp(-b t) + c`` for each item's ``x = (a, b, c)``: ``[B, T]``."""
    return x[:, :1] * torch.exp(-x[:, 1:2] * t[None]) + x[:, 2:3]


def test_levenberg_marquardt_fits_batched_curves_to_known_parameters() -> None:
    """Four exponential decays, each fitted on its own from a start far off; one item starts at
    its answer and stays there. The Jacobian is analytic here (``model``)."""
    t = torch.linspace(0, 4, 40, dtype=torch.float64)
    truth = torch.tensor([[2.0, 1.5, 0.3], [-1.0, 0.5, 1.0], [0.5, 3.0, -0.2], [1.2, 0.8, 0.0]], dtype=torch.float64)
    y = _curves(t, truth)
    x0 = torch.tensor([[1.0, 0.5, 0.0], [1.0, 2.0, 0.0], [1.0, 1.0, 0.0], [1.2, 0.8, 0.0]], dtype=torch.float64)

    def loss(x):
        return (_curves(t, x) - y).square().sum(1)

    def model(x, at_trial):
        a, b = x[:, :1], x[:, 1:2]
        e = torch.exp(-b * t[None])
        jac = torch.stack([e, -a * t[None] * e, torch.ones_like(e)], 1)  # [B, 3, T]
        r = _curves(t, x) - y
        return (jac @ r[:, :, None])[..., 0], jac @ jac.transpose(1, 2)

    x = levenberg_marquardt(x0, loss, model, iterations=40)
    torch.testing.assert_close(x, truth, rtol=0, atol=1e-8)
    assert float(loss(x).max()) < 1e-20


def test_levenberg_marquardt_finite_differences_bounds_and_held_parameters() -> None:
    """The same curves by :func:`fd_least_squares` (one call of the residuals per iteration plus
    three per Jacobian), with ``c`` held (``active``) and ``b`` bounded below the truth of one item."""
    t = torch.linspace(0, 4, 40, dtype=torch.float64)
    truth = torch.tensor([[2.0, 1.5, 0.3], [-1.0, 0.5, 1.0]], dtype=torch.float64)
    y = _curves(t, truth)
    calls = []

    def residuals(x):
        calls.append(1)
        return _curves(t, x) - y

    x0 = torch.tensor([[1.0, 0.5, 0.3], [1.0, 0.2, 1.0]], dtype=torch.float64)
    upper = torch.tensor([math.inf, 1.0, math.inf], dtype=torch.float64)
    lower = torch.full((3,), -math.inf, dtype=torch.float64)
    x = levenberg_marquardt(x0, *fd_least_squares(residuals, torch.full((3,), 1e-7, dtype=torch.float64), 2), 30,
                            active=torch.tensor([True, True, False]), lower=lower, upper=upper)
    assert len(calls) == 1 + 30 + 15 * 3
    assert torch.equal(x[:, 2], x0[:, 2])  # held
    torch.testing.assert_close(x[1], truth[1], rtol=0, atol=1e-5)  # inside the box: found
    assert x[0, 1] == 1.0  # at its bound (the truth, 1.5, lies outside)


def test_levenberg_marquardt_steps_solved_in_chunks_match(monkeypatch) -> None:
    """Items' damped systems solved a chunk at a time (a long clip's frames) give the same answer,
    bounds and held parameters included."""
    from avatar.utils import optim

    t = torch.linspace(0, 4, 40, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(7, 3, generator=g, dtype=torch.float64) * 2
    y = _curves(t, truth)
    x0 = truth + 0.3 * torch.randn(7, 3, generator=g, dtype=torch.float64)
    x0[:, 1].clamp_(max=1.0)  # a feasible start
    upper = torch.tensor([math.inf, 1.0, math.inf], dtype=torch.float64)
    runs = []
    for chunk in (3, 1024):
        monkeypatch.setattr(optim, "_STEP_CHUNK", chunk)
        lm = fd_least_squares(lambda x: _curves(t, x) - y, torch.full((3,), 1e-7, dtype=torch.float64))
        runs.append(levenberg_marquardt(x0, *lm, 10, active=torch.tensor([True, True, False]), upper=upper))
    assert torch.equal(runs[0], runs[1]) and (runs[0][:, 1] <= 1.0).all()


def test_levenberg_marquardt_rejects_a_step_that_raises_the_loss() -> None:
    """A model whose Hessian is far too small proposes an overshoot: the step is refused (x stays),
    lambda grows until the step is short enough, and an item whose steps all fail never moves."""
    seen = []

    def loss(x):
        return (x - 1.0).square().sum(1)

    def model(x, at_trial):
        seen.append((x.clone(), at_trial.clone()))
        g = 2 * (x - 1.0)
        H = torch.eye(1, dtype=x.dtype).expand(len(x), 1, 1) * torch.tensor([0.01, 1e-9], dtype=x.dtype)[:, None, None]
        return g, H

    x0 = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    x = levenberg_marquardt(x0, loss, model, iterations=3, options=LMOptions(damping=1e-3, increase=10.0))
    # Item 0: steps 2/0.01/(1+lam) ~ 200 overshoot, then lambda 1e-2, 1e-1: all rejected.
    assert torch.equal(x, x0)
    assert [a.tolist() for _, a in seen] == [[True, True], [False, False], [False, False]]
    x = levenberg_marquardt(x0, loss, model, iterations=12, options=LMOptions(damping=1e-3, increase=10.0))
    assert 0.0 < float(x[0, 0]) < 2.0 and float(loss(x)[0]) < 1.0  # damped enough, then accepted
    assert float(x[1, 0]) == 0.0  # H ~ 0: lambda never catches up within 12 iterations
