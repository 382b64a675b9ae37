"""OBJ + MTL + texture PNG for a static (posed) head mesh, with UVs and normals.

OBJ indexes positions, UVs and normals separately, so seams need no vertex splitting: positions
and normals are per model vertex, UVs per UV entry, and each face corner names both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatar.errors import AvatarError
from avatar.export.meshdata import PART_NAMES, evaluate, face_parts, safe_normals
from avatar.models.base import HeadModel
from avatar.utils.files import atomic_path, atomic_write

__all__ = ["ObjInfo", "export_obj"]


@dataclass(frozen=True)
class ObjInfo:
    obj: Path
    mtl: Path
    texture: Path | None
    num_vertices: int
    num_faces: int


def export_obj(
    path: str | Path,
    head: HeadModel,
    *,
    params: dict[str, torch.Tensor | np.ndarray] | None = None,
    texture: np.ndarray | None = None,
    texture_size: int = 1024,
) -> ObjInfo:
    """Write ``path`` (.obj), ``<stem>.mtl`` and ``<stem>.png`` beside it.

    Args:
        path: the ``.obj`` file.
        head: the head model.
        params: model parameters for one pose, each ``[1, ...]`` (``shape``, ``expression``, ``jaw``,
            ``neck``, ``eyes``, ``global_orient``, ``transl``); the neutral head when ``None``.
        texture: ``[H, W, 3]`` base colour in the model's UV atlas; a default painted texture
            when ``None`` (models without UVs get a plain material).
        texture_size: size of the default texture.
    """
    from avatar.export.texture import default_texture, encode_image

    path = Path(path)
    if path.suffix.lower() != ".obj":
        raise AvatarError(f"{path}: an OBJ export must end in .obj")
    tparams = {}
    for k, v in (params or {}).items():
        t = torch.as_tensor(np.asarray(v), dtype=head.dtype, device=head.device)
        tparams[k] = t[None] if (k != "eyes" and t.ndim == 1) or (k == "eyes" and t.ndim == 2) else t
    verts, _, _ = evaluate(head, **tparams)
    if verts.shape[0] != 1:
        raise AvatarError(f"export_obj writes one pose; got parameters for {verts.shape[0]}")
    v = verts[0]
    faces = head.faces.cpu().numpy().astype(np.int64)
    normals = safe_normals(v, faces)
    uvs = head.uvs.double().cpu().numpy()
    has_uv = len(uvs) > 0
    parts = face_parts(head)
    mtl_path = path.with_suffix(".mtl")
    tex_path = path.with_suffix(".png") if has_uv else None

    lines = [f"# avatar export: {head.name} head, {len(v)} vertices, {len(faces)} triangles\n",
             f"mtllib {mtl_path.name}\n"]
    lines += [f"v {x:.7f} {y:.7f} {z:.7f}\n" for x, y, z in v]
    if has_uv:
        lines += [f"vt {a:.7f} {b:.7f}\n" for a, b in uvs]
    lines += [f"vn {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in normals]
    uv_faces = head.uv_faces.cpu().numpy().astype(np.int64) if has_uv else None
    for p, part in enumerate(PART_NAMES):
        ids = np.nonzero(parts == p)[0]
        if len(ids) == 0:
            continue
        lines += [f"g {part}\n", f"usemtl {part}\n"]
        for fi in ids:
            f1 = faces[fi] + 1
            if has_uv:
                t1 = uv_faces[fi] + 1
                lines.append("f " + " ".join(f"{a}/{b}/{a}" for a, b in zip(f1, t1)) + "\n")
            else:
                lines.append("f " + " ".join(f"{a}//{a}" for a in f1) + "\n")

    mtl = []
    for p, part in enumerate(PART_NAMES):
        if not (parts == p).any():
            continue
        ns = {"skin": 40, "eyes": 300, "mouth": 120}[part]
        mtl += [f"newmtl {part}\n", "Ka 0 0 0\n", "Kd 1 1 1\n" if has_uv else "Kd 0.8 0.62 0.52\n",
                "Ks 0.1 0.1 0.1\n", f"Ns {ns}\n", "d 1\n", "illum 2\n"]
        if has_uv:
            mtl.append(f"map_Kd {tex_path.name}\n")
        mtl.append("\n")

    if has_uv:
        if texture is None:
            texture = default_texture(head, texture_size, parts)
        with atomic_path(tex_path) as tmp:
            tmp.write_bytes(encode_image(texture, "png"))
    elif texture is not None:
        raise AvatarError(f"the {head.name} head model has no UVs; a texture cannot be applied (for FLAME, pass its texture-space file: --uv-path FILE)")
    with atomic_write(mtl_path, "w") as f:
        f.writelines(mtl)
    # The .obj last: it names the others, so it only appears once they exist.
    with atomic_write(path, "w") as f:
        f.writelines(lines)
    return ObjInfo(obj=path, mtl=mtl_path, texture=tex_path, num_vertices=len(v), num_faces=len(faces))
