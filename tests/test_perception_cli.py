"""`avatar landmarks`: npz contents, overlay files, and user errors as exit code 2 (no traceback)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_apps.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "video").is_dir(), reason="../shared/data not present")


@needs_shared
def test_landmarks_cli_on_video(tmp_path):
    out = tmp_path / "out"
    rc = main(["landmarks", str(SHARED / "video" / "liveportrait_d9.mp4"), "-o", str(out), "--limit", "12", "--stride", "2"])
    assert rc == 0
    data = np.load(out / "landmarks.npz")
    assert data["landmarks"].shape == (12, 478, 3)
    assert data["found"].all() and data["boxes"].shape == (12, 4) and data["scores"].shape == (12,)
    assert float(data["fps"]) == pytest.approx(15.0)  # 30 fps, stride 2
    assert data["size"].tolist() == [512, 480]
    from avatar.io import probe

    info = probe(out / "overlay.mp4")
    assert (info.width, info.height, info.num_frames) == (512, 480, 12)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


@needs_shared
def test_landmarks_cli_on_image(tmp_path):
    rc = main(["landmarks", str(SHARED / "images" / "smirk_test_image1.png"), "-o", str(tmp_path)])
    assert rc == 0
    assert (tmp_path / "overlay.png").is_file()
    assert np.load(tmp_path / "landmarks.npz")["found"].tolist() == [True]


def test_landmarks_cli_bad_input_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    rc = main(["landmarks", str(bad), "-o", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not a readable video" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "landmarks.npz").exists()
