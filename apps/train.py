"""`avatar train OUT`: fit a Gaussian head avatar to OUT/tracking.npz and the frames of its source."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro


@dataclass
class Train:
    """Train the avatar in OUT (resumes from OUT/checkpoints when a run was interrupted).
    Writes OUT/avatar/ (the bundle), OUT/report.json (held-out PSNR/SSIM) and OUT/eval.mp4."""

    out: Annotated[Path, tyro.conf.Positional]
    """Output folder holding tracking.npz (from `avatar track INPUT -o OUT`)."""
    preset: Literal["fast-cpu", "default", "quality-gpu"] = "fast-cpu"
    """Named settings (configs/NAME.toml): fast-cpu (256^2, minutes on a CPU), default (512^2), quality-gpu (CUDA + gsplat)."""
    config: Path | None = None
    """A TOML settings file applied over the preset (same format as configs/*.toml, e.g. a copy of one)."""
    steps: int | None = None
    """Training steps (overrides the preset)."""
    resolution: int | None = None
    """Long side of the training images in pixels (overrides the preset)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Where to train (overrides the preset; auto = CUDA when present)."""
    representation: Literal["mesh-gaussians", "hash-blendshapes", "neural-points"] | None = None
    """What to train (overrides the preset): mesh-gaussians (the default), hash-blendshapes (the same
    Gaussians, expression detail from hash grids; its knobs are the hash.* settings), or neural-points
    (points free in canonical space, deformed by an MLP; its knobs are the points.* settings)."""
    set: tuple[str, ...] = ()
    """Any other setting as KEY=VALUE (TABLE.KEY=VALUE in a table: strategy.every=200 hash.levels=12), e.g. sh_degree=2 refine_tracking=true."""
    model_path: Path | None = None
    """The FLAME file, if it moved since the clip was tracked with it (the tracking records its path)."""
    restart: bool = False
    """Ignore existing checkpoints and start over (they are deleted)."""
    quiet: bool = False
    """No progress bar."""

    def run(self) -> None:
        import json
        import shutil

        from avatar.training import load_config, override, preset, train

        cfg = preset(self.preset)
        if self.config is not None:
            cfg = load_config(self.config, base=cfg)
        extra = [f"{k}={v}" for k, v in (("steps", self.steps), ("resolution", self.resolution), ("device", self.device),
                                          ("representation", self.representation)) if v is not None]  # fmt: skip
        cfg = override(cfg, [*extra, *self.set])
        if self.restart:
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        report = train(self.out, cfg, progress=not self.quiet, model_path=self.model_path)
        held, init = report["held_out"], report["held_out_initial"]
        refined = report.get("held_out_refined_pose") or {}
        # psnr/ssim: foreground pixels only; *_full: whole matted image (the literature's convention);
        # *_refined_pose: each held-out frame's head pose refined against the avatar.
        summary = {"held_out_psnr": round(held.get("psnr", float("nan")), 3),
                   "held_out_ssim": round(held.get("ssim", float("nan")), 4),
                   "held_out_psnr_full": round(held.get("psnr_full", float("nan")), 3)}
        if refined:
            summary |= {"held_out_psnr_refined_pose": round(refined["psnr"], 3),
                        "held_out_psnr_full_refined_pose": round(refined["psnr_full"], 3),
                        "pose_correction_deg_median": round(refined.get("rotation_deg_median", float("nan")), 3)}
        summary |= {"initial_psnr": round(init.get("psnr", float("nan")), 3), "gaussians": report["num_gaussians"],
                    "seconds": report["seconds_total"]}
        print(json.dumps(summary))
        print(f"wrote {self.out / 'avatar'}, {self.out / 'report.json'}" + (f", {self.out / 'eval.mp4'}" if cfg.eval_video else "")
              + (f", {self.out / 'eval_refined_pose.mp4'}" if (self.out / "eval_refined_pose.mp4").is_file() else ""))
