"""Atomic writes: all or nothing, and ordinary permissions."""
from __future__ import annotations

import os
import stat

import pytest

from avatar.utils.files import atomic_folder, atomic_path, atomic_write


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "a.json"
    with atomic_write(p, "w") as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_atomic_path_permissions_follow_umask(tmp_path):
    p = tmp_path / "b.npz"
    with atomic_path(p) as tmp:
        tmp.write_bytes(b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "c.npz") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not (tmp_path / "c.npz").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.npz"]


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "bundle"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "b.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("crash before the second file")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "1", "b.txt": "1"}
    with atomic_folder(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c.txt"]  # the old files do not linger
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    # A crash between moving the old folder aside and renaming the new one in: the next call restores it.
    os.replace(target, tmp_path / ".bundle.old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target):
            raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["c.txt"]
