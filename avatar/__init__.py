"""avatar: 3D head avatars from a phone video, on CPU or GPU.

Layers (dependencies point one way): io -> perception -> fitting -> models -> representations
-> render (-> kernels) -> training -> export / apps.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avatar")
except PackageNotFoundError:  # source tree not installed
    __version__ = "0.0.0+unknown"

from avatar.models import AnnyHead, FlameHead, HeadModel, HeadOutput, load_head_model

__all__ = ["AnnyHead", "FlameHead", "HeadModel", "HeadOutput", "load_head_model", "__version__"]
