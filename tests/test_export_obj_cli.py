"""OBJ export (parsed back independently) and the `avatar export` command."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_apps.cli import main
from avatar.export.obj import export_obj


def _parse_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, list[list[int]]]]]:
    v, vt, vn, faces, material = [], [], [], [], None
    for line in path.read_text().splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "v":
            v.append([float(x) for x in w[1:4]])
        elif w[0] == "vt":
            vt.append([float(x) for x in w[1:3]])
        elif w[0] == "vn":
            vn.append([float(x) for x in w[1:4]])
        elif w[0] == "usemtl":
            material = w[1]
        elif w[0] == "f":
            faces.append((material, [[int(i) for i in c.split("/")] for c in w[1:]]))
    return np.array(v), np.array(vt), np.array(vn), faces


def test_obj_posed_mesh(anny_head, tmp_path: Path) -> None:
    jaw = np.array([[0.25, 0.0, 0.0]])
    expr = np.zeros((1, 52))
    expr[0, anny_head.expression_names.index("mouthSmileLeft")] = 0.8
    info = export_obj(tmp_path / "head.obj", anny_head, params={"jaw": jaw, "expression": expr}, texture_size=128)
    v, vt, vn, faces = _parse_obj(info.obj)
    with torch.no_grad():
        model = anny_head(jaw=torch.tensor(jaw, dtype=torch.float32), expression=torch.tensor(expr, dtype=torch.float32)).vertices[0].numpy()
    assert np.abs(v - model).max() < 1e-6  # 7 decimals
    assert np.allclose(np.linalg.norm(vn, axis=1), 1.0, atol=1e-5)
    corners = np.array([c for _, f in faces for c in f]) - 1  # [3F, 3] (v, vt, vn), 0-based
    got = {tuple(sorted(corners[k : k + 3, 0])) for k in range(0, len(corners), 3)}
    assert got == {tuple(sorted(f)) for f in anny_head.faces.tolist()}
    np.testing.assert_allclose(vt, anny_head.uvs.double().numpy(), atol=1e-7)
    # each corner's UV index is the model's per-corner UV index
    f_model = anny_head.faces.numpy()
    lookup = {tuple(f): k for k, f in enumerate(f_model)}
    tri = corners.reshape(-1, 3, 3)
    for t in tri[::211]:
        assert list(t[:, 1]) == anny_head.uv_faces.numpy()[lookup[tuple(t[:, 0])]].tolist()
    assert {m for m, _ in faces} == {"skin", "eyes", "mouth"}
    mtl = info.mtl.read_text()
    assert mtl.count("newmtl") == 3 and "map_Kd head.png" in mtl and info.texture.exists()


def test_cli_glb_without_tracking(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path), "--format", "glb", "--texture-size", "256"]) == 0
    glb = tmp_path / "exports" / "head.glb"
    assert glb.exists() and glb.read_bytes()[:4] == b"glTF"
    assert "0 animation frames" in capsys.readouterr().out


def test_cli_glb_with_tracking(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A tracking.npz in the provisional layout turns into a GLB animation."""
    rng = np.random.default_rng(5)
    n = 4
    np.savez(tmp_path / "tracking.npz", expression=rng.uniform(0, 1, (n, 52)), jaw=rng.normal(0, 0.1, (n, 3)),
             neck=np.zeros((n, 3)), eyes=np.zeros((n, 2, 3)), global_orient=np.zeros((n, 3)), transl=np.zeros((n, 3)), fps=25.0)
    assert main(["export", str(tmp_path), "--texture-size", "64"]) == 0
    assert f"{n} animation frames" in capsys.readouterr().out
    assert main(["export", str(tmp_path), "--texture-size", "64", "--no-animation"]) == 0
    assert "0 animation frames" in capsys.readouterr().out
    assert main(["export", str(tmp_path), "--format", "obj", "--frame", "2", "--texture-size", "64"]) == 0
    assert (tmp_path / "exports" / "head_frame00002.obj").exists()
    assert main(["export", str(tmp_path), "--format", "obj", "--frame", "9"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path), "--format", "ply"]) == 2
    assert "needs a trained avatar" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "obj", "--frame", "0"]) == 2
    assert "tracking.npz" in capsys.readouterr().err
    assert not (tmp_path / "exports").exists() or not any((tmp_path / "exports").iterdir())


def test_cli_ply_from_provisional_avatar(tmp_path: Path) -> None:
    plyfile = pytest.importorskip("plyfile")
    rng = np.random.default_rng(2)
    n = 300
    (tmp_path / "avatar").mkdir()
    np.savez(tmp_path / "avatar" / "gaussians.npz", means=rng.normal(0, 0.1, (n, 3)), quats=np.tile([1.0, 0, 0, 0], (n, 1)),
             scales=np.full((n, 3), 0.003), opacities=np.full(n, 0.5), sh_dc=rng.normal(0, 1, (n, 3)))
    assert main(["export", str(tmp_path), "--format", "ply"]) == 0
    assert plyfile.PlyData.read(str(tmp_path / "exports" / "gaussians.ply"))["vertex"].count == n
