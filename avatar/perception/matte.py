"""Person matte: MediaPipe's selfie-segmentation model, per frame, with a temporal filter.

The model sees the whole frame resized (aspect not kept) to 256x256 (``general``) or 256x144
(``landscape``) and returns a foreground probability per pixel, which we resize back to the frame.

Temporal filter: frame-to-frame, the model's mask flickers where it is unsure (hair, hands, motion
blur). Each pixel mixes in the previous filtered value with a weight that grows with the new
value's uncertainty (its binary entropy, 1 at p = 0.5, 0 at p = 0 or 1) times ``smoothing``:
confident pixels follow the new frame at once (no lag on real motion), unsure ones are damped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from avatar.perception._tflite import TfliteModel
from avatar.perception.assets import asset_path
from avatar.perception.roi import to_uint8_rgb

_MODELS = {"general": "selfie_segmentation.tflite", "landscape": "selfie_segmentation_landscape.tflite"}


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, in [0, 1]."""
    q = np.clip(p, 1e-6, 1.0 - 1e-6)
    return -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))


@dataclass
class PersonMatte:
    """``matte(frame) -> [H, W] float32`` foreground probability (person = 1).

    >>> matte = PersonMatte()                 # doctest: +SKIP
    >>> masks = [matte(f) for f in frames]    # doctest: +SKIP
    """

    model: str = "auto"  # "general" (256x256), "landscape" (256x144), or "auto": by frame shape
    num_threads: int = 1
    smoothing: float = 0.9  # 0 = no temporal filter; weight of history on fully unsure pixels
    _prev: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model not in ("auto", "general", "landscape"):
            raise ValueError(f"model must be 'auto', 'general' or 'landscape', got {self.model!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        self._models: dict[str, TfliteModel] = {}

    def _net(self, name: str) -> TfliteModel:
        if name not in self._models:
            self._models[name] = TfliteModel(asset_path(_MODELS[name]), self.num_threads)
        return self._models[name]

    def reset(self) -> None:
        """Forget the previous frame (call between unrelated clips)."""
        self._prev = None

    def raw(self, image: np.ndarray) -> np.ndarray:
        """The model's mask for one frame, no temporal filtering: [H, W] float32 in [0, 1]."""
        img = to_uint8_rgb(image)
        h, w = img.shape[:2]
        name = self.model if self.model != "auto" else ("landscape" if w > h else "general")
        net = self._net(name)
        _, th, tw, _ = net.input_shape
        tensor = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32) * (1.0 / 255.0)
        mask = net(tensor[None])[0].reshape(th, tw)
        return np.clip(cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        mask = self.raw(image)
        if self._prev is not None and self._prev.shape == mask.shape and self.smoothing > 0:
            keep = self.smoothing * _entropy(mask)
            mask = mask + (self._prev - mask) * keep
        self._prev = mask
        return mask.astype(np.float32)
