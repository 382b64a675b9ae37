"""3DGS .ply: standard INRIA layout, read back by plyfile and by our reader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar.errors import AvatarError
from avatar.export.ply import ply_property_names, read_gaussians_ply, write_gaussians_ply


def _gaussians(n: int, k: int | None, seed: int = 0) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return dict(
        means=rng.normal(0, 0.1, (n, 3)), quats=q / np.linalg.norm(q, axis=1, keepdims=True),
        scales=np.exp(rng.uniform(-7, -3, (n, 3))), opacities=rng.uniform(0.01, 0.99, n),
        sh_dc=rng.normal(0, 1, (n, 3)), sh_rest=None if k is None else rng.normal(0, 0.2, (n, k, 3)),
    )


@pytest.mark.parametrize("k", [None, 15])
def test_plyfile_reads_inria_layout(tmp_path: Path, k: int | None) -> None:
    plyfile = pytest.importorskip("plyfile")
    g = _gaussians(500, k)
    path = tmp_path / "point_cloud.ply"
    assert write_gaussians_ply(path, **g) == 500
    ply = plyfile.PlyData.read(str(path))
    v = ply["vertex"]
    assert len(ply.elements) == 1 and v.count == 500
    names = [p.name for p in v.properties]
    assert names == ply_property_names(k or 0)
    assert len([nm for nm in names if nm.startswith("f_rest_")]) == 3 * (k or 0)
    assert all(p.val_dtype in ("f4", "float32", "float") for p in v.properties)
    np.testing.assert_allclose(np.c_[v["x"], v["y"], v["z"]], g["means"], atol=1e-6)
    np.testing.assert_allclose(v["opacity"], np.log(g["opacities"] / (1 - g["opacities"])), atol=1e-5)
    np.testing.assert_allclose(v["scale_1"], np.log(g["scales"][:, 1]), atol=1e-5)
    np.testing.assert_allclose(v["rot_0"], g["quats"][:, 0], atol=1e-6)  # w first
    if k:
        # channel-major: f_rest_0..k-1 are red, then green, then blue
        np.testing.assert_allclose(v[f"f_rest_{k}"], g["sh_rest"][:, 0, 1], atol=1e-6)


@pytest.mark.parametrize("k", [None, 3])
def test_round_trip(tmp_path: Path, k: int | None) -> None:
    g = _gaussians(200, k, seed=1)
    write_gaussians_ply(tmp_path / "a.ply", **g)
    back = read_gaussians_ply(tmp_path / "a.ply")
    for key in ("means", "quats", "sh_dc"):
        np.testing.assert_allclose(getattr(back, key), g[key], atol=1e-6)
    np.testing.assert_allclose(back.scales, g["scales"], rtol=1e-5)
    np.testing.assert_allclose(back.opacities, g["opacities"], atol=1e-6)
    if k:
        np.testing.assert_allclose(back.sh_rest, g["sh_rest"], atol=1e-6)
    else:
        assert back.sh_rest is None


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    g = _gaussians(10, None)
    g["scales"][3, 0] = 0.0
    with pytest.raises(AvatarError, match="scales must be positive"):
        write_gaussians_ply(tmp_path / "x.ply", **g)
    g = _gaussians(10, None)
    g["quats"] = g["quats"][:9]
    with pytest.raises(AvatarError, match="quats must have shape"):
        write_gaussians_ply(tmp_path / "x.ply", **g)
    assert not (tmp_path / "x.ply").exists()
