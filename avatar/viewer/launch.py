"""Build a viewer from what the user gave: an output folder, or just a head model."""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import torch

from avatar.errors import AvatarError
from avatar.viewer.motion import load_motion
from avatar.viewer.paths import OutFolder, open_out

__all__ = ["open_viewer", "is_loopback"]

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_viewer(
    out: Path | None = None,
    *,
    model: str = "anny",
    model_path: Path | None = None,
    reenact: tuple[Path, ...] = (),
    host: str = "127.0.0.1",
    port: int = 8080,
    synthetic_gaussians: int = 0,
    chunk_size: int = 2048,
    save_dir: Path | None = None,
    head=None,
    verbose: bool = False,
):
    """Start a viewer. With ``out``: its avatar (splats) if ``out/avatar`` exists, else the head
    model's mesh with ``out/tracking.npz`` for playback. Without: the head model (``model``) and its
    expressions. ``reenact``: other people's tracking files, offered for playback.
    ``synthetic_gaussians``: show that many made-up Gaussians bound to the mesh instead of the
    mesh (tests and ``bench/bench_viewer.py`` drive the splat path without a trained avatar; not
    a CLI flag). ``head``: an already loaded head model
    (tests share one)."""
    from avatar.viewer.app import AvatarViewer
    from avatar.viewer.scene import SplatScene, splat_scene_from_representation

    folder = open_out(out, tuple(reenact)) if out is not None else OutFolder(None, tuple(reenact))
    motions = {}
    if folder.tracking is not None:
        motions["tracking.npz"] = load_motion(folder.tracking)
    for path in folder.allowed:
        motions[f"reenact: {path}"] = load_motion(path)

    shape = None
    splats = None
    if folder.avatar_dir is not None:
        try:
            from avatar.representations import load_avatar
        except ImportError as e:
            raise AvatarError(f"{folder.avatar_dir}: this install cannot load Gaussian avatars ({e})") from e
        try:
            bundle = load_avatar(folder.avatar_dir, model_path=model_path)
        except AvatarError:
            raise
        except Exception as e:  # a damaged bundle: name it instead of a traceback
            raise AvatarError(f"{folder.avatar_dir}: unreadable avatar bundle ({type(e).__name__}: {e}); re-run `avatar train`") from e
        head, shape = bundle.head, bundle.shape
        rep = bundle.representation

        def splats(scene, rest):  # noqa: F811
            return splat_scene_from_representation(scene, rep, rest, chunk_size=chunk_size)
    else:
        if head is None:
            from avatar.models import load_head_model

            if model != "flame" and model_path is not None:
                raise AvatarError("--model-path is only used with --model flame")
            head = load_head_model(model, path=None if model_path is None else str(model_path), landmarks=False)
        for m in motions.values():
            if m.shape is not None and m.shape.shape[0] == head.num_shape and folder.tracking == m.source:
                shape = torch.from_numpy(m.shape)
        if synthetic_gaussians > 0:
            from avatar.viewer.scene import eye_vertex_mask
            from avatar.viewer.synthetic import TriangleGaussians

            def splats(scene, rest):  # noqa: F811
                rgb = torch.tensor([0.80, 0.63, 0.53]).repeat(head.num_vertices, 1)
                rgb[torch.from_numpy(eye_vertex_mask(head))] = torch.tensor([0.93, 0.93, 0.90])
                g = TriangleGaussians(head.faces, rest, synthetic_gaussians, rgb.numpy())
                return SplatScene(scene, g.deform, rest, g.rgb, g.opacities, chunk_size=chunk_size,
                                  parent_face=g.parent, faces=g.faces)  # fmt: skip

    if not is_loopback(host):
        log.warning("serving the viewer on %s: anyone who can reach this address can see and drive it", host)
    return AvatarViewer(head, splats=splats, shape=shape, out=folder, motions=motions, host=host, port=port,
                        save_dir=save_dir, verbose=verbose)  # fmt: skip
