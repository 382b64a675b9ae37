"""Cameras of the viewer: the frontal view that ``avatar render --camera frontal`` and the viewer
both open on, and a browser tab's camera as the rasterizer takes it (``viewmat`` world -> camera,
OpenCV axes, ``K`` in pixels; see DESIGN.md's conventions).

viser reports each tab's camera as ``T_world_camera`` (``wxyz``, ``position``, OpenCV axes), a
vertical field of view and the canvas size in device pixels. A :class:`ViewCamera` keeps exactly
that, so it can be rendered at any resolution with the same view (the browser stretches the image
over its canvas).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FRONTAL_FOV_DEG", "FRONTAL_PITCH_DEG", "ViewCamera", "frontal_framing", "frontal_camera"]

#: The frontal view: vertical field of view, and how far above the head's centre the camera looks from.
FRONTAL_FOV_DEG = 20.0
FRONTAL_PITCH_DEG = 5.0


def frontal_framing(vertices) -> tuple[np.ndarray, float]:
    """``(centre [3], distance)`` of the frontal and orbit views of a head whose rest vertices are
    ``vertices [V, 3]``: the camera aims at the centre of the bounding box from a distance at which
    the head fills two thirds of the image height."""
    v = torch.as_tensor(vertices).detach()  # in its own dtype, as `avatar render` always did
    centre = (0.5 * (v.amax(0) + v.amin(0))).double().cpu().numpy()
    height = float(v[:, 1].amax() - v[:, 1].amin())
    return centre, 0.75 * height / np.tan(np.radians(FRONTAL_FOV_DEG / 2))


def frontal_camera(vertices, width: int, height: int) -> "ViewCamera":
    """The frontal view of the head at rest (``vertices [V, 3]``) as a ``width`` x ``height`` camera."""
    from avatar.render.mesh import orbit_viewmat

    centre, distance = frontal_framing(vertices)
    return ViewCamera(orbit_viewmat(centre, distance, 0.0, FRONTAL_PITCH_DEG), math.radians(FRONTAL_FOV_DEG), width, height)


@dataclass(frozen=True, eq=False)
class ViewCamera:
    """A pinhole camera with the principal point at the image centre.

    Attributes:
        viewmat: ``[4, 4]`` world -> camera (OpenCV axes).
        fov_y: vertical field of view in radians.
        width, height: image size in pixels.
    """

    viewmat: np.ndarray
    fov_y: float
    width: int
    height: int

    @classmethod
    def from_viser(cls, camera, max_side: int | None = None) -> "ViewCamera":
        """A tab's camera (viser's ``CameraHandle``) at its canvas size, or smaller so that the
        longer side is at most ``max_side``."""
        from avatar.representations.geometry import quat_to_matrix

        R = quat_to_matrix(torch.as_tensor(np.asarray(camera.wxyz, np.float64))).numpy()  # camera -> world
        t = np.asarray(camera.position, np.float64)
        view = np.eye(4)
        view[:3, :3] = R.T
        view[:3, 3] = -R.T @ t
        cam = cls(view, float(camera.fov), max(1, int(camera.image_width)), max(1, int(camera.image_height)))
        if max_side is not None and max(cam.width, cam.height) > max_side:
            cam = cam.with_pixels(cam.width * cam.height * (max_side / max(cam.width, cam.height)) ** 2)
        return cam

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def K(self) -> np.ndarray:
        """``[3, 3]`` intrinsics (as :func:`avatar.render.mesh.intrinsics`)."""
        f = 0.5 * self.height / math.tan(self.fov_y / 2.0)
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    @property
    def key(self) -> tuple:
        """Equal for cameras that render the same image (float noise below 1e-9 ignored)."""
        return (*np.round(self.viewmat[:3].reshape(-1), 9).tolist(), round(self.fov_y, 9), self.width, self.height)

    def with_size(self, width: int, height: int) -> "ViewCamera":
        """The same view at another resolution (same vertical field of view)."""
        return ViewCamera(self.viewmat, self.fov_y, max(1, int(width)), max(1, int(height)))

    def with_pixels(self, pixels: float) -> "ViewCamera":
        """The same view at about ``pixels`` pixels, aspect ratio kept (never larger than this one)."""
        scale = min(1.0, math.sqrt(max(pixels, 1.0) / self.pixels))
        return self.with_size(round(self.width * scale), round(self.height * scale))

    def moved_by(self, head_to_world: np.ndarray) -> "ViewCamera":
        """This camera expressed in a frame placed by ``head_to_world [4, 4]`` (the viewer's rigid head
        pose): rendering the head at rest with it shows what this camera sees of the moved head."""
        return ViewCamera(self.viewmat @ head_to_world, self.fov_y, self.width, self.height)
