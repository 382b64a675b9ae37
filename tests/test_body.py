"""Body motion from the mattes: the shift of the silhouette below the chin, lifted to 3D."""
from __future__ import annotations

import numpy as np
import pytest

from avatar.perception.body import body_shifts
from avatar.training.data import body_motion

H = W = 96


def _shoulders(dx: float, dy: float) -> np.ndarray:
    """A head-and-shoulders silhouette (uint8 matte) whose body is moved by (dx, dy) pixels; the
    head (above row 50) stays put."""
    yy, xx = np.mgrid[:H, :W].astype(np.float64) + 0.5
    x, y = xx - dx, yy - dy
    # Shoulders: a body whose top edge slopes down from the neck; soft 1 px edges.
    top = 62 + 0.35 * np.abs(x - 48) - 4 * np.exp(-(((x - 48) / 12) ** 2))
    body = np.clip(y - top + 0.5, 0, 1) * np.clip(np.minimum(x - 6, 90 - x) + 0.5, 0, 1)
    neck = np.clip(7 - np.abs(x - 48) + 0.5, 0, 1) * (y > 50)
    head = np.clip(18 - np.hypot(xx - 48, (yy - 26) * 0.8) + 0.5, 0, 1)  # ends above row 49
    return (np.clip(np.maximum.reduce([body, neck, head]), 0, 1) * 255).round().astype(np.uint8)


def test_body_shifts_recover_known_subpixel_motion():
    rng = np.random.default_rng(0)
    truth = np.concatenate([np.zeros((6, 2)), rng.uniform(-4, 4, (10, 2))])
    mattes = np.stack([_shoulders(*d) for d in truth])
    got = body_shifts(mattes, top=52, reference=np.arange(6))
    assert np.abs(got - truth).max() < 0.15  # sign and size: the frame shows at x + d what the reference shows at x


def test_body_shifts_ignore_the_head_above_the_band():
    """A head moving above the band is not body motion."""
    m = np.stack([_shoulders(0, 0)] * 3)
    moved_head = m[2].copy()
    moved_head[:48] = np.roll(m[2][:48], 5, axis=1)
    m[2] = moved_head
    got = body_shifts(m, top=52, reference=np.arange(2))
    assert np.abs(got).max() < 0.05


@pytest.mark.parametrize("band", ["uniform", "empty"])
def test_body_shifts_are_zero_without_an_edge_or_a_band(band):
    m = np.full((4, H, W), 255 if band == "uniform" else 0, np.uint8)
    assert not body_shifts(m, top=52, reference=np.arange(2)).any()
    assert not body_shifts(np.stack([_shoulders(2, 1)] * 3), top=H - 3, reference=np.arange(2)).any()  # 3 rows: too few


def test_body_motion_lifts_pixels_to_a_translation_parallel_to_the_image():
    truth = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, -2.0]])
    mattes = np.stack([_shoulders(*d) for d in truth])
    f = 200.0
    Ks = np.tile(np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]), (3, 1, 1))
    viewmat = np.diag([1.0, -1.0, -1.0, 1.0])  # camera at the origin looking down -Z (y up in world)
    transl = np.tile([0.0, 0.0, -0.5], (3, 1))  # the head 0.5 m in front
    chin = np.full(5, 52.0)
    got = body_motion(mattes, chin, np.arange(2), Ks, viewmat, transl)
    assert np.allclose(got[:2], 0, atol=1e-4)
    # 3 px right and 2 px up at 0.5 m with f = 200 px: +7.5 mm world X, +5 mm world Y (up), none in depth.
    assert np.allclose(got[2], [0.0075, 0.005, 0.0], atol=4e-4)
    assert not body_motion(mattes, np.zeros(0), np.arange(2), Ks, viewmat, transl).any()  # no chin tracked


def test_body_shifts_distrust_a_band_where_most_alignments_fail():
    """Shoulders that leave the band in most frames (only the reference frames and one other show
    them): the one answer that came back is not trusted; the body is taken as still."""
    m = np.zeros((10, H, W), np.uint8)
    m[:2] = _shoulders(0, 0)
    m[2] = _shoulders(3, 0)
    lenient = body_shifts(m, top=52, reference=np.arange(2), max_failed=1.0)
    assert abs(lenient[2, 0] - 3) < 0.15 and lenient[3:].any()  # 7 of 10 fail and hold frame 2's answer
    assert not body_shifts(m, top=52, reference=np.arange(2)).any()
