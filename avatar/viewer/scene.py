"""What the viewer draws for a posed head: a shaded mesh or Gaussian splats drawn by the browser,
or Gaussians rendered on the server (:class:`RenderedSplats`, the default for an avatar). Each
takes the posed vertices ``[V, 3]`` (head at rest: the rigid pose is ``root``) and sends only what
changed (viser skips a mesh whose vertices are equal; browser splats re-send changed chunks only,
see :mod:`avatar.viewer.splats`; the server renders a new image only for a new frame or camera)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from avatar.viewer.camera import ViewCamera
from avatar.viewer.splats import ChunkedSplats
from avatar.viewer.stream import StreamSettings, ViewStreamer

__all__ = ["SceneUpdate", "MeshScene", "SplatScene", "RepresentationSplats", "RenderedSplats", "Deform",
           "splat_scene_from_representation", "view_appearance"]  # fmt: skip

SKIN_RGB = (205, 160, 135)
_SH_C0 = 0.28209479177387814
EYE_RGB = (238, 238, 230)

# vertices [V, 3] -> means [N, 3], quats [N, 4] (wxyz), scales [N, 3]
Deform = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class SceneUpdate:
    """What one update queued for each client: array bytes and scene-node messages."""

    bytes_sent: int
    messages: int


def eye_vertex_mask(head) -> np.ndarray:
    """``[V]`` bool: vertices skinned mostly to an eye joint (the eyeballs)."""
    eye_joints = [i for i, name in enumerate(head.joint_names) if "eye" in name.lower()]
    if not eye_joints:
        return np.zeros(head.num_vertices, bool)
    return head.skin_weights[:, eye_joints].sum(1).detach().cpu().numpy() > 0.5


class MeshScene:
    """The head as two smooth-shaded meshes (skin, eyes), vertices updated in place."""

    def __init__(self, scene, head, name: str = "/avatar/mesh") -> None:
        faces = head.faces.detach().cpu().numpy().astype(np.int32)
        eye = eye_vertex_mask(head)
        eye_faces = eye[faces].all(1)
        self._parts = []  # (vertex ids, faces re-indexed, colour, node name)
        for part, mask, color in (("skin", ~eye_faces, SKIN_RGB), ("eyes", eye_faces, EYE_RGB)):
            f = faces[mask]
            if len(f) == 0:
                continue
            ids, local = np.unique(f, return_inverse=True)
            self._parts.append((ids, local.reshape(-1, 3).astype(np.int32), color, f"{name}/{part}"))
        self.scene = scene
        self._handles: list = []

    def update(self, vertices: Tensor, expression: Tensor | None = None, root: np.ndarray | None = None) -> SceneUpdate:
        # ``expression`` is unused: the mesh shows it through its vertices; ``root``: the viewer's
        # parent frame carries the rigid pose.
        v = vertices.detach().cpu().numpy().astype(np.float32)
        sent = messages = 0
        for k, (ids, faces, color, node) in enumerate(self._parts):
            pv = v[ids]
            if k < len(self._handles):
                if np.array_equal(self._handles[k].vertices, pv):
                    continue
                self._handles[k].vertices = pv
            else:
                self._handles.append(self.scene.add_mesh_simple(node, pv, faces, color=color, flat_shading=False))
                sent += faces.nbytes
            sent += pv.nbytes
            messages += 1
        return SceneUpdate(sent, messages)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class SplatScene:
    """Gaussians moved with the mesh by ``deform`` and shown as viser splats (fixed colours: the
    made-up Gaussians of :mod:`avatar.viewer.synthetic`; a trained representation is a
    :class:`RepresentationSplats`).

    Args:
        scene: ``server.scene``.
        deform: posed vertices ``[V, 3]`` (and optionally ``index``) -> ``(means, quats, scales)``.
        rest_vertices: ``[V, 3]`` the neutral mesh (to lay out the chunks).
        rgb, opacities: ``[N, 3]``, ``[N]`` static appearance in [0, 1].
        chunk_size: Gaussians per re-sendable chunk.
        parent_face, faces: ``[N]`` triangle of each Gaussian and the ``[F, 3]`` triangles, when
            ``deform(vertices, index)`` can evaluate a subset: an update then evaluates only the
            Gaussians on triangles whose vertices moved since the last update.
    """

    def __init__(self, scene, deform: Deform, rest_vertices: Tensor, rgb, opacities, chunk_size: int = 2048,
                 name: str = "/avatar/splats", parent_face: Tensor | None = None,
                 faces: Tensor | None = None) -> None:  # fmt: skip
        self.deform = deform
        rest_means = deform(rest_vertices)[0]
        self.splats = ChunkedSplats(scene, name, rest_means, rgb, opacities, chunk_size=chunk_size)
        self.parent_face, self.faces = parent_face, faces
        self._last: Tensor | None = None
        self.last_evaluated = 0

    @property
    def num_gaussians(self) -> int:
        return self.splats.num_gaussians

    def _moved(self, vertices: Tensor) -> Tensor | None:
        """Indices of Gaussians whose triangle moved, or None for all."""
        if self.parent_face is None or self.faces is None or self._last is None:
            return None
        moved_faces = (vertices != self._last).any(1)[self.faces].any(1)
        moved = moved_faces[self.parent_face]
        count = int(moved.sum())
        if count > 0.6 * moved.numel():
            return None
        return torch.nonzero(moved).squeeze(1)

    def update(self, vertices: Tensor, expression: Tensor | None = None, root: np.ndarray | None = None) -> SceneUpdate:
        """Move the Gaussians to ``vertices [V, 3]``. ``expression`` and ``root`` are unused (the
        mesh carries the expression; the viewer's parent frame the rigid pose)."""
        vertices = vertices.detach()
        index = self._moved(vertices)
        if index is None:
            means, quats, scales = self.deform(vertices)
            info = self.splats.update(means, quats, scales)
            self.last_evaluated = self.num_gaussians
        elif index.numel() == 0:
            return SceneUpdate(0, 0)
        else:
            means, quats, scales = self.deform(vertices, index)
            info = self.splats.update(means, quats, scales, index=index.numpy())
            self.last_evaluated = int(index.numel())
        self._last = vertices.clone()
        return SceneUpdate(info.bytes_sent, info.chunks_sent)

    def remove(self) -> None:
        self.splats.remove()


def _same_pose(last: tuple[Tensor, Tensor | None] | None, vertices: Tensor, expression: Tensor | None) -> bool:
    """Whether ``(vertices, expression)`` equal ``last`` (the previous update's): nothing to pose."""
    if last is None or not torch.equal(vertices, last[0]) or (expression is None) != (last[1] is None):
        return False
    return expression is None or torch.equal(expression, last[1])


def view_appearance(splats, viewmat: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """Colour ``[N, 3]`` in [0, 1] and opacity ``[N]`` of frame 0 of ``splats``
    (:class:`avatar.representations.Splats`) as our renderer draws them for the camera
    ``viewmat [4, 4]`` (world -> camera): SH evaluated along the camera's rays
    (``max(SH + 0.5, 0)``) and surface Gaussians facing away faded
    (:func:`~avatar.representations.base.facing_factor`). Without ``viewmat``: the view-independent
    colour (SH degree 0) and every Gaussian shown. What stays per pixel (the 0.3 px dilation, the
    order of blending) is the browser's."""
    from avatar.render._sh import spherical_harmonics
    from avatar.representations.base import facing_factor

    colors, means, opacities = splats.frame_colors(0), splats.means[0], splats.opacities
    vm = None if viewmat is None else torch.as_tensor(viewmat, dtype=means.dtype, device=means.device)
    if splats.sh_degree is None:
        rgb = colors
    elif vm is None:
        rgb = 0.5 + _SH_C0 * colors[:, 0]
    else:
        campos = torch.linalg.inv(vm)[:3, 3]  # as the rasterizer finds the rays' origin
        rgb = torch.clamp_min(spherical_harmonics(splats.sh_degree, means - campos, colors) + 0.5, 0.0)
    if vm is not None and splats.normals is not None:
        opacities = opacities * facing_factor(means, splats.normals[0], vm)
    return rgb.clamp(0, 1), opacities


class RepresentationSplats:
    """A trained representation drawn by the browser as splats (``avatar view --client-splats``):
    geometry from the representation's forward pass, colour and opacity by
    :func:`view_appearance` for the last view given to :meth:`bake_view` (a tab's camera once it
    holds still), or view-independent before any. The browser blends them itself, so this is close
    to, not equal to, what ``avatar render`` draws.

    Args:
        scene: ``server.scene``.
        representation: ``forward(vertices [1, V, 3], expression=...) -> Splats``.
        rest_vertices: ``[V, 3]`` the neutral mesh (lays out the chunks).
        chunk_size: Gaussians per re-sendable chunk.
    """

    def __init__(self, scene, representation, rest_vertices: Tensor, chunk_size: int = 2048,
                 name: str = "/avatar/splats") -> None:  # fmt: skip
        self.representation = representation
        with torch.no_grad():
            rest = representation(rest_vertices[None])
        rgb, opacities = view_appearance(rest)
        self.splats = ChunkedSplats(scene, name, rest.means[0], rgb.cpu(), opacities.detach().cpu(), chunk_size=chunk_size)
        self._current = None  # the Splats last drawn
        self._last: tuple[Tensor, Tensor | None] | None = None
        self._view: np.ndarray | None = None  # world -> camera of the baked view
        self._root = np.eye(4)
        self.last_evaluated = 0

    @property
    def num_gaussians(self) -> int:
        return self.splats.num_gaussians

    def update(self, vertices: Tensor, expression: Tensor | None = None, root: np.ndarray | None = None) -> SceneUpdate:
        """Pose the Gaussians (``vertices [V, 3]``, ``expression [1, E]``); ``root [4, 4]`` is the
        rigid pose the viewer's parent frame applies (used to bake the view in the head's frame)."""
        vertices = vertices.detach()
        expression = None if expression is None else expression.detach().reshape(1, -1)
        self._root = np.eye(4) if root is None else np.asarray(root, np.float64)
        if _same_pose(self._last, vertices, expression):  # the rigid pose alone moves the baked view
            return self._send() if self._view is not None else SceneUpdate(0, 0)
        with torch.no_grad():
            self._current = self.representation(vertices[None], expression=expression)
        self._last = (vertices.clone(), None if expression is None else expression.clone())
        self.last_evaluated = self.num_gaussians
        return self._send()

    def bake_view(self, viewmat: np.ndarray | None) -> SceneUpdate:
        """Colour and cull for the world -> camera ``viewmat [4, 4]`` from now on (``None``: none)."""
        self._view = None if viewmat is None else np.asarray(viewmat, np.float64)
        return self._send() if self._current is not None else SceneUpdate(0, 0)

    def _send(self) -> SceneUpdate:
        s = self._current
        view = None if self._view is None else self._view @ self._root
        rgb, opacities = view_appearance(s, view)
        info = self.splats.update(s.means[0], s.quats[0], s.scales[0], rgb=rgb.cpu(), opacities=opacities.detach().cpu())
        return SceneUpdate(info.bytes_sent, info.chunks_sent)

    def remove(self) -> None:
        self.splats.remove()


class RenderedSplats:
    """Gaussians rendered on the server for every browser tab (the viewer's default for an avatar):
    ``splats_of(vertices [V, 3], expression [1, E] | None) -> Splats`` (one frame) poses them, and
    :func:`avatar.representations.render_splats`, the function ``avatar render`` draws with,
    renders each tab's camera on ``device``; :class:`~avatar.viewer.stream.ViewStreamer` sends the
    images. The rigid pose (``root``) moves the camera instead of the Gaussians, as the viewer's
    parent frame moves browser-drawn content.

    Args:
        server: the ``viser.ViserServer``.
        splats_of: poses the Gaussians.
        device: where the Gaussians live and are rendered.
        background: RGB in [0, 1] behind the avatar (the bundle's, as ``avatar render`` uses).
        settings: resolution and timing of the stream.
    """

    renders_on_server = True

    def __init__(self, server, splats_of, device: torch.device, background=(1.0, 1.0, 1.0),
                 settings: StreamSettings = StreamSettings()) -> None:  # fmt: skip
        self.splats_of, self.device = splats_of, torch.device(device)
        self.background = torch.tensor(background, dtype=torch.float32, device=self.device)
        self._last: tuple[Tensor, Tensor | None] | None = None
        self._splats = None
        self.num_gaussians = 0
        self.stream = ViewStreamer(server, self.draw, settings)

    def update(self, vertices: Tensor, expression: Tensor | None = None, root: np.ndarray | None = None) -> SceneUpdate:
        """Pose the Gaussians and have every tab redrawn (``root [4, 4]``: the rigid head pose)."""
        vertices = vertices.detach().to(self.device)
        expression = None if expression is None else expression.detach().reshape(1, -1).to(self.device)
        if not _same_pose(self._last, vertices, expression):
            with torch.no_grad():
                self._splats = self.splats_of(vertices, expression)
            self._last = (vertices.clone(), None if expression is None else expression.clone())
            self.num_gaussians = self._splats.num_gaussians
        self.stream.set_frame((self._splats, np.eye(4) if root is None else np.asarray(root, np.float64)))
        return SceneUpdate(0, 1)

    def draw(self, frame, camera: ViewCamera) -> np.ndarray:
        """``frame`` (posed Gaussians, rigid pose) seen by ``camera``: ``[H, W, 3]`` uint8."""
        from avatar.representations.base import render_splats

        splats, root = frame
        cam = camera.moved_by(root)
        viewmat = torch.as_tensor(cam.viewmat, dtype=torch.float32, device=self.device)
        K = torch.as_tensor(cam.K, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            rgb, _, _ = render_splats(splats, viewmat, K, cam.width, cam.height, self.background)
        # quantised as avatar.io.write_image does, so a screenshot equals `avatar render`'s file
        return rgb[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).cpu().numpy()

    def render_client(self, client_id: int, width: int | None = None, height: int | None = None) -> np.ndarray:
        return self.stream.render_client(client_id, width, height)

    def remove(self) -> None:
        self.stream.close()


def splat_scene_from_representation(scene, representation, rest_vertices: Tensor, chunk_size: int = 2048) -> RepresentationSplats:
    """Browser-drawn splats of a trained representation (``avatar.representations``):
    :class:`RepresentationSplats`."""
    return RepresentationSplats(scene, representation, rest_vertices, chunk_size=chunk_size)
