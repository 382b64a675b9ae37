"""Head models: parameters -> vertices, joints, landmarks (differentiable, batched)."""
from avatar.models.anny_head import AnnyHead
from avatar.models.base import HeadModel, HeadOutput, skin
from avatar.models.flame import FlameHead
from avatar.models.registry import load_head_model

__all__ = ["AnnyHead", "HeadModel", "HeadOutput", "skin", "FlameHead", "load_head_model"]
