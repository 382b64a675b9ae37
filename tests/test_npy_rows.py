"""NpyRows reads the rows of a .npy file as indexing the loaded array would."""

import numpy as np
import pytest

from avatar.io.npy_rows import NpyRows


@pytest.fixture
def stored(tmp_path):
    a = np.random.default_rng(0).integers(0, 255, (7, 5, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    with NpyRows(tmp_path / "a.npy") as rows:
        yield a, rows


@pytest.mark.parametrize("key", [3, -1, np.int64(2), slice(None), slice(1, 6, 2), slice(None, None, -1), [4, 0, 0, 5],
                                 np.array([[1, 2], [6, 3]]), np.arange(7) % 3 == 0, (2, slice(1, 3)),
                                 (slice(None), slice(1, 4), 2), ([0, 6], 1)])  # fmt: skip
def test_indexing_matches_numpy(stored, key):
    a, rows = stored
    got = rows[key]
    assert np.array_equal(got, a[key]) and got.dtype == a.dtype and got.flags.writeable


def test_shape_and_whole_array(stored):
    a, rows = stored
    assert rows.shape == a.shape and len(rows) == 7 and rows.ndim == 4 and rows.dtype == np.uint8
    assert np.array_equal(np.asarray(rows), a)


def test_bad_index_and_truncated_file(stored, tmp_path):
    a, rows = stored
    with pytest.raises(IndexError):
        rows[7]
    with pytest.raises(IndexError):
        rows[[0.5]]
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-10])
    with NpyRows(tmp_path / "cut.npy") as cut:
        assert np.array_equal(cut[0], a[0])
        with pytest.raises(OSError, match="early"):
            cut[6]


def test_refuses_fortran_order(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((3, 4))))
    with pytest.raises(ValueError, match="C-ordered"):
        NpyRows(tmp_path / "f.npy")


def test_create_and_write_rows(tmp_path):
    with NpyRows.create(tmp_path / "w.npy", (4, 3, 2), np.uint8) as rows:
        rows[1] = np.full((3, 2), 7)
        rows[-1] = np.arange(6).reshape(3, 2)
        assert np.array_equal(rows[1], np.full((3, 2), 7))  # read back before closing
        with pytest.raises(ValueError):
            rows[0] = np.zeros((2, 3))
        with pytest.raises(IndexError):
            rows[4] = np.zeros((3, 2))
    want = np.zeros((4, 3, 2), np.uint8)
    want[1], want[3] = 7, np.arange(6).reshape(3, 2)
    assert np.array_equal(np.load(tmp_path / "w.npy"), want)
