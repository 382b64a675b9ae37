"""Training configuration: one typed dataclass, named presets, ``KEY=VALUE`` overrides.

The dataclasses below are the one home of every knob (default and meaning). A preset is a TOML
file in ``configs/`` (installed as the ``avatar_configs`` package) naming only what it changes;
users pass their own file the same way (``avatar train OUT --config my.toml``).

>>> cfg = preset("fast-cpu", steps=300)   # doctest: +SKIP
>>> cfg = load_config("my.toml", base=preset("fast-cpu"))   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from avatar.errors import AvatarError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


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
class HashConfig:
    """The expression field of ``representation = "hash-blendshapes"`` (:class:`~avatar.representations.HashBlendshapes`)."""

    levels: int = 8  # grid levels
    log2_size: int = 12  # rows per level at most, as a power of two
    features: int = 2  # numbers per row
    min_resolution: int = 16  # cells per axis of the coarsest level (the field's cube is 1.5x the head)
    max_resolution: int = 256  # cells per axis of the finest level
    rank: int = 0  # expression grids: 0 = one per expression channel (ARKit-52), r > 0 = a learnt basis of r
    hidden: int = 32  # width of the field's MLP
    groups: int = 16  # groups of triangles that hear the same expression channels (one blended grid each per frame)
    expr_rank: int = 0  # per-Gaussian blendshapes kept beside the field (as the top-level expr_rank); 0 = the field alone
    lr: float = 1e-2  # the grids
    lr_mlp: float = 1e-3  # the MLP (and the learnt basis with rank > 0)


@dataclass(frozen=True)
class PointsConfig:
    """The points of ``representation = "neural-points"`` (:class:`~avatar.representations.NeuralPoints`)."""

    hidden: int = 64  # width of the deformation MLP's two hidden layers
    frequencies: int = 4  # octaves of sines/cosines of the canonical position fed to the MLP
    lr_position: float = 1e-4  # canonical positions (metres)
    lr_mlp: float = 1e-3  # the deformation MLP
    appearance: Literal["sh", "shaded"] = "sh"  # "sh": view-dependent colour as the Gaussians'; "shaded": albedo x a learnt light on the normal
    lr_light: float = 1e-3  # the light of appearance = "shaded"


# The flat names earlier versions saved (report.json, checkpoints, avatar bundles) for what now
# lives in a nested table; TrainConfig.from_dict and resume checks read old configs through it.
LEGACY_NAMES = {
    "hash_levels": "hash.levels", "hash_log2_size": "hash.log2_size", "hash_features": "hash.features",
    "hash_min_resolution": "hash.min_resolution", "hash_max_resolution": "hash.max_resolution",
    "hash_rank": "hash.rank", "hash_hidden": "hash.hidden", "hash_groups": "hash.groups",
    "lr_hash": "hash.lr", "lr_hash_mlp": "hash.lr_mlp", "points_hidden": "points.hidden",
    "points_frequencies": "points.frequencies", "points_lr_position": "points.lr_position", "points_lr_mlp": "points.lr_mlp",
}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``avatar train``. Presets: :data:`PRESETS`. Measured effects of the levers
    that are on by default: ``docs/quality.md``."""

    resolution: int = 512  # long side of the training images (px); K is scaled to match
    head_crop: float = 3.0  # train on a square this many face sizes wide around the head, at most the frame's short side (0 = whole frames)
    steps: int = 6000
    batch_size: int = 1  # frames per step
    per_face: int = 1  # Gaussians per triangle off the face
    per_face_face: int = 3  # Gaussians per triangle on the face
    sh_degree: int = 1
    sh_increase_every: int = 1000  # active SH degree +1 every this many steps
    sh_follows_head: bool = True  # view-dependent colour is kept in the head's frame and turns with it
    lr_offset: float = 3e-3
    lr_offset_final_fraction: float = 0.05  # exponential decay of lr_offset to this fraction
    lr_rot: float = 1e-3
    lr_scale: float = 5e-3
    lr_opacity: float = 3e-2
    lr_color: float = 1e-2
    lr_sh_rest: float = 5e-4
    lr_follow: float = 0.05  # hair: logit of how much it turns with the head (vs stays with the body)
    lr_static: float = 2e-5  # hair: body-fixed position (metres)
    track_body: bool = True  # measure the body's motion from the mattes below the chin; body-fixed hair/shoulders follow it (avatar.perception.body)
    body_translation: float = 0.0  # share of the head's translation body-fixed hair follows (fixed; see MeshGaussians)
    body_rotation: float = 0.02  # hair: initial share of the head's rotation its body frame turns with (see MeshGaussians)
    lr_turn: float = 0.05  # hair: learning rate of that share (its logit), one per Gaussian
    lambda_dssim: float = 0.2  # weight of D-SSIM beside 10 x L2 (losses.photometric_loss); 0 skips SSIM (faster CPU steps)
    lambda_alpha: float = 0.1  # L1 between the rendered opacity and the matte (sharp silhouettes, no halo)
    cull_backfacing: bool = True  # surface Gaussians facing away from the camera are hidden (no see-through face on the back of the head)
    teeth: bool = True  # two arcs of Gaussians behind the lips (seeding.seed_teeth); AnnyHead has no teeth
    seed_off_mesh: bool = True  # seed "hair" Gaussians where the matte shows what the mesh does not cover
    seed_frames: int = 4  # training frames (spread over the clip) that seed them, each filling what is left
    seed_stride: int = 4  # one seed per stride x stride pixels
    # Per-Gaussian colour/offset blendshapes driven by the frame's expression (MeshGaussians
    # docstring): their rank; 0 = none; off below 8 training frames.
    expr_rank: int = 8
    lr_expr: float = 3e-3  # their per-Gaussian coefficients
    lr_expr_proj: float = 1e-3  # the shared expression -> code projection
    w_expr: float = 0.01  # L2 on the blendshapes (hash-blendshapes: on the field's deltas)
    # What is trained: "mesh-gaussians" (MeshGaussians), or "hash-blendshapes" (HashBlendshapes: the
    # same Gaussians, whose expression detail comes from hash grids over the neutral head instead
    # of per-Gaussian blendshapes, so expr_rank is unused; hash.expr_rank keeps some beside the
    # field). [hash] sizes its field. Or
    # "neural-points" (NeuralPoints: points free in canonical space, seeded where the Gaussians
    # would start, deformed by an MLP; expr_rank unused); [points] sizes it.
    representation: Literal["mesh-gaussians", "hash-blendshapes", "neural-points"] = "mesh-gaussians"
    hash: HashConfig = field(default_factory=HashConfig)
    points: PointsConfig = field(default_factory=PointsConfig)
    w_offset: float = 0.01
    w_scale: float = 1.0
    offset_tolerance: float = 0.5  # triangle units before the offset regulariser bites (in-plane)
    scale_tolerance: float = 0.6  # triangle units before the scale regulariser bites
    # Per-frame refinement of the tracking from the training loss (avatar.training.refine): per-row
    # Adam steps from refine_from of the run, once the avatar is sharp enough to align to.
    refine_pose: bool = False  # each training frame's rigid head pose and body motion (not below 8 training frames)
    lr_pose_rotation: float = 2e-3  # radians (axis-angle) per step
    lr_pose_translation: float = 2e-4  # metres per step (head and body)
    # A learnt linear correction of the tracked rigid pose, the same function of it for every frame
    # (refine.PoseCorrection), trained with the per-frame refinements from refine_from; it also
    # moves the held-out frames. Not below 8 training frames.
    correct_pose: bool = True
    lr_pose_model: float = 1e-4  # its Adam rate (radians; translation outputs are scaled by 0.1)
    w_pose_model: float = 1.0  # ridge on its slopes
    # After training: the rigid pose of this many training frames (spread over the clip) is refined
    # against the finished avatar (Levenberg-Marquardt, eval_refine_iters or 6 iterations), and a
    # ridge regression from the tracked pose to that refinement (refine.fit_pose_correction)
    # replaces the learnt correction on the held-out frames. No held-out pixel is used. 0 = off;
    # not below 8 training frames.
    pose_fit_frames: int = 64
    pose_fit_ridge: float = 10.0  # its ridge on the standardised inputs
    refine_tracking: bool = False  # also each training frame's expression, jaw, neck and eyes (small lr)
    lr_tracking: float = 1e-4
    w_tracking: float = 1.0  # L2 pull of the expression/jaw/neck/eyes refinements toward the tracked values
    refine_from: float = 0.2  # fraction of the run after which refinements are updated
    eval_refine_iters: int = 6  # held-out frames: also report PSNR with each frame's rigid pose and body motion refined against the avatar, held fixed (Levenberg-Marquardt iterations per frame; 0 = skip)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    holdout: float = 0.15  # last fraction of frames, never trained on
    # At most this many held-out frames (evenly spread) are evaluated after training, so that a long
    # clip's evaluation stays bounded (a 5-minute clip holds out 1,125; 0 = all).
    eval_max_frames: int = 300
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
        for name in ("body_translation", "body_rotation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AvatarError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], drop_unknown: bool = False) -> "TrainConfig":
        """The config :meth:`to_dict` saved, by this version or an earlier one (flat names of
        :data:`LEGACY_NAMES` are read into their tables), type-checked as a settings file.
        ``drop_unknown``: ignore settings this version no longer has (reports of old runs)."""
        data = upgrade_saved(data)
        return apply(cls(), _known(data, cls) if drop_unknown else data, "saved config")


def upgrade_saved(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (:meth:`TrainConfig.to_dict`) with the flat names of earlier versions
    (:data:`LEGACY_NAMES`) moved into their tables: ``{"hash_levels": 8}`` -> ``{"hash": {"levels": 8}}``."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items() if k not in LEGACY_NAMES}
    for old, new in LEGACY_NAMES.items():
        if old in data:
            table, name = new.split(".")
            out.setdefault(table, {}).setdefault(name, data[old])  # a nested value, if also there, wins
    return out


def _is_table(hint: Any) -> bool:
    """Whether a field is a nested dataclass (``strategy``, ``hash``, ``points``): a ``[table]`` of settings."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _known(data: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """``data`` without the keys that are not fields of ``cls`` (at every level)."""
    hints = get_type_hints(cls)
    return {k: _known(v, hints[k]) if _is_table(hints[k]) and isinstance(v, Mapping) else v
            for k, v in data.items() if k in hints}  # fmt: skip


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` (as parsed from TOML) checked against the field's type ``hint``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value in args:
            return value
        raise AvatarError(f"{source}: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, key, source)
                except AvatarError:
                    pass
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint in (bool, int, str) and type(value) is hint:
        return value
    raise AvatarError(f"{source}: {key} = {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def apply(cfg: TrainConfig, values: Mapping[str, Any], source: str = "settings") -> TrainConfig:
    """``cfg`` with the fields in ``values`` replaced, each checked against its type.

    ``values`` is shaped like a preset file: top-level ``TrainConfig`` fields, and a table (mapping)
    for each nested one (``strategy``, ``hash``, ``points``). ``source`` names it in errors (e.g.
    the file's path).
    """
    return _replace(cfg, values, source, "")


def _replace(obj: Any, values: Mapping[str, Any], source: str, prefix: str) -> Any:
    """The dataclass ``obj`` with ``values`` applied, nested tables recursively; ``prefix`` is
    where ``obj`` sits (``"hash."``), for the names in errors."""
    hints = get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None or (_is_table(hint) and not isinstance(value, Mapping)):
            valid = ", ".join(prefix + k + (".*" if _is_table(h) else "") for k, h in hints.items())
            moved = f" (now {LEGACY_NAMES[key]})" if not prefix and key in LEGACY_NAMES else ""  # an old script's name
            raise AvatarError(f"{source}: unknown setting {prefix}{key}{moved}; valid: {valid}")
        if _is_table(hint):
            changes[key] = _replace(getattr(obj, key), value, source, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hint, prefix + key, source)
    try:
        return dataclasses.replace(obj, **changes)
    except AvatarError as e:  # a check across fields (__post_init__)
        raise AvatarError(f"{source}: {e}") from None


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """A TOML settings file (the format of ``configs/*.toml``) applied to ``base`` (defaults if None)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise AvatarError(f"{path}: no such settings file") from None
    except tomllib.TOMLDecodeError as e:
        raise AvatarError(f"{path}: not valid TOML ({e}); see configs/fast-cpu.toml for the format") from None
    return apply(base if base is not None else TrainConfig(), values, str(path))


def _load_presets() -> dict[str, TrainConfig]:
    from importlib.resources import as_file, files

    presets = {}
    for item in sorted(files("avatar_configs").iterdir(), key=lambda x: x.name):
        if item.name.endswith(".toml"):
            with as_file(item) as path:
                presets[item.name[: -len(".toml")]] = load_config(path)
    return presets


# The named presets: configs/NAME.toml, each applied to TrainConfig's defaults.
PRESETS: dict[str, TrainConfig] = _load_presets()


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A preset with fields replaced (nested ones as ``strategy.every=...`` via :func:`override`)."""
    if name not in PRESETS:
        raise AvatarError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def override(cfg: TrainConfig, items: tuple[str, ...] | list[str]) -> TrainConfig:
    """Apply ``KEY=VALUE`` strings (``TABLE.KEY=VALUE`` in a nested table: ``hash.levels=12``),
    each typed like the value it replaces."""
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise AvatarError(f"override {item!r} must be KEY=VALUE, e.g. steps=3000")
        value: Any = _parse(raw, _current(cfg, key), key)
        for part in reversed(key.split(".")):  # "hash.levels" -> {"hash": {"levels": value}}, as in a file
            value = {part: value}
        cfg = apply(cfg, value, "--set")  # the same checks (and unknown-key errors) as a settings file
    return cfg


def _current(cfg: TrainConfig, key: str) -> Any:
    """The value of setting ``key`` (``"steps"``, ``"hash.levels"``) in ``cfg``; ``""`` where there is
    none, so that the raw string goes on to :func:`apply`, which names the valid keys."""
    obj: Any = cfg
    for part in key.split("."):
        if not (dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}):
            return ""
        obj = getattr(obj, part)
    return obj


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
