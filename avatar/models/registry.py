"""Pick a head model by name: ``load_head_model("anny")`` (default) or ``load_head_model("flame", path)``."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from avatar.errors import AvatarError, MissingAssetError
from avatar.models.base import HeadModel
from avatar.models.landmark_embedding import LandmarkBuilder, cached_landmark_embedding
from avatar.utils.files import file_sha256

__all__ = ["HEAD_MODELS", "load_head_model", "model_file_digest"]

log = logging.getLogger(__name__)

HEAD_MODELS = ("anny", "flame")


def load_head_model(
    name: str = "anny",
    path: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    landmarks: bool = True,
    landmark_builder: LandmarkBuilder | None = None,
    sha256: str | None = None,
    uv_path: str | Path | None = None,
) -> HeadModel:
    """Load a head model.

    Args:
        name: ``"anny"`` (the built-in AnnyHead, CC0 data) or ``"flame"`` (a FLAME file you supply).
        path: the FLAME model file; required for ``"flame"``, unused for ``"anny"``.
        device, dtype: where and in which precision the model's tensors live.
        landmarks: attach the 478-point MediaPipe landmark embedding. AnnyHead ships one; a FLAME
            model gets the one in the user cache folder
            (``avatar.models.landmark_embedding.cached_landmark_embedding``), if it was built.
        landmark_builder: builds a missing FLAME embedding once (renders + FaceMesh, ~30 s on CPU)
            for the cache: ``avatar.render.landmark_embedding.build_landmark_embedding``, handed
            in from above (a model does not render); ``avatar track --model flame`` does.
        sha256: the FLAME file's digest (:func:`model_file_digest`) recorded when a clip was
            tracked or an avatar trained with it; a file whose content differs is refused.
        uv_path: FLAME's texture-space file (``.npz`` with ``vt``/``ft``, or an ``.obj`` with
            ``vt``): the UVs a textured export needs (FLAME's model file has none).

    >>> model = load_head_model("flame", path="flame2023.pkl")  # doctest: +SKIP
    """
    key = name.strip().lower()
    if key != "flame" and uv_path is not None:
        raise AvatarError("a UV file (--uv-path) is only used with the FLAME head model; AnnyHead has its own UVs")
    if key == "anny":
        from avatar.models.anny_head import AnnyHead

        return AnnyHead.load(device=device, dtype=dtype, landmarks=landmarks)
    if key == "flame":
        from avatar.models.flame import FLAME_HELP, FlameHead

        if path is None:
            raise MissingAssetError(f"the FLAME head model needs its model file: on the command line pass --model-path "
                                    f"FILE.pkl (with --model flame). {FLAME_HELP}")  # fmt: skip
        if sha256 and Path(path).is_file() and model_file_digest(path) != sha256:
            raise AvatarError(f"{path} is not the FLAME file this clip was tracked with (its content differs); "
                              "pass that file with --model-path")  # fmt: skip
        head = FlameHead.from_file(path, uv_path=uv_path, device=device, dtype=dtype)
        if landmarks:
            try:
                if cached_landmark_embedding(head, builder=landmark_builder) is None:
                    log.info("FLAME model %s: no landmark embedding cached yet (`avatar track --model flame` builds it)", path)
            except AvatarError as exc:  # the model still works; only landmark fitting needs this
                log.warning("FLAME model %s: no landmark embedding (%s); head.landmark_faces stays empty", path, exc)
        return head
    raise AvatarError(f"unknown head model {name!r}; choose one of: {', '.join(HEAD_MODELS)}")


def model_file_digest(path: str | Path) -> str:
    """SHA-256 of a head-model file: recorded beside its path, so a moved file can be named again
    and a different one is noticed."""
    return file_sha256(path)
