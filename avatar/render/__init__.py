"""Rendering: a CPU mesh preview, and the Gaussian-splat rasterizer (gsplat on CUDA, ours on CPU)."""
from avatar.render._cpu_backend import has_cpu_kernels
from avatar.render.gaussians import RasterOptions, rasterize
