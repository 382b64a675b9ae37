"""`avatar reconstruct INPUT -o OUT`: the stages in order (track -> train -> export -> orbit video),
each skipped when its finished output is already in OUT, so an interrupted run resumes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from avatar.errors import AvatarError
from avatar_apps.track import check_output_folder

EXPORT_FILES = {"glb": "head.glb", "ply": "gaussians.ply", "obj": "head.obj"}


@dataclass
class Reconstruct:
    """Build an avatar from a video, a folder of photos of one person, or one photo: track it,
    train the Gaussian head, export it and render an orbit video. Re-running resumes: finished
    stages (OUT/tracking.npz, OUT/avatar/avatar.json, OUT/exports/*, OUT/orbit.mp4) are kept."""

    input: tyro.conf.Positional[Path]
    """Video file, folder of photos of one person, or one photo."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("avatar_out")
    """Output folder (created)."""
    preset: Literal["fast-cpu", "default", "quality-gpu"] = "fast-cpu"
    """Training settings (see `avatar train --help`)."""
    config: Path | None = None
    """A TOML settings file applied over the preset (same format as configs/*.toml)."""
    steps: int | None = None
    """Training steps (overrides the preset)."""
    representation: Literal["mesh-gaussians", "hash-blendshapes", "neural-points"] | None = None
    """What to train (see `avatar train --help`; overrides the preset)."""
    stride: int = 1
    """Use every n-th frame."""
    limit: int | None = None
    """Use at most this many frames (after stride)."""
    model: Literal["anny", "flame"] = "anny"
    """Head model: the built-in AnnyHead (CC0) or a FLAME .pkl given with --model-path."""
    model_path: Path | None = None
    """FLAME .pkl file; only with --model flame."""
    formats: tuple[Literal["glb", "ply", "obj"], ...] = ("glb", "ply")
    """Export formats written to OUT/exports/."""
    texture_size: int = 2048
    """Size of the baked texture in the GLB/OBJ exports."""
    overlay: bool = True
    """Write OUT/overlay.mp4 while tracking (the fitted wireframe over the frames, at most 720p);
    --no-overlay skips it."""
    orbit: bool = True
    """Render OUT/orbit.mp4 (novel views: the camera sweeps over the angles the clip saw the head
    from, plus 15 degrees each side); --no-orbit skips it."""
    full_orbit: bool = False
    """Turn the orbit camera all the way round the head (its back was never seen)."""
    restart: bool = False
    """Redo every stage, ignoring what OUT already holds."""

    def run(self) -> None:
        if self.config is not None:  # a bad settings file fails now, not after minutes of tracking
            from avatar.training import load_config, preset

            load_config(self.config, base=preset(self.preset))
        out = Path(self.output)
        check_output_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        self.log: list[str] = []  # what each stage did, printed at the end
        t0 = time.perf_counter()
        self._track(out)
        self._train(out)
        self._export(out)
        if self.orbit:
            self._orbit(out)
        print(f"avatar reconstruct: done in {time.perf_counter() - t0:.0f} s -> {out}")
        for line in self.log:
            print(f"  {line}")

    # --- stages ----------------------------------------------------------------------------
    def _skip(self, path: Path, what: str) -> bool:
        if path.exists() and not self.restart:
            self.log.append(f"{what}: kept {path} (finished earlier; --restart redoes it)")
            return True
        return False

    def _track(self, out: Path) -> None:
        from avatar_apps.track import Track

        done = out / "tracking.npz"
        if done.exists() and not self.restart:
            _check_same_source(done, self.input)
        if self._skip(done, "track"):
            return
        Track(input=self.input, output=out, stride=self.stride, limit=self.limit, model=self.model,
              model_path=self.model_path, overlay=self.overlay).run()  # fmt: skip
        self.log.append(f"track: wrote {done}")

    def _train(self, out: Path) -> None:
        from avatar_apps.train import Train

        if self._skip(out / "avatar" / "avatar.json", "train"):
            return
        # Train resumes from OUT/checkpoints by itself when an earlier run was interrupted.
        Train(out=out, preset=self.preset, config=self.config, steps=self.steps, model_path=self.model_path,
              restart=self.restart, representation=self.representation).run()  # fmt: skip
        self.log.append(f"train: wrote {out / 'avatar'} and {out / 'report.json'}")

    def _export(self, out: Path) -> None:
        from avatar_apps.export import Export

        for fmt in self.formats:
            target = out / "exports" / EXPORT_FILES[fmt]
            if self._skip(target, f"export {fmt}"):
                continue
            Export(out=out, format=fmt, model=self.model, model_path=self.model_path, texture_size=self.texture_size).run()
            self.log.append(f"export {fmt}: wrote {target}")

    def _orbit(self, out: Path) -> None:
        from avatar_apps.render import Render

        target = out / "orbit.mp4"
        if self._skip(target, "orbit"):
            return
        Render(out=out, camera="orbit", output=target, full_orbit=self.full_orbit, model_path=self.model_path).run()
        self.log.append(f"orbit: wrote {target}")


def _check_same_source(tracking: Path, source: Path) -> None:
    """Refuse to resume on an OUT that was made from another input."""
    from avatar.fitting import load_tracking

    try:
        recorded = load_tracking(tracking).source
    except AvatarError as e:
        raise AvatarError(f"{e} (or pass --restart to redo every stage)") from e
    recorded_path = Path(recorded)
    if recorded and not recorded_path.is_absolute():
        recorded_path = tracking.parent / recorded_path  # written relative to OUT
    if recorded and recorded_path.resolve() != Path(source).resolve():
        raise AvatarError(
            f"{tracking.parent} holds the reconstruction of {recorded}, not {source}: "
            "choose another -o folder, or pass --restart to start over there"
        )
