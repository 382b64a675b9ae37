"""`avatar demo`: the README's first command. Reconstructs an avatar from the built-in sample
photo (track -> train -> export -> orbit video) and renders the default head model: a neutral
view, an expression sheet and a turntable strip."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

SHEET = [
    ("neutral", ()),
    ("jawOpen", ("jawOpen=1",)),
    ("smile", ("mouthSmileLeft=1", "mouthSmileRight=1")),
    ("blink", ("eyeBlinkLeft=1", "eyeBlinkRight=1")),
    ("browInnerUp", ("browInnerUp=1",)),
    ("mouthPucker", ("mouthPucker=1",)),
    ("cheekPuff", ("cheekPuff=1",)),
    ("tongueOut", ("jawOpen=0.6", "tongueOut=1")),
]


SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "samples" / "astronaut_head.png"


@dataclass
class Demo:
    """Reconstruct an avatar from the built-in sample photo (public-domain NASA portrait) into
    OUT/astronaut/ (tracking, avatar, GLB + PLY exports, orbit video), and render the default head
    model: OUT/head.png, OUT/expressions.png, OUT/turntable.png. Re-running resumes."""

    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("demo_out")
    """Folder to write into."""
    size: int = 384
    """Size of each rendered view of the head model, in pixels."""
    steps: int = 600
    """Training steps for the sample avatar (one photo needs fewer than a video)."""
    reconstruct: bool = True
    """Reconstruct the sample avatar (--no-reconstruct renders only the head model)."""

    def run(self) -> None:
        self.render_model()
        if self.reconstruct:
            from avatar.errors import MissingAssetError
            from avatar_apps.reconstruct import Reconstruct

            if not SAMPLE.exists():
                raise MissingAssetError(f"the built-in sample {SAMPLE} is missing; reinstall from the repository")
            Reconstruct(input=SAMPLE, output=Path(self.output) / "astronaut", steps=self.steps).run()

    def render_model(self) -> None:
        from tqdm import tqdm

        from avatar_apps.show_model import ShowModel, load_model, render_head, write_image

        out = Path(self.output)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        print("loading AnnyHead (the first run on a machine builds anny's data: ~2 minutes) ...")
        head = load_model(ShowModel())
        print(f"model ready in {time.perf_counter() - t0:.1f} s: {head.num_vertices} vertices, "
              f"{head.faces.shape[0]} triangles, {head.num_expressions} expressions, {head.num_shape} shape channels")
        views = []
        for _, expr in tqdm(SHEET, desc="expressions"):
            views.append(render_head(head, ShowModel(size=self.size, expression=expr, yaw=15.0)))
        sheet = np.concatenate([np.concatenate(views[:4], 1), np.concatenate(views[4:], 1)], 0)
        turn = [render_head(head, ShowModel(size=self.size, yaw=yaw)) for yaw in tqdm((-90, -45, 0, 45, 90), desc="turntable")]
        write_image(out / "head.png", render_head(head, ShowModel(size=self.size)))
        write_image(out / "expressions.png", sheet)
        write_image(out / "turntable.png", np.concatenate(turn, 1))
        print(f"wrote {out}/head.png, {out}/expressions.png ({', '.join(l for l, _ in SHEET)}), {out}/turntable.png "
              f"in {time.perf_counter() - t0:.1f} s")
