"""Build AnnyHead's 478-landmark (MediaPipe FaceMesh + iris) embedding and write
``assets/landmarks/anny_head_478.npz``. Reproducible: deterministic renders + FaceMesh on CPU.

    python assets/landmarks/make_anny_head_478.py [--out PATH] [--debug-dir DIR]

See :mod:`avatar.render.landmark_embedding` for the procedure and assets/landmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np

from avatar.models.anny_head import AnnyHead
from avatar.models.landmark_embedding import EMBEDDING_VERSION
from avatar.render.landmark_embedding import DEFAULT_VIEWS, build_landmark_embedding
from avatar.utils.files import atomic_path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "anny_head_478.npz")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--debug-dir", type=Path, default=None, help="write the renders with FaceMesh's landmarks")
    args = ap.parse_args()

    head = AnnyHead.load(landmarks=False)
    faces, bary, report = build_landmark_embedding(head, size=args.size, views=DEFAULT_VIEWS, debug_dir=args.debug_dir)
    views = np.array([[v["yaw"], v["pitch"]] for v in report["views"]])
    summary = dict(
        views=[{k: v[k] for k in ("yaw", "pitch", "found", "score", "residual_mesh_px", "residual_iris_px", "residual_max_px") if k in v}
               for v in report["views"]],
        pixels_per_interocular_frontal=report["pixels_per_iod_frontal"],
        mean_reprojection_cost_px=float(report["reprojection_cost_px"].mean()),
        views_per_landmark_min=int(report["views_per_landmark"].min()),
        symmetry_median_mm=float(np.median(report["symmetry_m"]) * 1000),
        symmetry_max_mm=float(report["symmetry_m"].max() * 1000),
    )
    with atomic_path(args.out) as tmp:
        np.savez(
            tmp,
            faces=faces.astype(np.int64),
            bary=bary.astype(np.float64),
            views=views,
            view_scores=np.array([v["score"] for v in report["views"]]),
            anny_version=np.array(version("anny")),
            avatar_version=np.array(version("avatar")),
            embedding_version=np.int64(EMBEDDING_VERSION),
            size=np.int64(args.size),
            num_vertices=np.int64(head.num_vertices),
            num_faces=np.int64(head.faces.shape[0]),
            summary=np.array(json.dumps(summary)),
        )
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
