"""Photometric refinement of the tracked rigid pose against the avatar's own render.

Landmark tracking places the head to about a degree and a few millimetres. At 256 px the top of
the scalp, ~12 cm from the face's centre, moves about a pixel per degree, so hair and silhouette
edges sit a pixel or two off in many frames. The avatar learns a blur of them there, and a
held-out frame is drawn a pixel off. Measured on hdtf_aoc's held-out frames (fast-cpu, 256 px):
refining each frame's rigid pose against the trained avatar moves the head by a median 0.83 deg
and 2.1 mm (rotation about the model's origin and translation partly stand in for each other),
and raises the PSNR from 22.61 to 25.17 dB over the foreground and from 22.46 to 25.65 dB over
the whole image.

Only the rigid degrees of freedom are refined: the head's ``global_orient``/``transl`` and the
tracked body motion (``body``). Nine numbers per frame can move the head, but they cannot paint
appearance into a frame the way expression codes could.

Three uses:

* **during training** (``TrainConfig.refine_pose``): per-frame deltas receive the training loss's
  gradient and are updated by :class:`RowAdam`, which touches only the rows of the frames in the
  batch;
* **a learnt correction** (``TrainConfig.correct_pose``, :class:`PoseCorrection`): one linear
  function of the tracked rigid pose, trained with the avatar, that moves every frame, the
  held-out ones included. The tracker's error on the held-out frames is smooth in time and partly
  a function of the pose it reads; a per-frame delta cannot carry that to frames it never saw;
* **at evaluation** (:func:`refine_poses`): with the avatar fixed, a few Levenberg-Marquardt
  iterations per frame on the frame's colour and silhouette error. This is a photometric
  tracking pass over the driving frames. The held-out report gives the figure with and without
  it.

Poses compose as in the head models: rotate about the model's origin, then translate. A refined
frame's vertices are the tracked ones moved rigidly (:func:`repose_vertices`), exactly what the
head model gives for the refined pose, without evaluating it again.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from avatar.models.rotations import axis_angle_to_matrix
from avatar.training.data import BODY
from avatar.utils.optim import Adam, LMOptions, fd_least_squares, levenberg_marquardt

RIGID = ("global_orient", "transl", BODY)


def apply_deltas(params: dict[str, Tensor], deltas: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    """``params`` (of the frames ``rows``) with ``deltas[k][rows]`` added to each refined key."""
    return {k: v + deltas[k][rows] if k in deltas else v for k, v in params.items()}


def repose_vertices(verts: Tensor, go0: Tensor, t0: Tensor, go1: Tensor, t1: Tensor) -> Tensor:
    """``[B, V, 3]`` vertices posed with ``(go0, t0)`` (``[B, 3]`` axis-angle and translation),
    moved to the pose ``(go1, t1)``: ``R1 R0^T (v - t0) + t1``."""
    r0, r1 = axis_angle_to_matrix(go0.to(verts)), axis_angle_to_matrix(go1.to(verts))
    return (verts - t0.to(verts)[:, None]) @ r0 @ r1.transpose(1, 2) + t1.to(verts)[:, None]


class RowAdam(Adam):
    """:class:`avatar.utils.optim.Adam`, row-wise, with this module's former defaults (``eps`` 1e-12).
    Per-frame deltas (``[N, 3]``, one row per frame) of which each step updates the rows of the
    frames in the batch; :meth:`step` takes those rows. Kept so that ``from avatar.training.refine
    import RowAdam`` works; new code uses ``Adam(..., eps=1e-12, row_wise=True)``."""

    def __init__(self, params: dict[str, Tensor], lrs: dict[str, float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-12) -> None:  # fmt: skip
        super().__init__(params, lrs, betas=betas, eps=eps, row_wise=True)


class PoseCorrection(torch.nn.Module):
    """A learnt correction of the tracker's rigid pose, the same function of the tracked pose for
    every frame: ``delta = standardised(tracked rigid pose) @ weight + bias``.

    Per-frame refinements (``RowAdam``) can only fix the frames trained on. The tracker's error is
    partly systematic (e.g. a head turn it under-reads), and a function of the tracked pose
    carries over to frames never trained on: the held-out frames, and any later frame of the same
    video. Inputs are the nine tracked rigid numbers (``global_orient``, ``transl``, and ``body``
    when tracked), standardised over the training frames; outputs the deltas of the same numbers
    (translation outputs scaled by ``translation_scale`` so that one learning rate suits both).
    Starts at zero (the tracked pose).
    """

    def __init__(self, keys: list[str], inputs: Tensor, translation_scale: float = 0.1) -> None:
        """``keys``: the refined names (of :data:`RIGID`, in that order); ``inputs``: ``[N, 3 *
        len(keys)]`` every frame's standardised tracked values (:meth:`for_clip`)."""
        super().__init__()
        self.keys = list(keys)
        self.register_buffer("inputs", inputs.float())
        scale = torch.cat([torch.full((3,), 1.0 if k == "global_orient" else translation_scale) for k in self.keys])
        self.register_buffer("scale", scale)
        n = inputs.shape[1]
        self.weight = torch.nn.Parameter(torch.zeros(n, n))
        self.bias = torch.nn.Parameter(torch.zeros(n))

    @classmethod
    def for_clip(cls, tracked: dict[str, Tensor], rows: Tensor, translation_scale: float = 0.1) -> "PoseCorrection":
        """A zero correction over ``tracked`` (name -> ``[N, 3]`` every frame's tracked values; the
        :data:`RIGID` names present are used), its inputs standardised over the training frames ``rows``."""
        keys = [k for k in RIGID if k in tracked]
        x = torch.cat([tracked[k].float() for k in keys], 1)
        mu, sd = x[rows].mean(0), x[rows].std(0)
        # A number that does not vary over the training frames (no body tracked) drops out.
        inputs = torch.where(sd > 1e-9, (x - mu) / sd.clamp_min(1e-9), torch.zeros_like(x))
        return cls(keys, inputs, translation_scale)

    @classmethod
    def from_state(cls, keys: list[str], state: dict[str, Tensor]) -> "PoseCorrection":
        """The correction saved as ``state`` (its ``state_dict``, e.g. a training checkpoint's ``pose_model``)."""
        model = cls(keys, state["inputs"])
        model.load_state_dict(state)
        return model

    def forward(self) -> dict[str, Tensor]:
        """name -> ``[N, 3]`` deltas of every frame."""
        y = (self.inputs @ self.weight + self.bias) * self.scale
        return dict(zip(self.keys, y.split(3, 1)))

    def penalty(self) -> Tensor:
        """Ridge term on the slopes (the bias, a constant offset, is free)."""
        return self.weight.square().sum()


#: The fitted correction is evaluated at most this many standard deviations (of the fit frames) from
#: their mean, input by input: a linear fit carried far outside its data can be far off (docs/quality.md).
MAX_EXTRAPOLATION_SD = 3.0


def fit_pose_correction(tracked: dict[str, Tensor], refined: dict[str, Tensor], rows: Tensor, ridge: float,
                        extra: tuple[str, ...] = ()) -> dict[str, Tensor]:  # fmt: skip
    """The rigid-pose correction of every frame predicted from its tracked pose by a ridge
    regression fitted on frames ``rows`` (closed form).

    ``tracked``: name -> ``[N, D]`` every frame's tracked values; ``refined``: name (of
    :data:`RIGID`) -> ``[N, 3]`` deltas that align the frames ``rows`` (e.g. a Levenberg-Marquardt
    pass against the trained avatar, :func:`refine_poses`); other rows are not read. Features:
    the tracked values of the ``refined`` names, then of ``extra``, standardised over ``rows`` (one
    that does not vary there drops out); the intercept is not penalised. Each frame is predicted
    with its standardised inputs clamped to +-:data:`MAX_EXTRAPOLATION_SD`. Returns name -> ``[N, 3]``.
    Unlike :class:`PoseCorrection` (trained by gradient steps along with the avatar) this is fitted
    once, after training, to poses that fully converged against the finished avatar.
    """
    keys = [k for k in RIGID if k in refined]
    rows = torch.as_tensor(rows)
    x = torch.cat([tracked[k].double().reshape(len(tracked[k]), -1) for k in (*keys, *extra)], 1)
    y = torch.cat([refined[k].detach().double().cpu() for k in keys], 1)
    mu, sd = x[rows].mean(0), x[rows].std(0, unbiased=False)
    xs = torch.where(sd > 1e-12, (x - mu) / sd.clamp_min(1e-12), torch.zeros_like(x))
    a = torch.cat([xs, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    penalty = torch.diag(torch.tensor([ridge] * x.shape[1] + [0.0], dtype=x.dtype))
    w = torch.linalg.solve(a[rows].T @ a[rows] + penalty, a[rows].T @ y[rows])
    near = torch.cat([xs.clamp(-MAX_EXTRAPOLATION_SD, MAX_EXTRAPOLATION_SD), a[:, -1:]], 1)
    pred = (near @ w).to(next(iter(refined.values())).dtype)
    return dict(zip(keys, pred.split(3, 1)))


def refine_poses(
    render: Callable[[dict[str, Tensor], Tensor], tuple[Tensor, Tensor]],
    deltas: dict[str, Tensor],
    rows: Tensor,
    target: Callable[[Tensor], tuple[Tensor, Tensor]],
    *,
    iters: int = 6,
    jacobian_every: int = 3,
    batch: int = 4,
    warm_start: bool = True,
    alpha_weight: float = 0.1,
    fd_rotation: float = 1e-3,
    fd_translation: float = 1e-4,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """Refine the rigid-pose deltas of frames ``rows`` in place (the avatar fixed); returns ``deltas``.

    Args:
        render: ``(deltas_of_batch, rows [B]) -> (rgb [B, H, W, 3], alpha)``: the avatar drawn
            for those frames with ``deltas_of_batch`` (name -> ``[B, 3]``) added to their poses.
            Only called without gradients.
        deltas: name (of :data:`RIGID`) -> ``[N, 3]`` per-frame deltas (zeros = as tracked).
        rows: ``[B]`` frames to refine, in time order.
        target: ``rows -> (ground truth [B, H, W, 3], matte [B, H, W, 1])``.
        iters: Levenberg-Marquardt iterations per frame (each one render of the batch).
        jacobian_every: iterations between finite-difference Jacobians (each one render of the
            batch per refined number, 9 with body motion).
        batch: frames refined together (independent: each only sees its own error).
        warm_start: start each batch from the refined deltas of the row before it (neighbouring
            frames' tracking errors are alike), else from ``deltas``.
        alpha_weight: weight of the silhouette term (see below).
        fd_rotation, fd_translation: finite-difference steps, radians and metres (~0.06 px at
            the scalp at 256 px: the renders are smooth in the pose at that scale).
        progress: called with the number of frames done after each batch.

    The loss of a frame is the mean squared colour error over its foreground (matte > 0.5) plus
    ``alpha_weight`` times the mean squared silhouette error ``alpha - matte`` over the whole
    image: colour where the person is, silhouette everywhere. Colour alone lets the render spill
    onto the background. Measured on hdtf_aoc's held-out frames (every third; foreground /
    whole-image PSNR): ``alpha_weight`` 0: 25.37 / 23.98 dB; 0.1: 25.28 / 25.53; 0.3:
    24.94 / 26.00; 1: 24.53 / 26.12.

    Nine numbers per frame make a small least-squares problem, solved by Levenberg-Marquardt
    with a Jacobian from forward differences, kept for ``jacobian_every`` iterations (the
    corrections are a fraction of a degree, over which it barely changes). On hdtf_aoc's
    held-out frames (every third; fast-cpu; foreground / whole-image PSNR from 22.61 / 22.52 dB
    tracked), the default reaches 25.28 / 25.53 dB in the time that 15 Adam steps per frame take
    to reach 24.50 / 24.53 dB; 50 Adam steps reach 25.02 / 25.76 dB in 4x the time.
    """
    keys = [k for k in RIGID if k in deltas]
    sizes = [deltas[k].shape[1] for k in keys]
    device = deltas[keys[0]].device
    fd = torch.cat([torch.full((n,), fd_rotation if k == "global_orient" else fd_translation, dtype=torch.float64)
                    for k, n in zip(keys, sizes)]).to(device)  # fmt: skip

    def split(x: Tensor) -> dict[str, Tensor]:
        return dict(zip(keys, x.split(sizes, 1)))

    for start in range(0, len(rows), batch):
        r = rows[start : start + batch]
        gt, matte = target(r)
        weight = (matte > 0.5).to(gt)
        scale_rgb, scale_alpha = gt[0].numel() ** -0.5, (alpha_weight / matte[0].numel()) ** 0.5

        def residuals(x: Tensor) -> Tensor:
            """``[B, P]`` per-frame residuals whose squared sum is the frame's loss."""
            rgb, alpha = render({k: v.to(deltas[k]) for k, v in split(x).items()}, r)
            return torch.cat([((rgb - gt) * weight).flatten(1) * scale_rgb,
                              (alpha - matte).flatten(1) * scale_alpha], 1).double()  # fmt: skip

        # Consecutive frames share most of their tracking error: start from the last refined one.
        init = rows[start - 1 : start].expand(len(r)) if warm_start and start > 0 else r
        x = torch.cat([deltas[k][init] for k in keys], 1).double()
        with torch.no_grad():
            # lambda from 1e-2, divided by 10/3 (x0.3) on an accepted step; a number the frame does
            # not see (no body in view: a zero Jacobian column) is kept put by the relative floor.
            x = levenberg_marquardt(x, *fd_least_squares(residuals, fd, jacobian_every), iters,
                                    LMOptions(damping=1e-2, decrease=10 / 3, increase=10.0, relative_floor=1e-9))
            for k, v in split(x).items():
                deltas[k][r] = v.to(deltas[k])
        if progress is not None:
            progress(min(start + batch, len(rows)))
    return deltas

