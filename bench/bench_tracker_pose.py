"""Experiment: can the landmark tracker itself find the head poses that the avatar needs on held-out frames?

    python bench/bench_tracker_pose.py OUT [OUT ...] [--variants base aperture1 ...] [--ridge 10]

OUT: a trained avatar folder (``bench/bench_avatar.py --work W`` leaves them as W/<clip>), trained with
``eval_refine_iters > 0``. The reference poses are that bundle's performance:
- on the training frames, the poses the avatar was trained with;
- on the held-out frames, each frame's rigid pose refined photometrically against the finished avatar.

Each variant re-runs the tracker (``avatar.fitting.solver.fit_landmarks``) on the clip's saved landmarks.
Identity and focal length are held at the tracked ones; only the variant's change differs from the
tracking the avatar was trained on.

Variants:
- ``base``: the tracker as it is.
- ``aperture1``: lid-margin and inner-lip points at weight 1, not 4.
- ``lower-face/4``: every landmark below the nose base at a quarter of its weight. The mouth would
  then move the pose less.
- ``stable-x4``: the forehead, nose, eye-corner and cheekbone points at 4x.
- ``no-depth``: no MediaPipe z term.
- ``no-contour``: no face-oval points.
- ``smooth-x10``: ten times the temporal weight on rotation and translation.
- ``calibrated``: a per-landmark 3D offset of the landmark embedding, fitted by least squares so that
  the training frames' landmarks reproject at their reference poses. This is a per-person landmark
  calibration that uses no held-out pixel.

Printed per clip and variant:
- the median rotation (degrees) and translation (mm) between the re-tracked and the reference poses,
  on the held-out frames: raw, and through a ridge fit from the re-tracked pose to the reference
  (fitted on the training frames, closed form, as ``TrainConfig.pose_fit_frames`` does);
- the same on the training frames, where the ridge was fitted. Their reference poses include the
  learnt pose correction (``TrainConfig.correct_pose``), itself a linear function of the tracked
  pose, so the ridge recovers part of them by construction: read these as an optimistic bound;
- the median landmark reprojection error (pixels).

This is a measurement, not a pipeline stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from unittest import mock

VARIANTS = ("base", "aperture1", "lower-face/4", "stable-x4", "no-depth", "no-contour", "smooth-x10", "calibrated")
RIGID = ("global_orient", "transl")


def _calibration(lm, ident, tr, reference, rows, iters: int = 400, ridge: float = 1e-2):
    """``[3, L]`` offsets of the rest landmarks (model frame, metres) minimising the training frames'
    reprojection error at the reference poses. The tracked expression and gaze are held. A small
    ridge keeps landmarks that are never seen near the embedding."""
    import numpy as np
    import torch

    from avatar.fitting.energy import interocular_px, landmark_weights, project_planes
    from avatar.models.rotations import axis_angle_to_matrix

    dtype = ident["rest"].dtype
    L = lm.num_landmarks
    det = torch.as_tensor(np.asarray(tr.landmarks), dtype=dtype)[rows]
    iod = interocular_px(det).clamp_min(1.0)
    w = torch.as_tensor(landmark_weights(0.3, iris=0.0), dtype=dtype)[:L]  # the gaze is not re-fitted here
    W, H = (int(x) for x in tr.image_size)
    focal = torch.tensor(float(tr.K[0, 0, 0]), dtype=dtype)
    with torch.no_grad():
        local = lm.planes(ident, torch.as_tensor(tr.expression, dtype=dtype)[rows], None, None,
                          eyes=torch.as_tensor(tr.eyes, dtype=dtype)[rows], local=True)  # fmt: skip
    G = axis_angle_to_matrix(reference["global_orient"][rows].to(dtype))
    T = reference["transl"][rows].to(dtype)
    delta = torch.zeros(3, L, dtype=dtype, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=1e-3)
    iod_m = 0.065  # metres: the ridge in units of a typical inter-ocular distance
    for _ in range(iters):
        opt.zero_grad()
        u, v, _ = project_planes(torch.baddbmm(T[:, :, None], G, local + delta[None]), focal, W / 2, H / 2)
        r2 = ((u - det[:, :L, 0]) ** 2 + (v - det[:, :L, 1]) ** 2) / iod[:, None] ** 2
        loss = (r2 * w).sum(1).mean() / w.sum() + ridge * (delta**2).sum() / L / iod_m**2
        loss.backward()
        opt.step()
    return delta.detach()


def run(out: Path, variants: list[str], ridge: float) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    import avatar.fitting.solver as solver
    from avatar.fitting import load_tracking
    from avatar.fitting.energy import STABLE, landmark_weights
    from avatar.fitting.landmark_model import LandmarkModel
    from avatar.models import load_head_model
    from avatar.training.refine import fit_pose_correction

    report = json.loads((out / "report.json").read_text())
    if not report.get("held_out_refined_pose"):
        print(f"{out.name}: no refined held-out poses (trained with eval_refine_iters=0); skipped")
        return
    tr = load_tracking(out)
    ok = np.asarray(tr.tracked, bool)
    perf = load_file(str(out / "avatar" / "performance.safetensors"))
    reference = {k: perf[k].double() for k in RIGID}
    held = np.asarray(report["frames"]["held_out_rows"])
    rows = np.nonzero(ok)[0]
    train = np.setdiff1d(rows, held)
    head = load_head_model(tr.model)
    W, H = (int(x) for x in tr.image_size)
    with torch.no_grad():
        rest = LandmarkModel(head).identity(torch.zeros(1, head.num_shape, dtype=head.dtype))["rest"].numpy()
    lower = np.nonzero(rest[1] < rest[1, 2])[0]  # below the nose base (MediaPipe point 2), in the model frame
    lower = lower[lower < 468]  # not the irises

    def weights(scale: list[tuple[np.ndarray, float]]) -> AbstractContextManager:
        """The tracker's landmark weights, with landmarks ``idx`` scaled by ``f`` for each pair."""
        if not scale:
            return nullcontext()

        def scaled(*a, **k):
            w = landmark_weights(*a, **k)
            for idx, f in scale:
                w[idx] *= f
            return w

        return mock.patch.object(solver, "landmark_weights", scaled)

    base_cfg = solver.FitConfig()
    for name in variants:
        cfg, scale, lm = base_cfg, [], LandmarkModel(head)
        if name == "aperture1":
            cfg = dataclasses.replace(cfg, aperture_weight=1.0)
        elif name == "lower-face/4":
            scale = [(lower, 0.25)]
        elif name == "stable-x4":
            scale = [(STABLE, 4.0)]
        elif name == "no-depth":
            cfg = dataclasses.replace(cfg, w_depth=0.0)
        elif name == "no-contour":
            cfg = dataclasses.replace(cfg, contour_weight=0.0)
        elif name == "smooth-x10":
            cfg = dataclasses.replace(cfg, w_smooth_rot=10 * cfg.w_smooth_rot, w_smooth_transl=10 * cfg.w_smooth_transl)
        elif name == "calibrated":
            with torch.no_grad():
                ident = lm.identity(torch.as_tensor(tr.shape, dtype=head.dtype)[None])
            lm = _calibrated_model(head, _calibration(lm, ident, tr, reference, train))
        elif name != "base":
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        with weights(scale):
            res = solver.fit_landmarks(head, tr.landmarks[ok], (W, H), frame_index=tr.frame_index[ok], temporal=True,
                                       focal=float(tr.K[0, 0, 0]), shape=tr.shape, config=cfg, landmark_model=lm)  # fmt: skip
        pose = {k: torch.as_tensor(np.asarray(getattr(tr, k)), dtype=torch.float64).clone() for k in RIGID}
        for k in RIGID:
            pose[k][torch.as_tensor(ok)] = torch.as_tensor(getattr(res, k), dtype=torch.float64)
        fit = fit_pose_correction(pose, {k: reference[k] - pose[k] for k in RIGID}, torch.as_tensor(train), ridge)
        corrected = {k: pose[k] + fit[k] for k in RIGID}
        print(json.dumps({
            "clip": out.name, "variant": name,
            "held_raw": _differences(pose, reference, held), "held_ridge": _differences(corrected, reference, held),
            "train_raw": _differences(pose, reference, train), "train_ridge": _differences(corrected, reference, train),
            "reprojection_px": round(float(np.median(res.residual_px)), 2),
        }), flush=True)  # fmt: skip


def _differences(pose, reference, rows) -> list[float]:
    """Median rotation (degrees, axis-angle difference) and translation (mm) on ``rows``."""
    import math

    rot = (pose["global_orient"][rows] - reference["global_orient"][rows]).norm(dim=1).median().item()
    shift = (pose["transl"][rows] - reference["transl"][rows]).norm(dim=1).median().item()
    return [round(rot * 180 / math.pi, 2), round(shift * 1000, 2)]


def _calibrated_model(head, offset):
    """A :class:`~avatar.fitting.landmark_model.LandmarkModel` whose rest landmarks are moved by
    ``offset [3, L]``."""
    from avatar.fitting.landmark_model import LandmarkModel

    class Calibrated(LandmarkModel):
        def identity(self, shape):
            ident = super().identity(shape)
            return {**ident, "rest": ident["rest"] + offset}

        def identity_fast(self, shape):
            ident = super().identity_fast(shape)
            return {**ident, "rest": ident["rest"] + offset}

    return Calibrated(head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outs", nargs="+", type=Path, help="trained avatar folders")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS, help="tracker variants to try")
    parser.add_argument("--ridge", type=float, default=10.0, help="ridge of the fit from re-tracked to reference poses")
    args = parser.parse_args()
    for out in args.outs:
        run(out, args.variants, args.ridge)


if __name__ == "__main__":
    main()
