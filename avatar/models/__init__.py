"""Head models: parameters -> vertices, joints, landmarks (differentiable, batched)."""
from avatar.models.base import HeadModel, HeadOutput, skin

__all__ = ["HeadModel", "HeadOutput", "skin"]
