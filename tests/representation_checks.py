"""Checks every representation's tests share: the tiny training settings of a CLI run, and the
bundle round trip (save -> load -> the same state and the same image)."""
from __future__ import annotations

import pytest
import torch

from avatar.representations import load_avatar, save_avatar

# A few steps at 48 px: enough for train -> resume -> render -> export -> view to run end to end.
TINY = """resolution = 48
steps = 4
per_face_face = 1
eval_video = false
color_init_frames = 2
eval_refine_iters = 0
"""


def tiny_config(*extra: str) -> str:
    """:data:`TINY` plus lines: ``KEY = VALUE``, then any ``[table]`` header with its own."""
    return TINY + "".join(f"{line}\n" for line in extra)


def assert_bundle_round_trip(rep, cls: type, head, expression: torch.Tensor, folder) -> None:
    """``rep`` saved into ``folder/avatar`` loads back as a ``cls`` with the same config and state,
    and renders the same image (AnnyHead at ``expression [1, E]``, frontal, 64 x 64) bit for bit
    (and, through the loaded bundle's inference kernels, to float rounding);
    the loaded one refuses an expression with the wrong channel count."""
    save_avatar(folder / "avatar", rep, model="anny", shape=torch.zeros(head.num_shape))
    av = load_avatar(folder)
    back = av.representation
    assert isinstance(back, cls) and back.config() == rep.config()
    for k, t in rep.state_dict().items():
        assert torch.equal(back.state_dict()[k], t), k
    K = torch.tensor([[120.0, 0, 32], [0, 120.0, 32], [0, 0, 1]])
    vm = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    params = {"transl": torch.tensor([[0.0, -0.12, -0.7]]), "expression": expression}
    fused, _ = av.render(params, vm, K, 64, 64)  # as loaded: with the inference kernels
    back.inference_kernels = rep.inference_kernels
    rgb, alpha = av.render(params, vm, K, 64, 64)
    av.representation = rep
    rgb0, alpha0 = av.render(params, vm, K, 64, 64)
    assert torch.equal(rgb, rgb0) and torch.equal(alpha, alpha0) and alpha[0, 32, 32, 0] > 0.9
    assert (fused - rgb0).abs().max() < 1e-4  # the kernels agree to float rounding
    with pytest.raises(Exception, match="channels"):
        back(head().vertices, expression=torch.zeros(1, 7))


def cli_train_resume_render_export_view(clip, tmp_path, representation: str, config: str) -> dict:
    """``avatar train --representation ...`` with the tiny ``config`` on ``clip``, resumed from step 4
    to 6, then ``render``, ``export --format ply`` (one splat per primitive) and the viewer.
    Returns the bundle's ``avatar.json``."""
    import json
    import socket

    from avatar.export.ply import read_gaussians_ply
    from avatar.viewer import open_viewer
    from avatar_apps.cli import main

    (tmp_path / "tiny.toml").write_text(config)
    args = ["train", str(clip), "--config", str(tmp_path / "tiny.toml"), "--quiet", "--representation", representation]
    assert main(args) == 0
    desc = json.loads((clip / "avatar" / "avatar.json").read_text())
    assert desc["train_config"]["representation"] == representation
    assert main([*args, "--steps", "6"]) == 0  # resumes the checkpoint of step 4
    assert json.loads((clip / "report.json").read_text())["resumed_from"] == 4
    assert main(["render", str(clip), "--camera", "tracked", "--size", "32", "-o", str(tmp_path / "t.mp4")]) == 0
    assert (tmp_path / "t.mp4").stat().st_size > 0
    assert main(["export", str(clip), "--format", "ply"]) == 0
    ply = read_gaussians_ply(clip / "exports" / "gaussians.ply")
    assert len(ply.means) == load_avatar(clip).representation.num_gaussians
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open_viewer(clip, port=port) as viewer:
        assert viewer.url.startswith("http://127.0.0.1")
    return desc
