"""`avatar view`: the avatar in the browser (viser), with expression sliders and playback."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro


@dataclass
class View:
    """Open the avatar in a browser: OUT/avatar rendered on this machine by the renderer of `avatar
    render` (each browser tab's camera; a lower resolution while the view moves, full when it
    stops), else the shaded head mesh; 52 ARKit sliders, jaw/neck/eye pose, playback of
    OUT/tracking.npz (and of other people's tracking files given with --reenact), screenshots and
    recordings. It opens on the view of `avatar render OUT --camera frontal --neutral`. Without OUT:
    the default head."""

    out: tyro.conf.Positional[Path | None] = None
    """Output folder of `avatar reconstruct` / `avatar track` (optional)."""
    model: Literal["anny", "flame"] = "anny"
    """Head model when OUT has no avatar: the built-in AnnyHead or a FLAME .pkl (--model-path)."""
    model_path: Path | None = None
    """FLAME .pkl file; with --model flame, or for a FLAME avatar whose file moved since training."""
    reenact: tuple[Path, ...] = ()
    """Other people's tracking.npz files to play on this avatar (cross-reenactment). Files typed in
    the browser must lie inside OUT; these are allowed because you named them here."""
    host: str = "127.0.0.1"
    """Address to serve on. Anything but a loopback address exposes the viewer to your network."""
    port: int = 8080
    """Port (the next free one is used if it is taken)."""
    client_splats: bool = False
    """Let the browser draw the Gaussians instead of streaming images rendered here: turning the
    view costs no images (smooth far from this machine), an expression change re-sends the splats.
    Colour (SH) and back-face culling are baked for a tab's view once it stops moving, but the
    browser blends splats its own way (sorting, dilation, opacity rules), so the image is close to,
    not equal to, `avatar render`'s. A head mesh (no OUT/avatar) is drawn by the browser either way."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the server renders (auto = CUDA when a GPU rasterizer works)."""
    save_dir: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None
    """Where screenshots/ and recordings/ go (default: OUT, else the current folder)."""

    def run(self) -> None:
        from avatar.viewer import is_loopback, open_viewer

        if not is_loopback(self.host):
            print(f"avatar view: warning: serving on {self.host}; anyone who can reach it can see and drive "
                  "the avatar. Use the default 127.0.0.1 (and an SSH tunnel) unless you mean to share it.",
                  file=sys.stderr)  # fmt: skip
        viewer = open_viewer(
            self.out, model=self.model, model_path=self.model_path, reenact=self.reenact, host=self.host,
            port=self.port, save_dir=self.save_dir, client_splats=self.client_splats, device=self.device,
        )  # fmt: skip
        if viewer.renders_on_server:
            from avatar.render.device import describe

            how = f"rendered here on {describe(viewer.render_device)}"
        else:
            how = "drawn by the browser"
        print(f"avatar view: open {viewer.url} in a browser (Ctrl+C to stop); the view is {how}")
        try:
            while True:
                time.sleep(1.0)
        finally:
            viewer.close()
