"""Training: fit a representation to a tracked clip (photometric loss on the matted foreground),
densify/prune policy, checkpoints with resume, held-out evaluation."""
from avatar.training.config import (PRESETS, HashConfig, PointsConfig, StrategyConfig, TrainConfig, apply, load_config,
                                    override, preset)  # fmt: skip
from avatar.training.trainer import evaluate, train

__all__ = ["PRESETS", "HashConfig", "PointsConfig", "StrategyConfig", "TrainConfig", "apply", "evaluate", "load_config",
           "override", "preset", "train"]  # fmt: skip
