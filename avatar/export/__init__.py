"""Exports: GLB (mesh, ARKit-52 morph targets, skin, texture, animation), 3DGS .ply, OBJ."""
from avatar.export.gltf import GlbInfo, GltfAnimation, export_glb
from avatar.export.obj import export_obj
from avatar.export.ply import read_gaussians_ply, write_gaussians_ply
from avatar.export.texture import TextureBake, bake_texture_from_frames, default_texture, texture_from_vertex_colors

__all__ = [
    "GlbInfo", "GltfAnimation", "export_glb", "export_obj", "read_gaussians_ply", "write_gaussians_ply",
    "TextureBake", "bake_texture_from_frames", "default_texture", "texture_from_vertex_colors",
]
