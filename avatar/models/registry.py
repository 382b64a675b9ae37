"""Pick a head model by name: ``load_head_model("anny")`` (default) or ``load_head_model("flame", path)``."""
from __future__ import annotations

import torch

from avatar.errors import AvatarError, MissingAssetError
from avatar.models.base import HeadModel

__all__ = ["HEAD_MODELS", "load_head_model"]

HEAD_MODELS = ("anny", "flame")


def load_head_model(
    name: str = "anny",
    path: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HeadModel:
    """Load a head model.

    Args:
        name: ``"anny"`` (the built-in AnnyHead, CC0 data) or ``"flame"`` (a FLAME file you supply).
        path: the FLAME model file; required for ``"flame"``, unused for ``"anny"``.
        device, dtype: where and in which precision the model's tensors live.

    >>> model = load_head_model("flame", path="flame2023.pkl")  # doctest: +SKIP
    """
    key = name.strip().lower()
    if key == "anny":
        from avatar.models.anny_head import AnnyHead

        return AnnyHead.load(device=device, dtype=dtype)
    if key == "flame":
        from avatar.models.flame import FLAME_HELP, FlameHead

        if path is None:
            raise MissingAssetError(f"the FLAME head model needs its model file: pass path=... . {FLAME_HELP}")
        return FlameHead.from_file(path, device=device, dtype=dtype)
    raise AvatarError(f"unknown head model {name!r}; choose one of: {', '.join(HEAD_MODELS)}")
