"""`avatar reconstruct` (stages chain, a re-run resumes, a foreign OUT is refused) and
`avatar render` (orbit / frontal / tracked / cross-reenactment) on its result."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_apps.cli import main


@pytest.fixture(scope="module")
def clip(tmp_path_factory, anny_head) -> Path:
    from avatar.training.synthetic import make_synthetic_clip

    # A rendered clip with its known tracking (tracking.npz recorded with source = frames/).
    return make_synthetic_clip(tmp_path_factory.mktemp("rec"), anny_head, num_frames=6, size=64)


@pytest.fixture(scope="module")
def reconstructed(clip: Path) -> tuple[Path, list[str]]:
    args = ["reconstruct", str(clip / "frames"), "-o", str(clip), "--steps", "4", "--texture-size", "64", "--no-orbit"]
    assert main(args) == 0
    return clip, args


def test_reconstruct_chain_and_resume(reconstructed, capsys: pytest.CaptureFixture) -> None:
    clip, args = reconstructed
    for f in ("avatar/avatar.json", "report.json", "exports/head.glb", "exports/gaussians.ply"):
        assert (clip / f).stat().st_size > 0, f
    stamp = (clip / "avatar" / "avatar.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "track: kept" in out and "train: kept" in out and "export glb: kept" in out and "export ply: kept" in out
    assert (clip / "avatar" / "avatar.json").stat().st_mtime_ns == stamp  # not retrained


def test_reconstruct_refuses_another_input(reconstructed, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip, _ = reconstructed
    other = tmp_path / "other.png"
    other.write_bytes(sorted((clip / "frames").iterdir())[0].read_bytes())
    assert main(["reconstruct", str(other), "-o", str(clip), "--steps", "1", "--no-orbit"]) == 2
    assert "holds the reconstruction of" in capsys.readouterr().err


@pytest.mark.parametrize("camera", ["orbit", "frontal", "tracked"])
def test_render_cameras(reconstructed, tmp_path: Path, camera: str) -> None:
    from avatar.io.video import FrameReader

    clip, _ = reconstructed
    video = tmp_path / f"{camera}.mp4"
    assert main(["render", str(clip), "--camera", camera, "--frames", "4", "--size", "48", "-o", str(video)]) == 0
    with FrameReader(video, dtype="uint8") as frames:
        images = list(frames)
    assert len(images) >= 4 and images[0].shape[0] == 48
    # The avatar is drawn: not a blank background.
    assert max(float(np.abs(img.astype(float) - img[0, 0]).max()) for img in images) > 30


def test_render_cross_reenactment(reconstructed, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip, _ = reconstructed
    video = tmp_path / "drive.mp4"
    assert main(["render", str(clip), "--camera", "frontal", "--drive", str(clip / "tracking.npz"),
                 "--size", "48", "-o", str(video)]) == 0  # fmt: skip
    assert video.stat().st_size > 0
    assert main(["render", str(clip), "--drive", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "x.mp4")]) == 2
    assert not (tmp_path / "x.mp4").exists()
    calibrated = tmp_path / "calibrated.mp4"
    assert main(["render", str(clip), "--camera", "frontal", "--drive", str(clip / "tracking.npz"), "--calibrate", "0.3",
                 "--size", "48", "-o", str(calibrated)]) == 0  # fmt: skip
    assert calibrated.stat().st_size > 0
    assert main(["render", str(clip), "--calibrate", "0.3", "-o", str(tmp_path / "y.mp4")]) == 2  # needs --drive


def test_relative_expressions_move_the_rest_face_not_the_expression() -> None:
    """A driver who rests with a squint (channel 0 at 0.4) drives an avatar that rests at 0.1:
    the avatar rests at 0.1 and the driver's blink on top of the squint adds what it adds; clamped."""
    from avatar_apps.render import relative_expressions

    driver = np.zeros((20, 3), np.float32)
    driver[:, 0] = 0.4
    driver[15:, 0] = 0.9  # a blink
    driver[15:, 1] = 0.3
    own = np.zeros((10, 3), np.float32)
    own[:, 0] = 0.1
    got = relative_expressions(own, 10.0, driver, 10.0, driver, seconds=1.0, bounds=(0.0, 1.0))
    np.testing.assert_allclose(got[:15, 0], 0.1, atol=1e-6)
    np.testing.assert_allclose(got[15:, 0], 0.6, atol=1e-6)
    np.testing.assert_allclose(got[15:, 1], 0.3, atol=1e-6)
    lowered = relative_expressions(own, 10.0, driver + 0.5, 10.0, driver, seconds=1.0, bounds=(0.0, 1.0))
    assert lowered.min() == 0.0  # clamped to ARKit's range


def test_train_prints_held_out_figures_with_tracked_and_refined_poses(clip: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    import json

    from test_training import _copy_clip

    out = _copy_clip(clip, tmp_path / "t")
    capsys.readouterr()
    assert main(["train", str(out), "--steps", "3", "--resolution", "64", "--quiet", "--set", "eval_refine_iters=2"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    report = json.loads((out / "report.json").read_text())
    assert summary["held_out_psnr"] == round(report["held_out"]["psnr"], 3)
    assert summary["held_out_psnr_refined_pose"] == round(report["held_out_refined_pose"]["psnr"], 3)
    assert summary["pose_correction_deg_median"] >= 0
