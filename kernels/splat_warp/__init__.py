"""Gaussian-splat kernels written with NVIDIA Warp: one source for CUDA and the CPU.

The same three ops as the C++ kernels in ``kernels/splat_cpu`` (and gsplat v1.5's CUDA ones), with
the same semantics, float32 only:

- ``project``: EWA projection of 3D Gaussians into pinhole cameras and its backward pass
  (one thread per (camera, Gaussian); the backward, one thread per Gaussian over all cameras).
- ``binning``: per-Gaussian tile counts, intersection lists keyed by (camera, tile, depth),
  sorted with torch, and per-tile ranges.
- ``raster``: front-to-back blending per pixel with early termination, and the back-to-front
  backward pass that scatters per-Gaussian gradients with atomics. The channel count is a
  compile-time vector length, so each channel count gets its own kernels (compiled once).

Warp compiles these kernels with its bundled NVRTC for CUDA and with LLVM for the CPU, so the
CPU-only CI runs the very code that runs on the GPU. The autograd wrappers, which launch the
kernels on the tensors' device and CUDA stream, are in ``avatar/render/_gpu.py``; importing this
package imports warp but compiles nothing (Warp compiles a module at its first launch and caches
it on disk).
"""
