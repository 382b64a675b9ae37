"""Training configuration: one typed dataclass, named presets, ``KEY=VALUE`` overrides.

>>> cfg = preset("fast-cpu", steps=300)   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from avatar.errors import AvatarError


@dataclass(frozen=True)
class StrategyConfig:
    """Densify / prune policy (:class:`avatar.training.strategy.DensifyStrategy`)."""

    enabled: bool = True
    start: int = 500  # first step that may densify
    stop_fraction: float = 0.6  # densify until this fraction of the run
    every: int = 100  # steps between refinements
    grad_threshold: float = 0.0002  # mean |d loss / d means2d| (NDC-ish units, as 3DGS) to densify
    split_scale: float = 1.0  # split (not clone) when the largest local scale exceeds this (triangle units)
    prune_opacity: float = 0.005
    reset_opacity_every: int = 0  # 0 = never
    max_gaussians: int = 200_000


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``avatar train``. Presets: :data:`PRESETS`."""

    resolution: int = 512  # long side of the training images (px); K is scaled to match
    steps: int = 6000
    batch_size: int = 1  # frames per step
    per_face: int = 1  # Gaussians per triangle off the face
    per_face_face: int = 3  # Gaussians per triangle on the face
    sh_degree: int = 1
    sh_increase_every: int = 1000  # active SH degree +1 every this many steps
    lr_offset: float = 3e-3
    lr_offset_final_fraction: float = 0.05  # exponential decay of lr_offset to this fraction
    lr_rot: float = 1e-3
    lr_scale: float = 5e-3
    lr_opacity: float = 3e-2
    lr_color: float = 1e-2
    lr_sh_rest: float = 5e-4
    lr_follow: float = 0.05  # hair: logit of how much it turns with the head (vs stays with the body)
    lr_static: float = 2e-5  # hair: body-fixed position (metres)
    body_translation: float = 0.0  # share of the head's translation body-fixed hair follows, per axis (see MeshGaussians)
    lr_body: float = 0.0  # learn that share (its logit) at this rate; 0 keeps it (learnt or fixed at 1: no net gain measured)
    body_rotation: float = 0.02  # hair: initial share of the head's rotation its body frame turns with (see MeshGaussians)
    lr_turn: float = 0.05  # hair: learning rate of that share (its logit), one per Gaussian
    photometric: Literal["l1", "l2"] = "l2"  # per-pixel term beside D-SSIM (l2: +0.4-0.8 dB held out; losses.photometric_loss)
    lambda_dssim: float = 0.2
    lambda_alpha: float = 0.1  # L1 between the rendered opacity and the matte (sharp silhouettes, no halo)
    seed_off_mesh: bool = True  # seed "hair" Gaussians where the matte shows what the mesh does not cover
    seed_frames: int = 4  # training frames (spread over the clip) that seed them, each filling what is left
    seed_stride: int = 4  # one seed per stride x stride pixels (2 gave crisper hair that generalised worse)
    w_offset: float = 0.01
    w_scale: float = 1.0
    offset_tolerance: float = 0.5  # triangle units before the offset regulariser bites (in-plane)
    scale_tolerance: float = 0.6  # triangle units before the scale regulariser bites
    refine_tracking: bool = False  # jointly refine per-frame expression/pose (small lr)
    lr_tracking: float = 1e-4
    w_tracking: float = 1.0  # L2 pull of the refinements toward the tracked values
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    holdout: float = 0.15  # last fraction of frames, never trained on
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    color_init_frames: int = 8  # training frames used to initialise colours
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_video: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = 1  # torch intra-op threads on CPU (small per-Gaussian ops: 1 is fastest on a busy machine)
    raster_threads: int | None = None  # CPU rasterizer threads (None = all cores)
    seed: int = 0
    max_frames: int | None = None  # use only the first N tracked frames (quick runs)

    def __post_init__(self) -> None:
        if self.photometric not in ("l1", "l2"):
            raise AvatarError(f"photometric must be 'l1' or 'l2', got {self.photometric!r}")
        for name in ("body_translation", "body_rotation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AvatarError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        strat = StrategyConfig(**data.pop("strategy", {}))
        if "background" in data:
            data["background"] = tuple(data["background"])
        return cls(strategy=strat, **data)


PRESETS: dict[str, TrainConfig] = {
    # 256^2, ~1.4k Gaussian steps: a few minutes on a 2-core CPU.
    "fast-cpu": TrainConfig(
        resolution=256, steps=1500, per_face=1, per_face_face=2, sh_degree=0, checkpoint_every=250,
        strategy=StrategyConfig(enabled=True, start=300, every=150, max_gaussians=40_000),
    ),
    "default": TrainConfig(),
    "quality-gpu": TrainConfig(
        resolution=512, steps=30_000, batch_size=1, per_face=2, per_face_face=4, sh_degree=3,
        refine_tracking=True, checkpoint_every=2000, device="cuda",
        strategy=StrategyConfig(enabled=True, start=1000, every=200, reset_opacity_every=6000, max_gaussians=400_000),
    ),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset with fields replaced (``strategy`` fields as ``strategy.every=...`` via :func:`override`)."""
    if name not in PRESETS:
        raise AvatarError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def override(cfg: TrainConfig, items: tuple[str, ...] | list[str]) -> TrainConfig:
    """Apply ``KEY=VALUE`` strings (``strategy.KEY=VALUE`` for the strategy), typed by the field."""
    top: dict[str, Any] = {}
    strat: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise AvatarError(f"override {item!r} must be KEY=VALUE, e.g. steps=3000")
        target, fields_of, name = (strat, StrategyConfig, key[9:]) if key.startswith("strategy.") else (top, TrainConfig, key)
        known = {f.name: f for f in dataclasses.fields(fields_of)}
        if name not in known or name == "strategy":
            raise AvatarError(f"unknown setting {key!r}; valid: {', '.join(k for k in known if k != 'strategy')}")
        current = getattr(cfg.strategy if fields_of is StrategyConfig else cfg, name)
        target[name] = _parse(raw, current, key)
    if strat:
        top["strategy"] = dataclasses.replace(cfg.strategy, **strat)
    return dataclasses.replace(cfg, **top)


def _parse(raw: str, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if isinstance(current, int) or (current is None and raw.lstrip("-").isdigit()):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, tuple):
            return tuple(float(x) for x in raw.split(","))
        if current is None and raw.lower() == "none":
            return None
        return raw
    except ValueError as e:
        raise AvatarError(f"setting {key}: cannot parse {raw!r} like {current!r}") from e
