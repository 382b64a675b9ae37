"""The tracking overlay: frames larger than 720p are drawn on a scaled-down copy, with the
wireframe and the landmarks where they fall on the full-size frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar.fitting.pipeline import _dots, draw_overlay
from avatar.io import probe, read_image, write_image

W, H = 1280, 800  # shorter side 800 > 720: scaled by 0.9


def _tracking(n: int, source: Path, rng: np.random.Generator):
    from avatar.fitting.tracking import Tracking
    from avatar.models.anny_head import ARKIT_52

    K = np.array([[1400.0, 0, W / 2], [0, 1400.0, H / 2], [0, 0, 1]])
    landmarks = np.zeros((n, 478, 3), np.float32)
    landmarks[..., :2] = rng.uniform([200, 100], [W - 200, H - 100], (n, 478, 2))
    return Tracking(
        frame_index=np.arange(n), tracked=np.ones(n, bool), interpolated=np.zeros(n, bool), landmarks=landmarks,
        expression=np.zeros((n, 52), np.float32), jaw=np.zeros((n, 3), np.float32), neck=np.zeros((n, 3), np.float32),
        eyes=np.zeros((n, 2, 3), np.float32), global_orient=np.zeros((n, 3), np.float32),
        transl=np.tile(np.array([0.0, -0.15, -0.7], np.float32), (n, 1)), K=np.tile(K, (n, 1, 1)),
        viewmat=np.diag([1.0, -1.0, -1.0, 1.0]), shape=np.zeros(145, np.float32), model="anny",
        expression_names=np.array(ARKIT_52), image_size=np.array([W, H]), fps=25.0, source=str(source),
    )  # fmt: skip


def _drawn(img: np.ndarray) -> np.ndarray:
    """``[N, 2]`` (x, y) of the pixels the overlay changed on the uniform grey frame."""
    ys, xs = np.nonzero(np.abs(img.astype(int) - 128).max(-1) > 40)
    return np.stack([xs, ys], 1).astype(float)


def test_overlay_is_drawn_at_720p_where_the_full_frame_has_it(anny_head, tmp_path: Path) -> None:
    """The single-image path writes a lossless overlay.png: the 720p drawing lands where the
    full-size drawing, scaled, has it."""
    image = write_image(tmp_path / "frame.png", np.full((H, W, 3), 128, np.uint8))
    tracking = _tracking(1, image, np.random.default_rng(0))
    draw_overlay(tracking, anny_head, image, tmp_path / "small", progress=False)
    draw_overlay(tracking, anny_head, image, tmp_path / "full", progress=False, short_side=10_000)
    small, full = read_image(tmp_path / "small" / "overlay.png", "uint8"), read_image(tmp_path / "full" / "overlay.png", "uint8")
    assert small.shape == (720, 1152, 3) and full.shape == (H, W, 3)
    assert (probe(tmp_path / "small" / "overlay.mp4").width, probe(tmp_path / "small" / "overlay.mp4").height) == (1152, 720)
    a, b = _drawn(small), _drawn(full) * 0.9
    assert len(a) > 1000
    np.testing.assert_allclose(a.mean(0), b.mean(0), atol=1.5)  # same place
    np.testing.assert_allclose(a.std(0), b.std(0), rtol=0.03)  # same extent


def test_small_frames_keep_their_size(anny_head, tmp_path: Path) -> None:
    from avatar.io import VideoWriter

    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, fps=25.0) as w:
        for _ in range(3):
            w.write(np.full((240, 320, 3), 128, np.uint8))
    tracking = _tracking(3, clip, np.random.default_rng(1))
    draw_overlay(tracking, anny_head, clip, tmp_path / "out", progress=False)
    info = probe(tmp_path / "out" / "overlay.mp4")
    assert (info.width, info.height, info.num_frames) == (320, 240, 3)


@pytest.mark.parametrize("size", [(5, 7), (64, 48)])
def test_dots_match_opencv_circles(size: tuple[int, int]) -> None:
    import cv2

    points = np.random.default_rng(2).uniform(-3, max(size) + 3, (300, 2))
    ours, ref = np.zeros((*size, 3), np.uint8), np.zeros((*size, 3), np.uint8)
    _dots(ours, points, (0, 255, 0))
    for x, y in np.round(points).astype(int):
        cv2.circle(ref, (int(x), int(y)), 1, (0, 255, 0), -1)
    assert np.array_equal(ours, ref)
