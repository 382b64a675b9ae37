"""`avatar render --neutral` and one-image output (.png): the still that `avatar view` opens on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_apps.cli import main

VIEWMAT = np.diag([1.0, -1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def bundle(anny_head, tmp_path_factory) -> Path:
    """A made-up avatar whose 3-frame performance opens the jaw, turned and placed in front of the camera."""
    from avatar.representations import save_avatar
    from avatar.viewer.synthetic import shaded_representation

    out = tmp_path_factory.mktemp("still")
    n = 3
    expression = torch.zeros(n, len(anny_head.expression_names))
    expression[:, anny_head.expression_names.index("jawOpen")] = 1.0
    perf = {"expression": expression, "jaw": torch.zeros(n, 3), "neck": torch.zeros(n, 3), "eyes": torch.zeros(n, 2, 3),
            "global_orient": torch.tensor([[0.0, 0.3, 0.0]] * n), "transl": torch.tensor([[0.0, 0.0, -0.8]] * n)}  # fmt: skip
    rep = shaded_representation(anny_head, per_face=1, per_face_face=1)
    K = [[80.0, 0.0, 32.0], [0.0, 80.0, 32.0], [0.0, 0.0, 1.0]]
    save_avatar(out / "avatar", rep, model="anny", shape=torch.zeros(anny_head.num_shape), performance=perf,
                extra={"image_size": [64, 64], "K": K, "fps": 25.0, "viewmat": VIEWMAT.tolist()})  # fmt: skip
    return out


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_neutral_png_is_the_rest_face_at_the_frontal_camera(bundle: Path, tmp_path: Path) -> None:
    from avatar.representations import load_avatar
    from avatar.viewer.camera import frontal_camera

    still = tmp_path / "still.png"
    assert main(["render", str(bundle), "--camera", "frontal", "--neutral", "--size", "48", "--device", "cpu", "-o", str(still)]) == 0
    av = load_avatar(bundle)
    with torch.no_grad():
        cam = frontal_camera(av.vertices({})[0], 48, 48)
        rgb, _ = av.render({k: v for k, v in av.head.zero_params(1).items() if k not in ("shape", "global_orient", "transl")},
                           torch.tensor(cam.viewmat, dtype=torch.float32), torch.tensor(cam.K, dtype=torch.float32), 48, 48)  # fmt: skip
    want = np.rint(rgb[0].clamp(0, 1).numpy() * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(_read(still), want)
    # without --neutral the first frame of the performance: the jaw is open
    first = tmp_path / "first.png"
    assert main(["render", str(bundle), "--camera", "frontal", "--size", "48", "--device", "cpu", "-o", str(first)]) == 0
    assert np.abs(_read(first).astype(int) - want.astype(int)).max() > 50


def test_neutral_tracked_keeps_the_head_placement(bundle: Path, tmp_path: Path) -> None:
    out = [tmp_path / "neutral.png", tmp_path / "open.png"]
    assert main(["render", str(bundle), "--camera", "tracked", "--neutral", "--device", "cpu", "-o", str(out[0])]) == 0
    assert main(["render", str(bundle), "--camera", "tracked", "--device", "cpu", "-o", str(out[1])]) == 0
    a, b = (_read(p) for p in out)
    assert a.shape == b.shape == (64, 64, 3)
    fg = lambda im: (im < 250).any(-1)  # noqa: E731
    assert fg(a).mean() > 0.05 and (fg(a) & fg(b)).sum() > 0.8 * fg(a).sum()  # same place, not the same face
    assert np.abs(a.astype(int) - b.astype(int)).max() > 50


def test_neutral_cannot_be_driven(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["render", str(bundle), "--neutral", "--drive", str(tmp_path / "x.npz"), "-o", str(tmp_path / "x.png")]) == 2
    assert "--neutral" in capsys.readouterr().err
