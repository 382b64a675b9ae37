"""Inputs a new user gives by mistake: each is a one-line error with exit code 2 (no traceback), or
is handled (deep, grey, transparent and palette images read as 8-bit RGB; unreadable photos in a
folder skipped with a warning naming them)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avatar.errors import AvatarError
from avatar.io import FrameReader, read_image, write_image
from avatar_apps.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("avatar: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _photo(i: int, h: int = 48, w: int = 40) -> np.ndarray:
    """A distinct RGB test image per ``i`` (its top-left pixel holds ``i``)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = np.linspace(0, 250, w, dtype=np.uint8)[None]
    img[0, 0] = i
    return img


# --- output and source folders ---------------------------------------------------------------------
@pytest.mark.parametrize("command", ["track", "reconstruct"])
def test_output_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture, command: str) -> None:
    image = write_image(tmp_path / "face.png", _photo(0))
    existing = tmp_path / "notes.txt"
    existing.write_text("not a folder")
    assert main([command, str(image), "-o", str(existing)]) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)
    assert main([command, str(image), "-o", str(existing / "sub")]) == 2
    assert f"inside {existing}, which is a file" in _one_line_error(capsys)
    assert existing.read_text() == "not a folder"


def test_export_of_a_folder_without_tracking_or_avatar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    for fmt in ("glb", "obj"):
        assert main(["export", str(tmp_path / "empty"), "--format", fmt]) == 2
        assert "neither tracking.npz nor a trained avatar" in _one_line_error(capsys)
    assert not (tmp_path / "empty" / "exports").exists()
    assert main(["export", str(tmp_path / "typo")]) == 2
    assert "no such folder" in _one_line_error(capsys)
    assert not (tmp_path / "typo").exists()  # not created from a mistyped name
    (tmp_path / "file.glb").write_bytes(b"x")
    assert main(["export", str(tmp_path / "file.glb")]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert main(["export", str(tmp_path / "empty"), "--neutral", "--format", "ply"]) == 2
    assert "--neutral exports the bare head model" in _one_line_error(capsys)


# --- show-model numbers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["--expression", "jawOpen=nan"], "'jawOpen=nan': the value must be a finite number"),
        (["--expression", "jawOpen=-inf"], "'jawOpen=-inf': the value must be a finite number"),
        (["--jaw", "nan", "0", "0"], "--jaw nan 0.0 0.0: values must be finite"),
        (["--yaw", "inf"], "--yaw inf: values must be finite"),
        (["--fov", "0"], "--fov 0.0 is out of range"),
    ],
)
def test_show_model_rejects_non_finite_values(tmp_path: Path, capsys: pytest.CaptureFixture, args, words) -> None:
    out = tmp_path / "head.png"
    assert main(["show-model", "-o", str(out), "--size", "32", *args]) == 2
    assert words in _one_line_error(capsys)
    assert not out.exists()


def test_flame_without_its_file_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show-model", "--model", "flame", "-o", str(tmp_path / "h.png")]) == 2
    line = _one_line_error(capsys)
    assert "needs its model file: on the command line pass --model-path FILE.pkl" in line


# --- image modes ---------------------------------------------------------------------------------------
def _grey(h: int = 24, w: int = 32) -> np.ndarray:
    return np.add.outer(np.arange(h) * 5, np.arange(w) * 3).astype(np.uint8)  # 0..208


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "L", "LA", "P"])
def test_grey_and_deep_images_read_as_8bit_rgb(tmp_path: Path, mode: str) -> None:
    grey = _grey()
    if mode == "I;16":
        im = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range, as a camera writes it
    elif mode == "I":
        im = Image.fromarray(grey.astype(np.int32) * 257)
    elif mode == "F":
        im = Image.fromarray(grey.astype(np.float32) / 255.0)
    else:
        im = Image.fromarray(grey).convert(mode)
    assert im.mode == mode
    path = tmp_path / ("g.tif" if mode in ("I", "F") else "g.png")  # PNG has no 32-bit modes
    im.save(path)
    got = read_image(path, "uint8")
    assert got.shape == (*grey.shape, 3) and got.dtype == np.uint8
    tolerance = 8 if mode == "P" else 1  # a palette is an approximation
    assert np.abs(got.astype(int) - grey[..., None]).max() <= tolerance


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (10, 20, 30, 0)  # the left half fully transparent (its colour must not show)
    rgba[:, 8:] = (200, 0, 0, 255)  # the right half opaque
    Image.fromarray(rgba).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png", "uint8")
    assert (got[:, :8] == 255).all() and (got[:, 8:] == (200, 0, 0)).all()
    pal = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])  # the left half's colour
    pal.save(tmp_path / "p.png")
    assert (read_image(tmp_path / "p.png", "uint8")[:, :8] == 255).all()


@pytest.mark.skipif(not (SHARED / "images").is_dir(), reason="../shared/data not present")
def test_16bit_grey_photo_of_a_face_is_found(tmp_path: Path) -> None:
    from avatar.perception import FaceTracker

    grey = np.asarray(Image.open(SHARED / "images" / "000002.jpg").convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "face16.png")
    assert Image.open(tmp_path / "face16.png").mode == "I;16"
    tracker = FaceTracker(num_threads=1, detector="auto", static_images=True)
    assert tracker.process(read_image(tmp_path / "face16.png", "uint8")).found


# --- unreadable photos in a folder -------------------------------------------------------------------
def _folder(tmp_path: Path, bad: dict[int, bytes], n: int = 6) -> Path:
    """``n`` files p0..p{n-1}; those in ``bad`` hold the given bytes, the others :func:`_photo`."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(n):
        if i in bad:
            (folder / f"p{i}.jpg").write_bytes(bad[i])
        else:
            write_image(folder / f"p{i}.png", _photo(i))
    return folder


def _truncated_jpeg(tmp_path: Path) -> bytes:
    Image.fromarray(_photo(99, 96, 96)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    return data[: len(data) // 2]


def test_unreadable_photos_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _folder(tmp_path, {0: _truncated_jpeg(tmp_path), 3: b"not an image at all"})
    with caplog.at_level(logging.WARNING, logger="avatar.io.video"):
        reader = FrameReader(folder, dtype="uint8")
        frames = list(reader)
    assert [int(f[0, 0, 0]) for f in frames] == [1, 2, 4, 5]
    assert [p.name for p in reader.skipped] == ["p0.jpg", "p3.jpg"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "p0.jpg" in warned[0] and "truncated" in warned[0] and "p3.jpg" in warned[1]
    assert (reader.info.width, reader.info.height) == (40, 48)  # from the first readable photo


def test_stride_counts_readable_photos(tmp_path: Path) -> None:
    """Later stages read the folder again with stride 1 and take frame i * stride: both must name
    the same photo even when one is skipped."""
    folder = _folder(tmp_path, {2: b"garbage"}, n=8)
    every = [int(f[0, 0, 0]) for f in FrameReader(folder, dtype="uint8")]
    strided = [int(f[0, 0, 0]) for f in FrameReader(folder, stride=2, limit=3, dtype="uint8")]
    assert strided == [every[i * 2] for i in range(3)] == [0, 3, 5]


def test_a_folder_of_only_unreadable_photos(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _folder(tmp_path, {0: b"x", 1: b"y"}, n=2)
    with pytest.raises(AvatarError, match=r"none of its 2 images is readable \(p0.jpg, p1.jpg\)"):
        FrameReader(folder)


def test_a_single_unreadable_photo_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "one.jpg").write_bytes(_truncated_jpeg(tmp_path))
    with pytest.raises(AvatarError, match="not a readable image"):
        list(FrameReader(tmp_path / "one.jpg"))


@pytest.mark.skipif(not (SHARED / "images").is_dir(), reason="../shared/data not present")
def test_track_a_folder_with_a_corrupt_jpeg(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("smirk_test_image1.png", "smirk_test_image2.png"):
        (folder / name).write_bytes((SHARED / "images" / name).read_bytes())
    (folder / "smirk_test_image3.jpg").write_bytes(_truncated_jpeg(tmp_path))
    with caplog.at_level(logging.WARNING, logger="avatar.io.video"):
        assert main(["track", str(folder), "-o", str(tmp_path / "out"), "--no-overlay", "--threads", "1"]) == 0
    assert any("smirk_test_image3.jpg" in r.getMessage() for r in caplog.records)
    from avatar.fitting import load_tracking

    assert load_tracking(tmp_path / "out").num_frames == 2
