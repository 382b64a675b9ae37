"""`avatar reconstruct`: the stages chain, a re-run resumes (keeps finished stages), and an OUT
made from another input is refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from avatar_apps.cli import main


@pytest.fixture(scope="module")
def clip(tmp_path_factory, anny_head) -> Path:
    from avatar.training.synthetic import make_synthetic_clip

    # A rendered clip with its known tracking (tracking.npz recorded with source = frames/).
    return make_synthetic_clip(tmp_path_factory.mktemp("rec"), anny_head, num_frames=6, size=64)


def test_reconstruct_chain_and_resume(clip: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["reconstruct", str(clip / "frames"), "-o", str(clip), "--steps", "4", "--texture-size", "64", "--no-orbit"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "track: kept" in out  # the tracking was already there (same source)
    for f in ("avatar/avatar.json", "report.json", "exports/head.glb", "exports/gaussians.ply"):
        assert (clip / f).stat().st_size > 0, f
    stamp = (clip / "avatar" / "avatar.json").stat().st_mtime_ns
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train: kept" in out and "export glb: kept" in out and "export ply: kept" in out
    assert (clip / "avatar" / "avatar.json").stat().st_mtime_ns == stamp  # not retrained


def test_reconstruct_refuses_another_input(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other.png"
    other.write_bytes((clip / "frames" / sorted(p.name for p in (clip / "frames").iterdir())[0]).read_bytes())
    assert main(["reconstruct", str(other), "-o", str(clip), "--steps", "1", "--no-orbit"]) == 2
    assert "holds the reconstruction of" in capsys.readouterr().err
