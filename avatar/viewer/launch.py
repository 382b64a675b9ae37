"""Build a viewer from what the user gave: an output folder, or just a head model."""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import torch

from avatar.errors import AvatarError
from avatar.viewer.motion import load_motion
from avatar.viewer.paths import OutFolder, open_out
from avatar.viewer.stream import StreamSettings

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
    client_splats: bool = False,
    device: str = "auto",
    stream: StreamSettings | None = None,
    synthetic_gaussians: int = 0,
    chunk_size: int = 2048,
    save_dir: Path | None = None,
    head=None,
    verbose: bool = False,
):
    """Start a viewer. With ``out``: its avatar if ``out/avatar`` exists, else the head model's
    mesh with ``out/tracking.npz`` for playback. Without: the head model (``model``) and its
    expressions. ``reenact``: other people's tracking files, offered for playback.

    Gaussians are rendered on the server for each browser tab (``device``: "auto" picks CUDA when a
    GPU rasterizer works there; ``stream``: :class:`avatar.viewer.stream.StreamSettings`), unless
    ``client_splats``: then the browser draws them (:class:`avatar.viewer.scene.RepresentationSplats`).
    A mesh is always drawn by the browser. ``synthetic_gaussians``: show that many made-up
    Gaussians bound to the mesh instead of the mesh (tests and ``bench/bench_viewer.py`` drive the
    splat paths without a trained avatar; not a CLI flag). ``head``: an already loaded head model
    (tests share one)."""
    from avatar.viewer.app import AvatarViewer

    folder = open_out(out, tuple(reenact)) if out is not None else OutFolder(None, tuple(reenact))
    motions = {}
    if folder.tracking is not None:
        motions["tracking.npz"] = load_motion(folder.tracking)
    for path in folder.allowed:
        motions[f"reenact: {path}"] = load_motion(path)

    shape, draw, background = None, None, (1.0, 1.0, 1.0)
    if folder.avatar_dir is not None:
        bundle = _load_bundle(folder.avatar_dir, model_path)
        head, shape, rep = bundle.head, bundle.shape, bundle.representation
        background = tuple(bundle.config.get("background", background))
        if client_splats:
            from avatar.viewer.scene import RepresentationSplats

            def draw(server, rest):  # noqa: F811
                return RepresentationSplats(server.scene, rep, rest, chunk_size=chunk_size)
        else:
            draw = _rendered(lambda dev: _posed_representation(rep.to(dev)), device, background, stream)
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
            draw = _synthetic(head, shape, synthetic_gaussians, client_splats, chunk_size, device, stream)

    if not is_loopback(host):
        log.warning("serving the viewer on %s: anyone who can reach this address can see and drive it", host)
    return AvatarViewer(head, draw=draw, shape=shape, out=folder, motions=motions, host=host, port=port,
                        save_dir=save_dir, verbose=verbose)  # fmt: skip


def _load_bundle(avatar_dir: Path, model_path: Path | None):
    try:
        from avatar.representations import load_avatar
    except ImportError as e:
        raise AvatarError(f"{avatar_dir}: this install cannot load Gaussian avatars ({e})") from e
    try:
        return load_avatar(avatar_dir, model_path=model_path)
    except AvatarError:
        raise
    except Exception as e:  # a damaged bundle: name it instead of a traceback
        raise AvatarError(f"{avatar_dir}: unreadable avatar bundle ({type(e).__name__}: {e}); re-run `avatar train`") from e


def _posed_representation(rep):
    """``(vertices [V, 3], expression [1, E] | None) -> Splats``: the representation at rest, as
    :meth:`avatar.representations.Avatar.splats` poses it when no rigid pose is given."""

    def splats_of(vertices, expression):
        return rep(vertices[None], sh_degree=None, expression=expression)

    return splats_of


def _rendered(posed, device: str, background, stream):
    """A factory for :class:`~avatar.viewer.scene.RenderedSplats`: ``posed(device) -> splats_of``."""
    from avatar.render.device import describe, pick_device
    from avatar.viewer.scene import RenderedSplats

    dev = pick_device(device)
    log.info("the viewer renders on %s", describe(dev))

    def draw(server, rest):
        return RenderedSplats(server, posed(dev), dev, background, stream or StreamSettings())

    return draw


def _synthetic(head, shape, n: int, client_splats: bool, chunk_size: int, device: str, stream):
    """Made-up Gaussians on the head's triangles (:mod:`avatar.viewer.synthetic`), drawn like an avatar's."""
    from avatar.representations import Splats
    from avatar.viewer.scene import SplatScene, eye_vertex_mask
    from avatar.viewer.synthetic import TriangleGaussians

    rgb = torch.tensor([0.80, 0.63, 0.53]).repeat(head.num_vertices, 1)
    rgb[torch.from_numpy(eye_vertex_mask(head))] = torch.tensor([0.93, 0.93, 0.90])
    with torch.no_grad():
        rest = head(shape=None if shape is None else shape.reshape(1, -1)).vertices[0]
    g = TriangleGaussians(head.faces, rest, n, rgb.numpy())
    if client_splats:
        def draw(server, rest):
            return SplatScene(server.scene, g.deform, rest, g.rgb, g.opacities, chunk_size=chunk_size,
                              parent_face=g.parent, faces=g.faces)  # fmt: skip

        return draw

    def posed(dev):
        def splats_of(vertices, expression):
            means, quats, scales = (x[None].to(dev) for x in g.deform(vertices.cpu()))
            return Splats(means, quats, scales, g.opacities.to(dev), g.rgb.to(dev), None)

        return splats_of

    return _rendered(posed, device, (1.0, 1.0, 1.0), stream)
