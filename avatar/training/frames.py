"""One frame renderer: clip rows (+ per-frame refinements) -> head parameters -> vertices -> the
representation's splats -> image. Training, evaluation, pose refinement and seeding all draw
frames through it, so the chain is written once.

>>> frames = FrameRenderer(head, clip, clip.shape, torch.ones(3))          # doctest: +SKIP
>>> rgb, alpha, metas = frames.render(rep, rows=[0, 5])                    # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.io.npy_rows import NpyRows
from avatar.representations import Representation, render_splats
from avatar.representations.geometry import params_pose
from avatar.models.base import FRAME_PARAMS
from avatar.representations.base import BODY
from avatar.training.data import Clip
from avatar.training.refine import apply_deltas, repose_vertices

Rows = Sequence[int] | np.ndarray | Tensor


def _cpu_rows(rows: Rows) -> Tensor:
    """``rows`` as a CPU long tensor (the clip's arrays live on the CPU)."""
    return torch.as_tensor(np.asarray(rows.cpu() if isinstance(rows, Tensor) else rows), dtype=torch.long)


@dataclass
class FrameRenderer:
    """Draws frames of ``clip`` with ``head`` (identity ``shape``) over ``background``.

    ``fixed_verts`` (``[N, V, 3]``, every frame's tracked vertices) is set when only the rigid
    pose is refined: a refined frame is then the tracked head moved rigidly, not evaluated again.
    Kept in memory, or in a file read per batch (:meth:`pose_fixed_vertices` with ``file``): 54 MB
    per 1,000 frames of AnnyHead would otherwise grow with the clip.
    ``options``: the rasterizer's :class:`~avatar.render.RasterOptions` (None: its defaults).
    """

    head: Any
    clip: Clip
    shape: Tensor  # [S] on the run's device
    background: Tensor  # [3] on the run's device
    options: Any = None
    fixed_verts: Tensor | NpyRows | None = None

    @property
    def device(self) -> torch.device:
        return self.background.device

    def params(self, rows: Rows, deltas: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The head parameters of ``rows`` (refined by ``deltas``: name -> ``[N, D]``, every
        frame's) and, when tracked, the body motion."""
        rows_t = _cpu_rows(rows)
        out = {k: self.clip.params[k][rows_t].to(self.device) for k in (*FRAME_PARAMS, BODY) if k in self.clip.params}
        return apply_deltas(out, deltas, rows_t.to(self.device)) if deltas else out

    def head_vertices(self, params: dict[str, Tensor]) -> Tensor:
        """``[B, V, 3]`` vertices of the head model at ``params`` (evaluated)."""
        return self.head(shape=self.shape[None], **{k: v for k, v in params.items() if k in FRAME_PARAMS}).vertices

    def vertices(self, rows: Rows, params: dict[str, Tensor], repose: bool = True) -> Tensor:
        """``[B, V, 3]`` vertices of ``rows`` at ``params`` (:meth:`params`): the tracked ones moved
        rigidly to the refined pose when ``fixed_verts`` is set (as tracked with ``repose=False``),
        else the head model evaluated."""
        if self.fixed_verts is None:
            return self.head_vertices(params)
        r = _cpu_rows(rows)
        fixed = self.fixed_verts
        verts = torch.from_numpy(fixed[r.numpy()]).to(self.device) if isinstance(fixed, NpyRows) else fixed[r.to(fixed.device)]
        if not repose:
            return verts
        return repose_vertices(verts, self.clip.params["global_orient"][r], self.clip.params["transl"][r],
                               params["global_orient"], params["transl"])  # fmt: skip

    @torch.no_grad()
    def pose_fixed_vertices(self, rows: Rows | None = None, chunk: int = 64, file: Path | None = None) -> Tensor | NpyRows:
        """Evaluate the tracked vertices of ``rows`` (all frames by default), ``chunk`` at a time,
        and keep them as ``fixed_verts`` (rows not given stay zero): in memory, or written to
        ``file`` (a ``.npy``, replaced) and read from it per batch. Returns them."""
        n = len(self.clip.Ks)
        rows = np.arange(n) if rows is None else np.asarray(rows)
        chunks = np.array_split(rows, max(1, len(rows) // chunk))
        if file is not None:
            dtype = torch.empty(0, dtype=self.shape.dtype).numpy().dtype
            self.fixed_verts = NpyRows.create(file, (n, self.head.num_vertices, 3), dtype)
            for c in chunks:
                for r, v in zip(c, self.head_vertices(self.params(c)).cpu().numpy()):
                    self.fixed_verts[int(r)] = v
            return self.fixed_verts
        if len(rows) == n:
            self.fixed_verts = torch.cat([self.head_vertices(self.params(c)) for c in chunks])
            return self.fixed_verts
        self.fixed_verts = torch.zeros(n, self.head.num_vertices, 3, device=self.device, dtype=self.shape.dtype)
        for c in chunks:
            self.fixed_verts[torch.as_tensor(c, device=self.device)] = self.head_vertices(self.params(c))
        return self.fixed_verts

    def splats(self, rep: Representation, verts: Tensor, params: dict[str, Tensor], sh_degree: int | None = None,
               local: Any = None) -> Any:  # fmt: skip
        """The representation posed for the frames of ``params``; ``local``: their
        :meth:`~avatar.representations.MeshGaussians.local_state`, when already computed."""
        extra = {} if local is None else {"local": local}
        return rep(verts, sh_degree=sh_degree, head_pose=params_pose(params), body=params.get(BODY),
                   expression=params.get("expression"), **extra)  # fmt: skip

    def draw(self, rep: Representation, rows: Rows, params: dict[str, Tensor], verts: Tensor, sh_degree: int | None = None,
             local: Any = None) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:  # fmt: skip
        """``(rgb [B, H, W, 3], alpha [B, H, W, 1], metas)`` of ``rep`` posed by ``params``/``verts``."""
        r = _cpu_rows(rows)
        return render_splats(self.splats(rep, verts, params, sh_degree, local), self.clip.viewmat.to(self.device),
                             self.clip.Ks[r].to(self.device), *self.clip.size, self.background, self.options)  # fmt: skip

    def render(self, rep: Representation, rows: Rows, deltas: dict[str, Tensor] | None = None,
               sh_degree: int | None = None) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:  # fmt: skip
        """Frames ``rows`` (refined by ``deltas``) drawn with ``rep``: params -> vertices -> splats -> image."""
        params = self.params(rows, deltas)
        return self.draw(rep, rows, params, self.vertices(rows, params), sh_degree)

    def target(self, rows: Rows) -> tuple[Tensor, Tensor]:
        """``(ground truth [B, H, W, 3] composited on the background, matte [B, H, W, 1])``."""
        return self.clip.target(_cpu_rows(rows).numpy(), self.background, self.device)
