"""`avatar render OUT`: render a trained avatar to a video - the tracked performance
(self-reenactment), a frontal view, a novel-view orbit, or driven by another person's tracking."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from avatar.errors import AvatarError


@dataclass
class Render:
    """Render OUT/avatar to a video."""

    out: Annotated[Path, tyro.conf.Positional]
    """Folder with the trained avatar (OUT or OUT/avatar)."""
    camera: Literal["orbit", "frontal", "tracked"] = "tracked"
    """tracked: the clip's camera and head pose; frontal: head pose removed, camera in front;
    orbit: the camera circles the head (novel views)."""
    drive: Path | None = None
    """Another clip's tracking.npz: its expressions, eyes and head rotation drive this avatar."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("render.mp4")
    """Video to write."""
    size: int | None = None
    """Image height in pixels (default: the training size for tracked, else 512)."""
    frames: int = 120
    """Orbit: number of frames for one turn (expressions cycle through the performance)."""
    fps: float | None = None
    """Frame rate (default: the clip's)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render (auto = CUDA when usable)."""

    def run(self) -> None:
        import numpy as np
        import torch
        from tqdm import tqdm

        from avatar.io.video import VideoWriter
        from avatar.representations import load_avatar
        from avatar.render.mesh import intrinsics, orbit_viewmat
        from avatar.representations.base import BODY
        from avatar.render.device import pick_device

        dev = pick_device(self.device)
        av = load_avatar(self.out, dev)
        cfg = av.config
        params, fps = self._performance(av)
        fps = self.fps or fps or 25.0
        n = next(iter(params.values())).shape[0]
        W0, H0 = cfg.get("image_size", [512, 512])
        viewmat = torch.tensor(cfg.get("viewmat", np.diag([1.0, -1.0, -1.0, 1.0]).tolist()), dtype=torch.float32)
        if self.camera == "tracked":
            H = self.size or H0
            W = round(W0 * H / H0)
            K = torch.tensor(cfg["K"], dtype=torch.float32)
            K[:2] *= H / H0
            cams = [(viewmat, K)] * n
        else:
            H = W = self.size or 512
            with torch.no_grad():
                v = av.vertices({})[0]
            centre = (0.5 * (v.amax(0) + v.amin(0))).double().cpu().numpy()
            height = float(v[:, 1].amax() - v[:, 1].amin())
            fov = 20.0
            dist = 0.75 * height / np.tan(np.radians(fov / 2))
            K = torch.tensor(intrinsics(W, H, fov), dtype=torch.float32)
            # No global pose: the head at rest at the origin (body-fixed hair placed as at the clip's
            # mean pose), the camera moves instead.
            params = {k: v for k, v in params.items() if k not in ("global_orient", "transl", BODY)}
            if self.camera == "orbit":
                total = self.frames
                rows = np.arange(total) % n
                params = {k: v[torch.as_tensor(rows)] for k, v in params.items()}
                cams = [(torch.tensor(orbit_viewmat(centre, dist, 360.0 * i / total, 5.0), dtype=torch.float32), K)
                        for i in range(total)]  # fmt: skip
            else:
                cams = [(torch.tensor(orbit_viewmat(centre, dist, 0.0, 5.0), dtype=torch.float32), K)] * n
        bg = tuple(cfg.get("background", (1.0, 1.0, 1.0)))
        with VideoWriter(self.output, fps=fps) as writer:
            for i in tqdm(range(len(cams)), desc="render", dynamic_ncols=True):
                vm, k = cams[i]
                rgb, _ = av.render({key: val[i : i + 1].to(dev) for key, val in params.items()}, vm.to(dev), k.to(dev), W, H, bg)
                writer.write(rgb[0].clamp(0, 1).cpu().numpy())
        print(f"wrote {self.output} ({len(cams)} frames, {W}x{H})")

    def _performance(self, av):
        """Per-frame head parameters: the avatar's own (refined) performance, or the driver's."""
        import torch

        from avatar.fitting import load_tracking
        from avatar.models.base import FRAME_PARAMS
        from avatar.representations.base import BODY

        if self.drive is None:
            if av.performance:  # with the tracked body motion when the avatar was trained with it
                return {k: av.performance[k].float().cpu() for k in (*FRAME_PARAMS, BODY) if k in av.performance}, av.config.get("fps")
            tr = load_tracking(Path(av.path).parent)
            return {k: torch.as_tensor(v).float() for k, v in tr.frame_params().items()}, tr.fps
        tr = load_tracking(self.drive)
        if tr.model != av.config["model"]:
            raise AvatarError(f"{self.drive} was tracked with the {tr.model!r} head model; this avatar uses {av.config['model']!r}")
        if list(tr.expression_names) != list(av.head.expression_names):
            raise AvatarError(f"{self.drive}: expression channels differ from this avatar's head model")
        p = {k: torch.as_tensor(v).float() for k, v in tr.frame_params().items()}
        # The driver's translation is about its own distance to its camera: keep its motion,
        # placed where this avatar's subject stood.
        own = av.performance.get("transl")
        if own is not None:
            p["transl"] = p["transl"] - p["transl"].mean(0) + own.float().cpu().mean(0)
        return p, tr.fps
