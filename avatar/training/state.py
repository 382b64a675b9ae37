"""Everything a training run changes, in one object with one ``state_dict``/``load_state_dict``:
the representation, its optimiser, the densify strategy, the per-frame refinements of the
tracking and their optimiser, the learnt pose correction and its optimiser, the batch-sampling
generator and the step. A checkpoint is exactly :meth:`TrainState.state_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar.errors import AvatarError
from avatar.representations import MeshGaussians, Representation
from avatar.representations.bundle import REPRESENTATIONS
from avatar.representations.neural_points import POINTS_MLP
from avatar.training.config import TrainConfig, upgrade_saved
from avatar.models.base import FRAME_PARAMS
from avatar.training.data import Clip
from avatar.training.refine import RIGID, PoseCorrection, RowAdam
from avatar.training.strategy import DensifyStrategy
from avatar.utils.files import atomic_path, file_sha256

#: Layout version of :meth:`TrainState.state_dict`; a checkpoint of another is not resumed.
CHECKPOINT_FORMAT = 1

# Fewer training frames than this show too few expressions to learn expression blendshapes from
# (one photo: a second offset and colour for its one expression, which only the regularisers hold).
MIN_EXPRESSION_FRAMES = 8
# Nor is a frame's pose refined below this many: with one view the avatar takes any misalignment
# into itself, and a refined pose only moves it away from the tracked one its exports are posed by.
MIN_POSE_FRAMES = MIN_EXPRESSION_FRAMES


# HashBlendshapes' MLP and learnt basis (one Adam rate, hash.lr_mlp)
HASH_MLP = ("hash_mlp_w1", "hash_mlp_b1", "hash_mlp_w2", "hash_mlp_b2", "hash_proj")


def learning_rates(config: TrainConfig) -> dict[str, float]:
    """The Adam rate of each parameter the representation exposes (those not named stay fixed)."""
    return {"offset": config.lr_offset, "rot": config.lr_rot, "log_scale": config.lr_scale,
            "opacity_logit": config.lr_opacity, "sh_dc": config.lr_color, "sh_rest": config.lr_sh_rest,
            "follow_logit": config.lr_follow, "turn_logit": config.lr_turn, "static_pos": config.lr_static,
            "expr_color": config.lr_expr, "expr_offset": config.lr_expr, "expr_proj": config.lr_expr_proj,
            "hash_tables": config.hash.lr, **dict.fromkeys(HASH_MLP, config.hash.lr_mlp),
            "canon": config.points.lr_position, "light": config.points.lr_light,
            **dict.fromkeys(POINTS_MLP, config.points.lr_mlp)}  # fmt: skip


def make_optimizer(rep: Representation, config: TrainConfig) -> torch.optim.Adam:
    """Adam over the representation's parameters, one group per name (the strategy edits them by name)."""
    lrs = learning_rates(config)
    params = {**rep.primitive_parameters(), **rep.shared_parameters()}
    for k, p in params.items():
        if k not in lrs:  # fixed by the configuration (e.g. body_logit, set from body_translation)
            p.requires_grad_(False)
    groups = [{"params": [p], "lr": lrs[k], "name": k} for k, p in params.items() if k in lrs]
    # fused: one pass per tensor instead of ~8 elementwise ops (a third of the Adam time on CPU)
    return torch.optim.Adam(groups, eps=1e-15, fused=True)


def with_correction(deltas: dict[str, Tensor], correction: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Per-frame ``deltas`` plus a pose ``correction`` (both name -> ``[N, D]``, every frame's)."""
    if not correction:
        return deltas
    return {**correction, **{k: d + correction[k] if k in correction else d for k, d in deltas.items()}}


@dataclass
class Refinements:
    """Per-frame deltas of the tracking (name -> ``[N, D]``, zeros = as tracked), each on its own
    per-row Adam, and the learnt pose correction (a function of the tracked pose, every frame's)."""

    deltas: dict[str, Tensor]
    optimizer: RowAdam | None
    correction: PoseCorrection | None = None
    correction_optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def for_clip(cls, clip: Clip, config: TrainConfig, device: torch.device) -> "Refinements":
        enough = len(clip.train_ids) >= MIN_POSE_FRAMES
        keys = [k for k in RIGID if config.refine_pose and enough and k in clip.params]
        keys += [k for k in FRAME_PARAMS if config.refine_tracking and k not in RIGID]
        deltas = {k: torch.zeros_like(clip.params[k], device=device).requires_grad_() for k in keys}
        lrs = {k: config.lr_pose_rotation if k == "global_orient" else config.lr_pose_translation if k in RIGID
               else config.lr_tracking for k in deltas}  # fmt: skip
        out = cls(deltas, RowAdam(deltas, lrs) if deltas else None)
        if config.correct_pose and enough:
            out.correction = PoseCorrection.for_clip(clip.params, torch.as_tensor(clip.train_ids)).to(device)
            out.correction_optimizer = torch.optim.Adam(out.correction.parameters(), lr=config.lr_pose_model)
        return out

    def step_deltas(self) -> dict[str, Tensor]:
        """The deltas a training step draws with: per-frame refinements plus the learnt correction."""
        return self.deltas if self.correction is None else with_correction(self.deltas, self.correction())

    def learnt_correction(self) -> dict[str, Tensor] | None:
        with torch.no_grad():
            return None if self.correction is None else {k: v.detach() for k, v in self.correction().items()}

    def add_penalty(self, loss: Tensor, rows: Tensor, config: TrainConfig) -> Tensor:
        """``loss`` plus the L2 pull of the non-rigid refinements of ``rows`` toward the tracking
        and the learnt correction's ridge."""
        pulled = [d for k, d in self.deltas.items() if k not in RIGID]
        if pulled:
            loss = loss + config.w_tracking * sum((d[rows] ** 2).mean() for d in pulled)
        if self.correction is not None:
            loss = loss + config.w_pose_model * self.correction.penalty()
        return loss

    def step(self, rows: Tensor, active: bool) -> None:
        """Update (when ``active``) and clear the gradients of the refinements."""
        if self.correction is not None:
            if active:
                self.correction_optimizer.step()
            self.correction_optimizer.zero_grad(set_to_none=True)
        if self.optimizer is not None:
            if active:
                self.optimizer.step(rows)
            for d in self.deltas.values():
                d.grad = None


@dataclass
class TrainState:
    """The run's changing state; ``step`` is the number of completed steps."""

    rep: Representation  # MeshGaussians or one of its kinds (config.representation)
    optimizer: torch.optim.Adam
    strategy: DensifyStrategy
    refinements: Refinements
    generator: torch.Generator
    step: int = 0
    init_metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fresh(cls, rep: MeshGaussians, clip: Clip, config: TrainConfig, device: torch.device,
              generator: torch.Generator, init_metrics: dict[str, Any]) -> "TrainState":  # fmt: skip
        return cls(rep, make_optimizer(rep, config), DensifyStrategy(config.strategy, config.steps),
                   Refinements.for_clip(clip, config, device), generator, 0, init_metrics)  # fmt: skip

    def state_dict(self, config: TrainConfig) -> dict[str, Any]:
        ref = self.refinements
        state = {
            "format": CHECKPOINT_FORMAT, "step": self.step, "config": config.to_dict(),
            "rep_config": self.rep.config(), "rep_state": {k: v.detach().cpu() for k, v in self.rep.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "strategy": self.strategy.state_dict(),
            "deltas": {k: d.detach().cpu() for k, d in ref.deltas.items()}, "generator": self.generator.get_state(),
            "delta_optimizer": ref.optimizer.state_dict() if ref.optimizer is not None else {},
            "init_metrics": self.init_metrics,
        }  # fmt: skip
        if ref.correction is not None:
            state["pose_model"] = {k: v.detach().cpu() for k, v in ref.correction.state_dict().items()}
            state["pose_model_keys"] = ref.correction.keys
            state["pose_model_optimizer"] = ref.correction_optimizer.state_dict()
        return state

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any], clip: Clip, config: TrainConfig, device: torch.device,
                        name: str = "the checkpoint") -> "TrainState":  # fmt: skip
        """The state saved as ``ck`` (:meth:`state_dict`), every tensor on ``device``."""
        rep = REPRESENTATIONS[ck["rep_config"]["kind"]].from_state(ck["rep_config"], ck["rep_state"]).to(device)
        generator = torch.Generator()
        generator.set_state(ck["generator"])
        state = cls.fresh(rep, clip, config, device, generator, ck["init_metrics"])
        state.step = int(ck["step"])
        ref = state.refinements
        for k, d in ref.deltas.items():
            if k in ck.get("deltas", {}):
                d.data.copy_(ck["deltas"][k])
        if ref.optimizer is not None and set(ck.get("delta_optimizer", {}).get("m", {})) == set(ref.deltas):
            ref.optimizer.load_state_dict(ck["delta_optimizer"])
        try:
            state.optimizer.load_state_dict(ck["optimizer"])
        except ValueError as e:  # parameter groups changed: a checkpoint of an older version
            raise AvatarError(f"{name} was written by an older version of avatar and cannot be resumed; "
                              "start over with `avatar train OUT --restart`") from e  # fmt: skip
        state.strategy.load_state_dict({k: v.to(device) if isinstance(v, Tensor) else v for k, v in ck["strategy"].items()})
        if ref.correction is not None and "pose_model" in ck:
            ref.correction.load_state_dict(ck["pose_model"])
            ref.correction_optimizer.load_state_dict(ck["pose_model_optimizer"])
        return state


#: Settings that may differ between a run and its resume: where it runs, what it writes, its length
#: (the learning-rate decay follows the new one), and the measurements made after training. Any
#: other change makes a different avatar, so resuming with it is refused.
RESUME_FREE = frozenset({"steps", "device", "torch_threads", "raster_threads", "checkpoint_every", "keep_checkpoints",
                         "eval_video", "eval_refine_iters", "eval_max_frames", "pose_fit_frames",
                         "pose_fit_ridge"})  # fmt: skip


def input_digest(out_dir: Path) -> dict[str, str]:
    """What a run was trained from, to compare on resume: the SHA-256 of ``tracking.npz``."""
    return {"tracking": file_sha256(out_dir / "tracking.npz")}


def check_resumable(ck: dict[str, Any], config: TrainConfig, inputs: dict[str, str], name: str) -> None:
    """Raises an :class:`AvatarError` naming what changed when checkpoint ``ck`` was made with other
    settings (outside :data:`RESUME_FREE`) or from other inputs than this run's. A checkpoint of an
    earlier version names some settings by their old flat names (``hash_levels``): read as ``hash.levels``."""
    saved = _flat(upgrade_saved(ck.get("config", {})))
    now, default = _flat(config.to_dict()), _flat(TrainConfig().to_dict())

    def differs(k: str) -> bool:
        if k not in saved:  # a setting added since the checkpoint: a change only away from its default
            return now[k] != default.get(k)
        return k in now and saved[k] != now[k]  # one this version no longer has cannot be compared

    changed = [k for k in sorted(saved.keys() | now.keys()) if k.split(".")[0] not in RESUME_FREE and differs(k)]
    fix = "; resume with the same settings, or start over with `avatar train OUT --restart`"
    if changed:
        listed = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:4]) + (", ..." if len(changed) > 4 else "")
        raise AvatarError(f"{name} was trained with other settings ({listed}){fix}")
    for key, value in ck.get("inputs", {}).items():
        if inputs.get(key) != value:
            raise AvatarError(f"{name}: the {key} changed since this run started (tracked again?){fix}")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"strategy": {"every": 1}}`` -> ``{"strategy.every": 1}``, tuples as lists (as saved)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


# --- checkpoint files ----------------------------------------------------------------------------
def list_checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def latest_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads (older ones are tried if the newest does not)."""
    for path in reversed(list_checkpoints(folder)):
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable file is skipped, never trusted
            continue
        if isinstance(ck, dict) and ck.get("format") == CHECKPOINT_FORMAT:
            return path, ck
    return None


def save_checkpoint(folder: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (:meth:`TrainState.state_dict`) atomically; keep the newest ``keep`` files."""
    path = folder / f"step_{state['step']:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path
