"""The orbit video of `avatar render --camera orbit` (and `avatar reconstruct`): by default the
camera sweeps over the angles the clip saw the head from, plus a margin; --full-orbit turns all
the way round."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_apps.cli import main
from avatar_apps.render import ORBIT_MARGIN_DEG, orbit_yaws, seen_azimuths

VIEWMAT = np.diag([1.0, -1.0, -1.0, 1.0])  # the tracker's camera, at the origin looking down -Z


def test_seen_azimuth_of_a_turned_head() -> None:
    """A head turned 30 degrees toward its left (+Y) shows the camera its right side: the orbit
    yaw that sees it so is -30 (orbit_viewmat's positive yaw is toward the subject's left)."""
    from avatar.render.mesh import orbit_viewmat

    yaw = np.radians(30.0)
    seen = seen_azimuths(np.array([[0.0, yaw, 0.0]]), np.array([[0.0, 0.0, -0.8]]), VIEWMAT)
    assert seen == pytest.approx([-30.0])
    view = orbit_viewmat(np.zeros(3), 0.8, float(seen[0]), 0.0)  # that camera, around the head at rest
    R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    camera_in_head = R.T @ (np.zeros(3) - np.array([0.0, 0.0, -0.8]))
    np.testing.assert_allclose(-view[:3, :3].T @ view[:3, 3], camera_in_head, atol=1e-9)


def test_seen_azimuth_of_a_head_beside_the_axis_and_another_camera() -> None:
    seen = seen_azimuths(np.zeros((1, 3)), np.array([[0.3, 0.0, -0.8]]), VIEWMAT)
    assert seen == pytest.approx([np.degrees(np.arctan2(-0.3, 0.8))])
    moved = VIEWMAT.copy()
    moved[:3, 3] = -VIEWMAT[:3, :3] @ np.array([0.3, 0.0, 0.0])  # the camera slid 0.3 m to +X
    assert seen_azimuths(np.zeros((1, 3)), np.array([[0.3, 0.0, -0.8]]), moved) == pytest.approx([0.0], abs=1e-9)


def test_seen_from_behind_does_not_wrap() -> None:
    turn = np.radians([[0.0, 170.0, 0.0], [0.0, -170.0, 0.0]])
    seen = seen_azimuths(turn, np.tile([0.0, 0.0, -0.8], (2, 1)), VIEWMAT)
    assert np.ptp(seen) == pytest.approx(20.0)


def test_orbit_yaws_sweep_the_seen_range_plus_the_margin() -> None:
    yaws, what = orbit_yaws(120, np.array([-10.0, 4.0, 20.0]))
    assert yaws.min() == pytest.approx(-10.0 - ORBIT_MARGIN_DEG) and yaws.max() == pytest.approx(20.0 + ORBIT_MARGIN_DEG)
    assert yaws[0] == pytest.approx(5.0)  # starts in the middle, sweeps there and back
    assert np.abs(np.diff(np.r_[yaws, yaws[0]])).max() < 2.0  # and loops without a jump
    assert "-25..+35 degrees" in what and "-10..+20" in what
    full, what = orbit_yaws(8, None)
    np.testing.assert_allclose(full, np.arange(8) * 45.0)
    assert "whole turn" in what
    assert "every side" in orbit_yaws(8, np.array([-170.0, 160.0]))[1]


@pytest.fixture(scope="module")
def bundle(anny_head, tmp_path_factory) -> Path:
    """An untrained bundle whose performance turns the head 0..20 degrees toward its left."""
    from avatar.representations import save_avatar
    from avatar.representations.mesh_gaussians import MeshGaussians

    out = tmp_path_factory.mktemp("orbit")
    n = 5
    perf = {"expression": torch.zeros(n, 52), "jaw": torch.zeros(n, 3), "neck": torch.zeros(n, 3),
            "eyes": torch.zeros(n, 2, 3), "global_orient": torch.zeros(n, 3), "transl": torch.tensor([[0.0, 0.0, -0.8]] * n)}  # fmt: skip
    perf["global_orient"][:, 1] = torch.deg2rad(torch.linspace(0.0, 20.0, n))
    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)
    save_avatar(out / "avatar", rep, model="anny", shape=torch.zeros(anny_head.num_shape), performance=perf,
                extra={"image_size": [64, 64], "fps": 25.0, "viewmat": VIEWMAT.tolist()})  # fmt: skip
    return out


@pytest.mark.parametrize("full", [False, True])
def test_render_orbit_says_what_it_covers(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture, full: bool) -> None:
    video = tmp_path / "orbit.mp4"
    args = ["render", str(bundle), "--camera", "orbit", "--frames", "4", "--size", "32", "--device", "cpu", "-o", str(video)]
    assert main(args + (["--full-orbit"] if full else [])) == 0
    out = capsys.readouterr().out
    expected = "orbit: a whole turn" if full else "orbit: yaw -35..+15 degrees: the clip saw the head from -20..+0"
    assert expected in out and video.stat().st_size > 0
