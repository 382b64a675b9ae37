"""Atomic writes: all or nothing, and ordinary permissions."""
from __future__ import annotations

import os
import stat

import pytest

from avatar.utils.files import atomic_path, atomic_write


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
