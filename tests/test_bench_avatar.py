"""bench/bench_avatar.py's ceiling: the PSNR once one region's error is gone, from the PSNR and that
region's share of the squared error, against the PSNR measured on images with that region fixed."""
from __future__ import annotations

import math

import numpy as np


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def test_ceiling_matches_the_psnr_with_that_region_fixed(load_bench):
    bench = load_bench("bench_avatar")
    rng = np.random.default_rng(0)
    target = rng.random((64, 64, 3))
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1)
    pred[:20] = np.clip(target[:20] + rng.normal(0, 0.2, (20, 64, 3)), 0, 1)  # a worse region, like hair
    sq = (pred - target) ** 2
    share = float(sq[:20].sum() / sq.sum())
    fixed = pred.copy()
    fixed[:20] = target[:20]
    assert 0.5 < share < 1.0
    assert abs(bench.ceiling(_psnr(pred, target), share) - _psnr(fixed, target)) < 0.01
    assert bench.ceiling(20.0, 1.0) == float("inf")
    assert bench.ceiling(20.0, 0.0) == 20.0
