"""Densify / prune policy, apart from the representation (gsplat's ``Strategy`` idea).

The strategy sees a representation only through its per-primitive protocol
(``primitive_parameters`` / ``primitive_buffers`` / ``set_primitives`` / ``split_values``) and
edits the optimiser's Adam moments alongside, so any densifiable representation works.

Rule (3DGS, Kerbl et al. 2023): accumulate the screen-space positional gradient norm of every
Gaussian over the steps it is visible; every ``every`` steps, Gaussians whose mean gradient
exceeds ``grad_threshold`` are cloned when small or split in two when large; Gaussians with
opacity below ``prune_opacity`` are removed. Optionally opacities are reset periodically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from avatar.representations.base import Representation
from avatar.training.config import StrategyConfig


@dataclass
class DensifyStrategy:
    """``step_post_backward(rep, optimizer, metas, step)`` after each backward pass."""

    config: StrategyConfig
    total_steps: int
    grad_sum: Tensor | None = None
    count: Tensor | None = None
    history: list[dict[str, int]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"grad_sum": self.grad_sum, "count": self.count, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad_sum, self.count = state["grad_sum"], state["count"]
        self.history = list(state["history"])

    def step_pre_backward(self, metas: list[dict[str, Any]]) -> None:
        """Ask the rasterizer to keep the screen-space gradients this strategy reads."""
        if self.config.enabled:
            for m in metas:
                m["means2d"].retain_grad()

    @torch.no_grad()
    def step_post_backward(
        self, rep: Representation, optimizer: torch.optim.Optimizer, metas: list[dict[str, Any]], step: int,
        generator: torch.Generator,
    ) -> dict[str, int] | None:  # fmt: skip
        cfg = self.config
        if not cfg.enabled or step >= cfg.stop_fraction * self.total_steps:
            return None
        n = next(iter(rep.primitive_parameters().values())).shape[0]
        if self.grad_sum is None or self.grad_sum.shape[0] != n:
            self.grad_sum = torch.zeros(n, device=next(iter(rep.primitive_parameters().values())).device)
            self.count = torch.zeros_like(self.grad_sum)
        for m in metas:
            g = m["means2d"].grad
            if g is None:
                continue
            g = g[0].clone()  # [N, 2] pixels -> 3DGS's NDC-scaled units
            g[:, 0] *= m["width"] / 2.0
            g[:, 1] *= m["height"] / 2.0
            visible = (m["radii"][0] > 0).all(-1) if m["radii"].dim() == 3 else m["radii"][0] > 0
            self.grad_sum[visible] += g[visible].norm(dim=-1)
            self.count[visible] += 1
        if step < cfg.start or step % cfg.every != 0:
            return None
        result = self._refine(rep, optimizer, generator)
        if cfg.reset_opacity_every and step % cfg.reset_opacity_every == 0:
            self._reset_opacity(rep, optimizer)
        result["step"] = step
        self.history.append(result)
        return result

    def _refine(self, rep: Representation, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict[str, int]:
        cfg = self.config
        params = rep.primitive_parameters()
        n = self.grad_sum.shape[0]
        mean_grad = self.grad_sum / self.count.clamp_min(1)
        big_grad = mean_grad > cfg.grad_threshold
        large = params["log_scale"].amax(-1) > math.log(cfg.split_scale) if "log_scale" in params else torch.zeros_like(big_grad)
        room = max(0, cfg.max_gaussians - n)
        # Near the cap there is room for only some candidates: the largest gradients go first
        # (in index order the oldest Gaussians, the surface, would always win over hair seeds).
        # A split adds one net Gaussian (two children, parent removed), a clone one.
        cand = torch.nonzero(big_grad).squeeze(-1)
        cand = cand[torch.argsort(mean_grad[cand], descending=True, stable=True)][:room]
        clone_idx = cand[~large[cand]].sort().values
        split_idx = cand[large[cand]].sort().values
        # New primitives: copies of the clones, two children per split; the split parents are removed.
        new: dict[str, list[Tensor]] = {k: [] for k in [*params, *rep.primitive_buffers()]}
        if clone_idx.numel():
            for k, v in {**params, **rep.primitive_buffers()}.items():
                new[k].append(v.detach()[clone_idx])
        if split_idx.numel():
            for k, v in rep.split_values(split_idx, 2, generator).items():
                new[k].append(v)
        keep = torch.ones(n, dtype=torch.bool, device=self.grad_sum.device)
        keep[split_idx] = False
        if "opacity_logit" in params:
            keep &= torch.sigmoid(params["opacity_logit"].detach()) >= cfg.prune_opacity
        n_pruned = int((~keep).sum()) - split_idx.numel()
        self._edit(rep, optimizer, keep, {k: torch.cat(v) for k, v in new.items() if v})
        self.grad_sum = self.count = None
        return {"cloned": int(clone_idx.numel()), "split": int(split_idx.numel()), "pruned": n_pruned,
                "total": int(next(iter(rep.primitive_parameters().values())).shape[0])}  # fmt: skip

    @staticmethod
    def _edit(rep: Representation, optimizer: torch.optim.Optimizer, keep: Tensor, append: dict[str, Tensor]) -> None:
        """Keep rows ``keep`` of every per-primitive tensor and append ``append``; Adam moments of
        kept rows survive, appended rows start from zero moments."""
        params = rep.primitive_parameters()
        buffers = rep.primitive_buffers()
        n_new = next(iter(append.values())).shape[0] if append else 0
        new_params = {k: torch.cat([p.detach()[keep], append[k]]) if n_new else p.detach()[keep] for k, p in params.items()}
        new_buffers = {k: torch.cat([b[keep], append[k]]) if n_new else b[keep] for k, b in buffers.items()}
        old = {id(p): k for k, p in params.items()}
        states = {}
        for group in optimizer.param_groups:
            p = group["params"][0]
            if id(p) in old:
                states[old[id(p)]] = optimizer.state.pop(p, None)
        rep.set_primitives(new_params, new_buffers)
        fresh = rep.primitive_parameters()
        for group in optimizer.param_groups:
            name = group.get("name")
            if name in fresh:
                group["params"] = [fresh[name]]
                st = states.get(name)
                if st:
                    for key in ("exp_avg", "exp_avg_sq"):
                        v = st[key][keep]
                        st[key] = torch.cat([v, torch.zeros(n_new, *v.shape[1:], dtype=v.dtype, device=v.device)])
                    optimizer.state[fresh[name]] = st

    @staticmethod
    def _reset_opacity(rep: Representation, optimizer: torch.optim.Optimizer, value: float = 0.01) -> None:
        p = rep.primitive_parameters().get("opacity_logit")
        if p is None:
            return
        cap = math.log(value / (1 - value))
        p.data.clamp_(max=cap)
        st = optimizer.state.get(p)
        if st:
            st["exp_avg"].zero_()
            st["exp_avg_sq"].zero_()
