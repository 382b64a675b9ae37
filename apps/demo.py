"""`avatar demo`: the README's first command. Until the full pipeline lands it builds the default
head and renders it: a neutral view, an expression sheet and a turntable strip."""
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


@dataclass
class Demo:
    """Build the default head (AnnyHead) and render it: OUT/head.png, OUT/expressions.png, OUT/turntable.png."""

    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("demo_out")
    """Folder to write into."""
    size: int = 384
    """Size of each rendered view in pixels."""

    def run(self) -> None:
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
