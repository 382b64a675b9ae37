"""FLAME end to end on the small synthetic FLAME-layout file: a clip tracked with it records the
file's path and digest, and train, render, export and view find the model from there; a moved file
is named with --model-path, a file with other content is refused."""
from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
from representation_checks import TINY
from test_flame import _flame_arrays, _write_flame_pickle

from avatar.fitting import load_tracking
from avatar.fitting.tracking import save_tracking
from avatar.models import load_head_model
from avatar.models.registry import model_file_digest
from avatar.training.synthetic import make_synthetic_clip
from avatar_apps.cli import main



@pytest.fixture
def flame_clip(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A FLAME file (FLAME 2020's 300 + 100 components) and a clip tracked with it: the tracking
    records the file as `avatar track --model flame --model-path FILE` does."""
    pkl = _write_flame_pickle(tmp_path / "flame.pkl", _flame_arrays(n_dirs=400), monkeypatch)
    out = make_synthetic_clip(tmp_path / "out", load_head_model("flame", str(pkl), landmarks=False), num_frames=10, size=48)
    tr = load_tracking(out)
    save_tracking(dataclasses.replace(tr, model_path=str(pkl.resolve()), model_sha256=model_file_digest(pkl)), out / "tracking.npz")
    return pkl, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flame_through_every_command(flame_clip, tmp_path, capsys):
    pkl, out = flame_clip
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["train", str(out), "--config", str(tmp_path / "tiny.toml"), "--quiet"]) == 0
    bundle = json.loads((out / "avatar" / "avatar.json").read_text())
    assert bundle["model"] == "flame" and bundle["model_path"] == str(pkl.resolve()) and bundle["model_sha256"]
    assert main(["render", str(out), "--camera", "frontal", "--frames", "2", "--size", "32", "-o", str(tmp_path / "f.mp4")]) == 0
    assert main(["export", str(out), "--format", "ply"]) == 0 and (out / "exports" / "gaussians.ply").is_file()
    capsys.readouterr()
    # GLB and OBJ carry a baked texture, and this file (like FLAME 2020's .pkl) has no UVs: one line
    # says so (the model loaded from the recorded path, or the error would name --model-path).
    for fmt in ("glb", "obj"):
        assert main(["export", str(out), "--format", fmt]) == 2 and "--uv-path" in capsys.readouterr().err
    # FLAME's texture-space file, as an .obj: one UV per vertex (its x, y), triangles as the model's.
    head = load_head_model("flame", str(pkl), landmarks=False)
    xy = head.v_template[:, :2].numpy()
    uv = (xy - xy.min(0)) / (xy.max(0) - xy.min(0))
    lines = [f"vt {u:.6f} {v:.6f}" for u, v in uv] + [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in head.faces.numpy() + 1]
    (tmp_path / "uv.obj").write_text("\n".join(lines) + "\n")
    assert main(["export", str(out), "--uv-path", str(tmp_path / "uv.obj"), "--texture-size", "32"]) == 0
    assert (out / "exports" / "head.glb").is_file()
    from avatar.viewer import open_viewer

    with open_viewer(out, port=_free_port()) as viewer:
        assert viewer.url.startswith("http://127.0.0.1")


def test_a_moved_or_different_flame_file(flame_clip, tmp_path, capsys):
    pkl, out = flame_clip
    (tmp_path / "tiny.toml").write_text(TINY)
    moved = pkl.rename(tmp_path / "elsewhere.pkl")
    assert main(["train", str(out), "--config", str(tmp_path / "tiny.toml"), "--quiet"]) == 2
    assert "--model-path" in capsys.readouterr().err
    assert main(["train", str(out), "--config", str(tmp_path / "tiny.toml"), "--quiet", "--model-path", str(moved)]) == 0
    capsys.readouterr()
    other = tmp_path / "other.pkl"
    other.write_bytes(moved.read_bytes() + b"\0")  # another file (here: one byte more)
    assert main(["render", str(out), "--camera", "frontal", "--frames", "1", "--size", "32", "-o", str(tmp_path / "x.mp4"),
                 "--model-path", str(other)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "is not the FLAME file" in err and "--model-path" in err and err.count("\n") == 1
    assert main(["export", str(out), "--format", "ply", "--model-path", str(moved)]) == 0
