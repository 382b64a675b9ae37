"""avatar: 3D head avatars from a phone video, on CPU or GPU.

Layers (dependencies point one way): io -> perception -> fitting -> models -> representations
-> render (-> kernels) -> training -> export / apps.

The public API is re-exported here lazily, so ``import avatar.errors`` (or the CLI's --help)
does not pay for importing every subsystem.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("avatar")
except PackageNotFoundError:  # source tree not installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "HeadModel": "avatar.models.base",
    "HeadOutput": "avatar.models.base",
    "AnnyHead": "avatar.models.anny_head",
    "FlameHead": "avatar.models.flame",
    "load_head_model": "avatar.models",
    "AvatarError": "avatar.errors",
    "track": "avatar.fitting",
    "load_tracking": "avatar.fitting",
    "load_avatar": "avatar.representations",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'avatar' has no attribute {name!r}")
