"""`avatar render OUT`: render a trained avatar to a video or one image - the tracked performance
(self-reenactment), a frontal view, a novel-view orbit, or driven by another person's tracking."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from avatar.errors import AvatarError


@dataclass
class Render:
    """Render OUT/avatar to a video (or its first frame to a .png / .jpg)."""

    out: Annotated[Path, tyro.conf.Positional]
    """Folder with the trained avatar (OUT or OUT/avatar)."""
    camera: Literal["orbit", "frontal", "tracked"] = "tracked"
    """tracked: the clip's camera and head pose; frontal: head pose removed, camera in front;
    orbit: the camera circles the head (novel views)."""
    drive: Path | None = None
    """Another clip's tracking.npz: its expressions, eyes and head rotation drive this avatar."""
    calibrate: float = 0.0
    """With --drive: transfer expressions relative to each person's rest face, the mean of the first
    this many seconds of each clip (avatar's rest + driver - driver's rest), so a driver's resting
    squint or frown is not copied; 0 copies the driver's expressions as they are."""
    neutral: bool = False
    """Rest expression and pose: expressions, jaw, neck and eyes at zero in every frame (the tracked
    camera keeps the clip's head placement). `avatar view OUT` opens on `--camera frontal --neutral`."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("render.mp4")
    """Video to write; a .png or .jpg writes the first frame as one image."""
    size: int | None = None
    """Image height in pixels (default: the training size for tracked, else 512)."""
    frames: int = 120
    """Orbit: number of frames of the sweep (expressions cycle through the performance)."""
    full_orbit: bool = False
    """Orbit: turn the camera all the way round the head. By default it sweeps there and back over
    the angles the clip saw the head from, plus 15 degrees each side (the back was never seen)."""
    fps: float | None = None
    """Frame rate (default: the clip's)."""
    model_path: Path | None = None
    """The FLAME file, if it moved since the avatar was trained with it (the bundle records its path)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render (auto = CUDA when usable)."""

    def run(self) -> None:
        import torch

        if self.calibrate < 0 or (self.calibrate > 0 and self.drive is None):
            raise AvatarError("--calibrate takes seconds >= 0 and is used with --drive")
        if self.neutral and self.drive is not None:
            raise AvatarError("--neutral shows the avatar's rest face; it cannot be driven (--drive) at the same time")

        from avatar.representations import load_avatar
        from avatar.render.mesh import intrinsics, orbit_viewmat
        from avatar.representations.base import BODY
        from avatar.render.device import pick_device
        from avatar.viewer.camera import FRONTAL_FOV_DEG, FRONTAL_PITCH_DEG, frontal_framing

        dev = pick_device(self.device)
        av = load_avatar(self.out, dev, model_path=self.model_path)
        cfg = av.config
        params, fps = self._params(av)
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
            centre, dist = frontal_framing(v)
            K = torch.tensor(intrinsics(W, H, FRONTAL_FOV_DEG), dtype=torch.float32)
            # No global pose: the head at rest at the origin (body-fixed hair placed as at the clip's
            # mean pose), the camera moves instead.
            params = {k: v for k, v in params.items() if k not in ("global_orient", "transl", BODY)}
            if self.camera == "orbit":
                yaws, what = orbit_yaws(self.frames, None if self.full_orbit else own_seen_azimuths(av))
                print(f"orbit: {what}")
                rows = np.arange(len(yaws)) % n
                params = {k: v[torch.as_tensor(rows)] for k, v in params.items()}
                cams = [(torch.tensor(orbit_viewmat(centre, dist, yaw, FRONTAL_PITCH_DEG), dtype=torch.float32), K) for yaw in yaws]
            else:
                cams = [(torch.tensor(orbit_viewmat(centre, dist, 0.0, FRONTAL_PITCH_DEG), dtype=torch.float32), K)] * n
        bg = tuple(cfg.get("background", (1.0, 1.0, 1.0)))

        def frame(i: int) -> np.ndarray:
            vm, k = cams[i]
            rgb, _ = av.render({key: val[i : i + 1].to(dev) for key, val in params.items()}, vm.to(dev), k.to(dev), W, H, bg)
            return rgb[0].clamp(0, 1).cpu().numpy()

        self._write(frame, len(cams), f"{W}x{H}", fps)

    def _write(self, frame, count: int, size: str, fps: float) -> None:
        """``frame(i)`` for every frame into the video, or the first into the image ``--output``."""
        from tqdm import tqdm

        from avatar.io import VideoWriter, write_image

        if self.output.suffix.lower() in STILL_SUFFIXES:
            write_image(self.output, frame(0))
            print(f"wrote {self.output} ({size}, the first of {count} frames)")
            return
        with VideoWriter(self.output, fps=fps) as writer:
            for i in tqdm(range(count), desc="render", dynamic_ncols=True):
                writer.write(frame(i))
        print(f"wrote {self.output} ({count} frames, {size})")

    def _params(self, av):
        """Per-frame head parameters and fps: :meth:`_performance`; with --neutral its expressions
        and jaw/neck/eye poses at zero (away from the tracked camera no performance is needed:
        one frame at rest)."""
        import torch

        if self.neutral and self.camera != "tracked":
            return {k: v.float().cpu() for k, v in av.head.zero_params(1).items() if k != "shape"}, None
        params, fps = self._performance(av)
        if self.neutral:
            params = {k: torch.zeros_like(v) if k in NON_RIGID else v for k, v in params.items()}
        return params, fps

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
        if self.calibrate > 0:
            own = av.performance["expression"].float().cpu().numpy() if "expression" in av.performance \
                else load_tracking(Path(av.path).parent).expression  # fmt: skip
            p["expression"] = torch.as_tensor(relative_expressions(
                own, av.config.get("fps"), tr.expression[tr.usable], tr.fps, p["expression"].numpy(), self.calibrate,
                bounds=(0.0, 1.0) if av.config["model"] == "anny" else None), dtype=torch.float32)  # fmt: skip
        # The driver's translation is about its own distance to its camera: keep its motion,
        # placed where this avatar's subject stood.
        own = av.performance.get("transl")
        if own is not None:
            p["transl"] = p["transl"] - p["transl"].mean(0) + own.float().cpu().mean(0)
        return p, tr.fps


STILL_SUFFIXES = (".png", ".jpg", ".jpeg")
NON_RIGID = ("expression", "jaw", "neck", "eyes")  # what --neutral sets to zero
ORBIT_MARGIN_DEG = 15.0  # past the angles seen: a little more of the sides, none of the unseen back


def own_seen_azimuths(av) -> np.ndarray | None:
    """:func:`seen_azimuths` of the avatar's own clip (whoever drives it): its trained performance,
    else OUT/tracking.npz; ``None`` when neither is there."""
    from avatar.fitting import load_tracking

    poses = {k: av.performance[k].double().cpu().numpy() for k in ("global_orient", "transl") if k in av.performance}
    if len(poses) < 2:
        tracking = Path(av.path).parent / "tracking.npz"
        if not tracking.exists():
            return None
        tr = load_tracking(tracking)
        poses = tr.frame_params(np.nonzero(tr.usable)[0])
    viewmat = np.asarray(av.config.get("viewmat", np.diag([1.0, -1.0, -1.0, 1.0])), np.float64)
    return seen_azimuths(poses["global_orient"], poses["transl"], viewmat)


def seen_azimuths(global_orient: np.ndarray, transl: np.ndarray, viewmat: np.ndarray) -> np.ndarray:
    """Per frame, the orbit yaw (degrees, as :func:`avatar.render.mesh.orbit_viewmat` takes it)
    from which the clip's camera saw the head: the camera centre brought into the head's rest frame.

    Args:
        global_orient, transl: ``[N, 3]`` the head's pose per frame (axis-angle, metres).
        viewmat: ``[4, 4]`` the clip's world-to-camera matrix.
    """
    import torch

    from avatar.models.rotations import axis_angle_to_matrix

    R = axis_angle_to_matrix(torch.as_tensor(np.asarray(global_orient), dtype=torch.float64)).numpy()  # [N, 3, 3]
    camera = -viewmat[:3, :3].T @ viewmat[:3, 3]
    seen = np.einsum("nji,nj->ni", R, camera[None] - np.asarray(transl, np.float64))  # R^T (camera - t)
    yaw = np.degrees(np.arctan2(seen[:, 0], seen[:, 2]))
    # Unwrapped around the mean direction, so a clip seen from behind does not span -180..180.
    middle = np.degrees(np.arctan2(np.sin(np.radians(yaw)).mean(), np.cos(np.radians(yaw)).mean()))
    return (yaw - middle + 180.0) % 360.0 - 180.0 + middle


def orbit_yaws(frames: int, seen: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Camera yaw per orbit frame (degrees) and a line saying what it covers: a sweep there and back
    over the ``seen`` yaws plus :data:`ORBIT_MARGIN_DEG` each side, or a whole turn when ``seen`` is
    ``None`` or already spans it."""
    t = np.arange(frames) / frames
    if seen is None or seen.size == 0:
        return 360.0 * t, "a whole turn round the head"
    lo, hi = float(seen.min()) - ORBIT_MARGIN_DEG, float(seen.max()) + ORBIT_MARGIN_DEG
    if hi - lo >= 360.0:
        return 360.0 * t, "a whole turn round the head (the clip saw it from every side)"
    what = (f"yaw {round(lo):+d}..{round(hi):+d} degrees: the clip saw the head from {round(float(seen.min())):+d}.."
            f"{round(float(seen.max())):+d}, plus {ORBIT_MARGIN_DEG:.0f} each side (--full-orbit turns all the way)")  # fmt: skip
    return 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.sin(2.0 * np.pi * t), what


def relative_expressions(own: np.ndarray, own_fps: float | None, driver_rest: np.ndarray, driver_fps: float | None,
                         driver: np.ndarray, seconds: float, bounds: tuple[float, float] | None) -> np.ndarray:  # fmt: skip
    """``driver [N, E]`` expressions moved onto the avatar relative to each person's rest face: the
    mean of the first ``seconds`` of ``own [M, E]`` (the avatar's clip) and of ``driver_rest``
    (the driver's usable frames), by :func:`avatar.fitting.online.transfer`."""
    from avatar.fitting.online import Calibration, transfer

    def rest(e: np.ndarray, fps: float | None) -> np.ndarray:
        return Calibration.from_expressions(e[: max(1, round(seconds * (fps or 25.0)))]).neutral

    return transfer(rest(own, own_fps), driver, rest(driver_rest, driver_fps), bounds).astype(np.float32)
