"""Rendering: a CPU mesh preview, and the Gaussian-splat rasterizer (gsplat on CUDA, ours on CPU)."""
