"""The one tracking reader (``avatar.fitting.load_tracking``): the per-frame names it hands out,
the usable-frame mask, and a clear one-line error for each way a file can be wrong."""
from __future__ import annotations

import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.fitting import Tracking, load_tracking, save_tracking
from avatar.models.base import FRAME_PARAMS


def _tracking(n: int = 5, e: int = 3) -> Tracking:
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.normal(size=(n, *s)).astype(np.float32)  # noqa: E731
    return Tracking(
        frame_index=np.arange(n, dtype=np.int64), tracked=np.array([1, 0, 0, 1, 0][:n], bool),
        interpolated=np.array([0, 1, 0, 0, 0][:n], bool), landmarks=f32(478, 3), expression=f32(e), jaw=f32(3),
        neck=np.zeros((n, 3), np.float32), eyes=f32(2, 3), global_orient=f32(3), transl=f32(3),
        K=np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)), viewmat=np.diag([1.0, -1.0, -1.0, 1.0]),
        shape=np.zeros(4, np.float32), model="anny", expression_names=np.array([f"c{i}" for i in range(e)]),
        image_size=np.array([64, 48]), fps=25.0, source="clip.mp4",
    )  # fmt: skip


def test_usable_and_frame_params(tmp_path) -> None:
    save_tracking(_tracking(), tmp_path / "tracking.npz")
    tr = load_tracking(tmp_path)  # a folder holding tracking.npz
    assert tr.usable.tolist() == [True, True, False, True, False]
    one = tr.frame_params(3)
    assert tuple(one) == FRAME_PARAMS and one["eyes"].shape == (1, 2, 3)  # an int keeps the batch dimension
    assert np.array_equal(one["transl"][0], tr.transl[3])
    rows = tr.frame_params(tr.usable)
    assert rows["expression"].shape == (3, 3)
    params = tr.head_params([0, 3])
    assert set(params) == {"shape", *FRAME_PARAMS} and params["shape"].shape == (1, 4) and params["jaw"].shape == (2, 3)


def test_bad_files_are_clear_one_line_errors(tmp_path) -> None:
    path = tmp_path / "tracking.npz"
    with pytest.raises(AvatarError, match=r"no tracking file; run `avatar track INPUT -o .*` first") as e:
        load_tracking(path)
    assert "\n" not in str(e.value)
    path.write_bytes(b"not a zip")
    with pytest.raises(AvatarError, match="not a readable tracking file .*re-run `avatar track`"):
        load_tracking(path)
    good = _tracking()
    save_tracking(good, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, **{k: v for k, v in arrays.items() if k not in ("K", "fps")})
    with pytest.raises(AvatarError, match=r"missing K, fps\); re-run `avatar track`"):
        load_tracking(path)
    for name, value, says in (("K", np.eye(3), "K has shape"), ("eyes", arrays["eyes"][:, 0], "eyes has shape"),
                              ("expression_names", arrays["expression_names"][:2], "does not match"),
                              ("landmarks", arrays["landmarks"][:3], "landmarks has shape")):  # fmt: skip
        np.savez(path, **{**arrays, name: value})
        with pytest.raises(AvatarError, match=f"inconsistent tracking file .*{says}.*re-run `avatar track`") as e:
            load_tracking(path)
        assert "\n" not in str(e.value)
