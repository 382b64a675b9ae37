"""`avatar doctor`: what this machine can run - device, torch and CUDA versions, and which splat
rasterizer backends work here (each one draws a tiny scene and is compared with the dense reference)."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

#: Backends and the devices each is tried on ("cuda" only where torch sees a GPU).
BACKENDS: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),  # our C++ kernels
    "gpu": ("cuda", "cpu"),  # our Warp kernels (on CPU tensors through Warp's CPU device)
    "gsplat": ("cuda",),
    "torch": ("cpu", "cuda"),  # the dense reference
}


@dataclass
class Doctor:
    """Print the device, library versions and which rasterizer backends work on this machine."""

    def run(self) -> None:
        for line in report_lines(probe_environment(), probe_backends()):
            print(line)


def probe_environment() -> dict[str, str]:
    """Versions and devices, as printable strings."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda (torch build)": str(torch.version.cuda or "none (a CPU build of torch)")}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        info["gpu"] = "none visible to torch"
    from avatar.render.device import describe, pick_device

    info["device=auto"] = describe(pick_device("auto"))
    info["warp"] = _version("warp")
    info["gsplat"] = _version("gsplat")
    return info


def _version(module: str) -> str:
    import importlib

    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable here"
        return f"not usable ({type(e).__name__})"


def probe_backends() -> list[dict[str, Any]]:
    """One entry per (backend, device): ``ok`` and a note (the error, or the largest difference
    from the dense reference)."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [_probe(name, device) for name, wanted in BACKENDS.items() for device in wanted if device in devices]


def _probe(backend: str, device: str) -> dict[str, Any]:
    import torch

    from avatar.render import RasterOptions, rasterize

    scene = _tiny_scene(torch.device(device))
    try:
        got, _, _ = rasterize(**scene, options=RasterOptions(backend=backend))  # type: ignore[arg-type]
        ref, _, _ = rasterize(**scene, options=RasterOptions(backend="torch"))
    except Exception as e:  # noqa: BLE001 - the point is to report what fails, whatever it is
        return {"backend": backend, "device": device, "ok": False, "note": f"{type(e).__name__}: {e}".splitlines()[0]}
    err = float((got - ref).abs().max())
    return {"backend": backend, "device": device, "ok": err < 1e-4, "note": f"max difference from the reference {err:.1e}"}


def _tiny_scene(device: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    n = 64
    means = torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 1.0])
    K = torch.tensor([[60.0, 0, 24], [0, 60.0, 20], [0, 0, 1]])
    scene = {"means": means, "quats": torch.randn(n, 4, generator=g), "scales": torch.full((n, 3), 0.02),
             "opacities": torch.full((n,), 0.7), "colors": torch.rand(n, 3, generator=g),
             "viewmats": torch.eye(4)[None], "Ks": K[None]}  # fmt: skip
    return {**{k: v.to(device) for k, v in scene.items()}, "width": 48, "height": 40}


def report_lines(env: dict[str, str], backends: list[dict[str, Any]]) -> list[str]:
    width = max(map(len, env))
    lines = [f"{k:<{width}}  {v}" for k, v in env.items()]
    lines.append("raster backends (AVATAR_RASTER_BACKEND or RasterOptions.backend):")
    for b in backends:
        lines.append(f"  {b['backend']:<7} on {b['device']:<4}  {'ok  ' if b['ok'] else 'FAIL'}  {b['note']}")
    return lines
