"""avatar.io: streaming reader (videos, folders, images), rotation, stride/limit, atomic writer,
and clear AvatarErrors for bad inputs. Synthetic clips are made with our own writer; the shared
real clips are used when ../shared/data exists."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.io import FrameReader, VideoWriter, probe, read_image, write_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "video").is_dir(), reason="../shared/data not present")


def _pattern(i: int, h: int = 64, w: int = 96) -> np.ndarray:
    """Frame i: a horizontal gradient plus a white square in the top-left corner whose size
    encodes i (so order and orientation can be checked after a lossy codec)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = np.linspace(0, 200, w, dtype=np.uint8)[None, :]
    img[:16, :16] = 255
    img[40:40 + 2 * (i % 10), 40:60, 2] = 255
    return img


def _write_clip(path: Path, n: int = 12, fps: float = 10, rotation: int = 0) -> Path:
    with VideoWriter(path, fps=fps, rotation=rotation) as w:
        for i in range(n):
            w.write(_pattern(i))
    return path


def test_roundtrip_video_stride_limit(tmp_path):
    clip = _write_clip(tmp_path / "clip.mp4", n=12)
    info = probe(clip)
    assert (info.width, info.height, info.kind) == (96, 64, "video")
    assert info.fps == pytest.approx(10.0)
    assert info.num_frames == 12
    frames = list(FrameReader(clip, dtype="uint8"))
    assert len(frames) == 12 and frames[0].dtype == np.uint8 and frames[0].shape == (64, 96, 3)
    # lossy codec: compare loosely with what we wrote
    assert np.abs(frames[3].astype(int) - _pattern(3).astype(int)).mean() < 6
    floats = list(FrameReader(clip, stride=3, limit=3))
    assert len(floats) == 3 and floats[0].dtype == np.float32
    assert 0.0 <= floats[0].min() and floats[0].max() <= 1.0
    np.testing.assert_allclose(floats[1], frames[3] / 255.0, atol=1e-6)  # stride 3: frames 0, 3, 6
    assert len(FrameReader(clip, stride=3, limit=3)) == 3
    assert FrameReader(clip, stride=2).fps == pytest.approx(5.0)


def test_writer_is_atomic_on_error(tmp_path):
    out = tmp_path / "never.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, fps=10) as w:
            w.write(_pattern(0))
            raise RuntimeError("boom")
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporary left behind


def test_odd_sizes_are_padded(tmp_path):
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, fps=5) as w:
        w.write(np.full((33, 47, 3), 128, np.uint8))
    assert probe(out).width == 48 and probe(out).height == 34


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_tag_is_applied(tmp_path, rotation):
    clip = _write_clip(tmp_path / "rot.mp4", n=3, rotation=rotation)
    info = probe(clip)
    assert info.rotation == rotation % 360
    frame = next(iter(FrameReader(clip, dtype="uint8")))
    expected = np.rot90(_pattern(0), rotation // 90)  # what a player shows
    assert frame.shape == expected.shape == (info.height, info.width, 3)
    white = np.argwhere(frame.min(-1) > 200).mean(0)
    white_expected = np.argwhere(expected.min(-1) > 200).mean(0)
    np.testing.assert_allclose(white, white_expected, atol=2.0)


def test_image_folder_and_single_image(tmp_path):
    for i in (10, 2, 1):  # natural order: 1, 2, 10
        write_image(tmp_path / "frames" / f"f{i}.png", _pattern(i))
    frames = list(FrameReader(tmp_path / "frames", dtype="uint8"))
    assert [int((f[40:, 40:60, 2] > 128).sum() // 20) for f in frames] == [2, 4, 0]  # i % 10 * 2 rows
    info = probe(tmp_path / "frames")
    assert info.kind == "images" and info.fps is None and info.num_frames == 3
    single = list(FrameReader(tmp_path / "frames" / "f2.png"))
    assert len(single) == 1 and single[0].dtype == np.float32
    np.testing.assert_array_equal(read_image(tmp_path / "frames" / "f2.png", "uint8"), _pattern(2))


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    img = Image.fromarray(_pattern(0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    img.save(tmp_path / "exif.jpg", exif=exif, quality=95)
    arr = read_image(tmp_path / "exif.jpg", "uint8")
    assert arr.shape == (96, 64, 3)
    white = np.argwhere(arr.min(-1) > 200).mean(0)
    assert white[0] < 20 and white[1] > 44  # the top-left square is now top-right


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("empty.mp4", b"", "empty"),
        ("garbage.mp4", b"\x00\x01 definitely not a video " * 200, "not a readable video"),
        ("notes.mov", b"hello, this is a text file\n" * 50, "not a readable video"),
        ("broken.png", b"\x89PNG\r\n\x1a\n but then nothing", "not a readable image"),
    ],
)
def test_bad_files_give_avatar_error(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AvatarError, match=words):
        list(FrameReader(path))


def test_truncated_video_gives_avatar_error(tmp_path):
    good = _write_clip(tmp_path / "good.mp4", n=30).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(good[: len(good) // 3])  # mp4 index (moov) lost
    with pytest.raises(AvatarError, match="truncated or corrupt"):
        list(FrameReader(path))


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(AvatarError, match="no such file"):
        FrameReader(tmp_path / "nope.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AvatarError, match="no images"):
        FrameReader(tmp_path / "empty")


def test_audio_only_file_gives_avatar_error(tmp_path):
    import av

    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(AvatarError, match="no video stream"):
        FrameReader(path)


@needs_shared
def test_shared_portrait_clip_is_upright():
    info = probe(SHARED / "video" / "liveportrait_d13.mp4")
    assert (info.width, info.height) == (720, 1280)
    frame = next(iter(FrameReader(SHARED / "video" / "liveportrait_d13.mp4", dtype="uint8")))
    assert frame.shape == (1280, 720, 3)


@needs_shared
def test_shared_clip_streams_with_limit():
    reader = FrameReader(SHARED / "video" / "hdtf_aoc.mp4", stride=5, limit=7, dtype="uint8")
    assert reader.info.num_frames == 200 and reader.info.fps == pytest.approx(25.0)
    assert sum(1 for _ in reader) == 7
