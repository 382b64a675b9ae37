"""bench/bench_tracker_pose.py's landmark calibration on synthetic landmarks: a known per-landmark
offset of the embedding, projected at known poses, is recovered from those poses."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from avatar.fitting.energy import project_planes


def test_calibration_recovers_a_known_landmark_offset(anny_head, load_bench):
    from avatar.fitting.landmark_model import LandmarkModel
    from avatar.models.rotations import axis_angle_to_matrix

    bench = load_bench("bench_tracker_pose")
    head, n, size, focal = anny_head, 24, (512, 512), 700.0
    lm = LandmarkModel(head)
    with torch.no_grad():
        ident = lm.identity(torch.zeros(1, head.num_shape))
    L = lm.num_landmarks
    g = torch.Generator().manual_seed(0)
    offset = torch.randn(3, L, generator=g) * 0.002  # 2 mm per axis: the size the real clips gave
    offset[:, 468:] = 0.0  # the irises carry no weight in the calibration
    t = torch.linspace(0, 1, n)
    reference = {  # head turns of up to ~20 degrees, so the offsets' depth is seen too
        "global_orient": torch.stack([0.2 * torch.sin(2 * math.pi * t), 0.35 * torch.cos(2 * math.pi * t), 0.05 * t], 1),
        "transl": torch.stack([0.01 * t, -0.1 + 0.0 * t, -0.6 + 0.02 * torch.sin(3 * t)], 1),
    }
    with torch.no_grad():
        local = lm.planes(ident, torch.zeros(n, head.num_expressions), None, None, local=True)
        world = torch.baddbmm(reference["transl"][:, :, None], axis_angle_to_matrix(reference["global_orient"]), local + offset)
        u, v, _ = project_planes(world, torch.tensor(focal), size[0] / 2, size[1] / 2)
    tr = SimpleNamespace(  # the fields of a Tracking that the calibration reads
        landmarks=torch.stack([u, v, torch.zeros_like(u)], -1).numpy(),
        expression=np.zeros((n, head.num_expressions), np.float32),
        eyes=np.zeros((n, 2, 3), np.float32),
        image_size=np.array(size),
        K=np.array([[[focal, 0, size[0] / 2], [0, focal, size[1] / 2], [0, 0, 1]]] * n, np.float32),
    )
    found = bench._calibration(lm, ident, tr, reference, np.arange(n), iters=600)
    err = (found[:, :468] - offset[:, :468]).norm(dim=0)
    size_ = offset[:, :468].norm(dim=0)
    # Recovered to a fraction of its size (the ridge shrinks it a little), and nothing at all moves
    # the irises, which have no weight.
    assert err.median() < 0.1 * size_.median(), (err.median(), size_.median())
    assert found[:, 468:].abs().max() < 1e-4
