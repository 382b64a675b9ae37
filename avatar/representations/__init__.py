"""Representations: appearance bound to the deforming head mesh, drawn by the rasterizer.

First kind: :class:`MeshGaussians` (Gaussians in triangle frames). The interface
(:class:`Representation` -> :class:`Splats`) is meant for more kinds later.
"""
from avatar.representations.base import Representation, Splats, render_splats
from avatar.representations.bundle import (
    Avatar,
    load_avatar,
    load_representation,
    save_avatar,
    save_representation,
)
from avatar.representations.mesh_gaussians import REGIONS, MeshGaussians, face_regions

__all__ = [
    "Avatar", "MeshGaussians", "REGIONS", "Representation", "Splats", "face_regions", "load_avatar",
    "load_representation", "render_splats", "save_avatar", "save_representation",
]
