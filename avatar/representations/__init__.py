"""Representations: appearance bound to the deforming head mesh, drawn by the rasterizer.

Kinds: :class:`MeshGaussians` (Gaussians in triangle frames), :class:`HashBlendshapes` (the
same Gaussians, expression detail from hash grids over the neutral head) and :class:`NeuralPoints`
(points free in canonical space, deformed by an MLP), behind one interface
(:class:`Representation` -> :class:`Splats`).
"""
from avatar.representations.base import Representation, Splats, render_splats
from avatar.representations.bundle import (
    Avatar,
    load_avatar,
    load_representation,
    save_avatar,
    save_representation,
)
from avatar.representations.hash_blendshapes import HashBlendshapes
from avatar.representations.mesh_gaussians import REGIONS, MeshGaussians, face_regions
from avatar.representations.neural_points import NeuralPoints

__all__ = [
    "Avatar", "HashBlendshapes", "MeshGaussians", "NeuralPoints", "REGIONS", "Representation", "Splats", "face_regions", "load_avatar",
    "load_representation", "render_splats", "save_avatar", "save_representation",
]
