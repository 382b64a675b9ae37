"""Where the shipped MediaPipe model files live (``assets/mediapipe/`` at the repository root)."""
from __future__ import annotations

import os
from pathlib import Path

from avatar.errors import MissingAssetError

#: The model files this package uses, all from PyPI's ``mediapipe==0.10.21`` wheel (Apache-2.0).
MODEL_FILES = (
    "face_detection_short_range.tflite",
    "face_detection_full_range_sparse.tflite",
    "face_landmark_with_attention.tflite",
    "selfie_segmentation.tflite",
    "selfie_segmentation_landscape.tflite",
)


def assets_dir() -> Path:
    """The folder holding the MediaPipe models: ``$AVATAR_MEDIAPIPE_ASSETS`` if set, else
    ``assets/mediapipe`` beside the ``avatar`` package (the repository root of a source checkout
    or an editable install)."""
    override = os.environ.get("AVATAR_MEDIAPIPE_ASSETS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "assets" / "mediapipe"


def asset_path(name: str) -> Path:
    """Path of one shipped model file; :class:`MissingAssetError` (naming the fix) when absent."""
    path = assets_dir() / name
    if not path.is_file():
        raise MissingAssetError(
            f"MediaPipe model file {path} is missing. It ships in the repository's assets/mediapipe/ "
            "folder: run avatar from a full checkout (or an editable install, pip install -e .), or "
            "point AVATAR_MEDIAPIPE_ASSETS to a folder holding it (see assets/mediapipe/README.md "
            "for where each file comes from)."
        )
    return path
