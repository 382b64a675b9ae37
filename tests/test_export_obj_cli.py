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


def test_cli_glb_of_the_bare_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path), "--neutral", "--format", "glb", "--texture-size", "256"]) == 0
    glb = tmp_path / "exports" / "head.glb"
    assert glb.exists() and glb.read_bytes()[:4] == b"glTF"
    assert "0 animation frames" in capsys.readouterr().out


def _write_tracking(folder: Path, n: int, source: Path, rng: np.random.Generator) -> None:
    """A tracking.npz in the tracker's layout (avatar.fitting.save_tracking)."""
    from avatar.fitting.tracking import Tracking, save_tracking
    from avatar.models.anny_head import ARKIT_52

    K = np.array([[600.0, 0, 128], [0, 600.0, 128], [0, 0, 1]])
    tr = Tracking(
        frame_index=np.arange(n), tracked=np.ones(n, bool), interpolated=np.zeros(n, bool),
        landmarks=np.zeros((n, 478, 3), np.float32), expression=rng.uniform(0, 1, (n, 52)).astype(np.float32),
        jaw=rng.normal(0, 0.1, (n, 3)).astype(np.float32), neck=np.zeros((n, 3), np.float32),
        eyes=np.zeros((n, 2, 3), np.float32), global_orient=np.zeros((n, 3), np.float32),
        transl=np.tile(np.array([0.0, -0.12, -0.8], np.float32), (n, 1)), K=np.tile(K, (n, 1, 1)),
        viewmat=np.diag([1.0, -1.0, -1.0, 1.0]), shape=np.zeros(145, np.float32), model="anny",
        expression_names=np.array(ARKIT_52), image_size=np.array([256, 256]), fps=25.0, source=str(source),
    )  # fmt: skip
    save_tracking(tr, folder / "tracking.npz")


def test_cli_glb_with_tracking(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A tracking.npz turns into a GLB animation; the texture is baked from the source frames."""
    from avatar.io.video import VideoWriter

    rng = np.random.default_rng(5)
    n = 4
    source = tmp_path / "clip.mp4"
    with VideoWriter(source, fps=25.0) as w:
        for _ in range(n):
            w.write(np.full((256, 256, 3), 180, np.uint8))
    _write_tracking(tmp_path, n, source, rng)
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


def test_cli_ply_from_trained_bundle(tmp_path: Path, anny_head) -> None:
    """`--format ply` writes the bundle's Gaussians (neutral, and posed at a tracked frame)."""
    plyfile = pytest.importorskip("plyfile")
    from avatar.representations import save_avatar
    from avatar.representations.mesh_gaussians import MeshGaussians

    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)
    save_avatar(tmp_path / "avatar", rep, model="anny", shape=torch.zeros(anny_head.num_shape))
    assert main(["export", str(tmp_path), "--format", "ply"]) == 0
    ply = plyfile.PlyData.read(str(tmp_path / "exports" / "gaussians.ply"))["vertex"]
    assert ply.count == rep.num_gaussians
    _write_tracking(tmp_path, 3, tmp_path / "missing.mp4", np.random.default_rng(1))
    assert main(["export", str(tmp_path), "--format", "ply", "--frame", "1"]) == 0
    posed = plyfile.PlyData.read(str(tmp_path / "exports" / "gaussians_frame00001.ply"))["vertex"]
    assert posed.count == ply.count
    assert np.abs(np.asarray(posed["z"]) - np.asarray(ply["z"])).mean() > 0.5  # moved to the tracked place
