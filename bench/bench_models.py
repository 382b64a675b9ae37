"""Head-model speed: forward+backward time of AnnyHead vs anny's own module, same process.

    python bench/bench_models.py [--batches 1 64 512] [--repeats 20]

Two AnnyHead workloads are timed: "tracking" (one identity shared by the batch, per-sample
expression + jaw/neck/eyes + global pose: what the fitting stage evaluates) and "all per-sample"
(identity per sample too). anny's module is timed on the same parameters (float64 is its
native dtype; we time it in float32 too when it runs in float32). Prints ms per call and ratios.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from avatar.models.anny_head import ARKIT_52, PHENOTYPES, _TO_OURS, AnnyHead, make_reference_anny
from avatar.models.rotations import axis_angle_to_matrix


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    # Best of the repeats: on a shared machine the minimum is the least disturbed estimate.
    return min(times) * 1e3


def landmark_model(model: AnnyHead) -> AnnyHead:
    """The fitting stage's workload: only the triangles carrying the 478 landmarks. Until the
    shipped embedding exists, 478 random triangles of the front of the face stand in for it."""
    if model.landmark_faces.numel():
        return model.submesh(model.landmark_faces)
    g = torch.Generator().manual_seed(0)
    centre = model().vertices[0][model.faces].mean(1)
    front = torch.nonzero((centre[:, 2] > 0.05) & (centre[:, 1] > 0.05)).squeeze(1)
    faces = front[torch.randperm(front.numel(), generator=g)[:478]]
    m = copy.deepcopy(model)
    m.set_landmark_embedding(faces, torch.full((478, 3), 1.0 / 3.0))
    return m.submesh(faces)


def ours_step(model: AnnyHead, b: int, shared_identity: bool):
    g = torch.Generator().manual_seed(0)
    dt = model.dtype
    shape = (0.2 * torch.randn(1 if shared_identity else b, model.num_shape, generator=g, dtype=dt)).requires_grad_(True)
    params = dict(
        expression=torch.rand(b, 52, generator=g, dtype=dt).requires_grad_(True),
        jaw=(0.1 * torch.randn(b, 3, generator=g, dtype=dt)).requires_grad_(True),
        neck=(0.1 * torch.randn(b, 3, generator=g, dtype=dt)).requires_grad_(True),
        eyes=(0.1 * torch.randn(b, 2, 3, generator=g, dtype=dt)).requires_grad_(True),
        global_orient=(0.1 * torch.randn(b, 3, generator=g, dtype=dt)).requires_grad_(True),
        transl=torch.zeros(b, 3, dtype=dt).requires_grad_(True),
    )

    def step():
        out = model(shape=shape, **params)
        out.vertices.square().sum().backward()

    return step


def anny_step(ref, b: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    c = torch.as_tensor(_TO_OURS, dtype=dtype)
    pheno = {p: torch.rand(b, generator=g, dtype=dtype).requires_grad_(True) for p in PHENOTYPES}
    facial = torch.rand(b, 52, generator=g, dtype=dtype).requires_grad_(True)
    rot = {bone: (0.1 * torch.randn(b, 3, generator=g, dtype=dtype)).requires_grad_(True)
           for bone in ["neck01", "neck02", "neck03", "head", "jaw", "eye.L", "eye.R"]}

    def step():
        pose = {}
        for bone, aa in rot.items():
            d = torch.eye(4, dtype=dtype).repeat(b, 1, 1)
            d[:, :3, :3] = c.T @ axis_angle_to_matrix(aa) @ c
            pose[bone] = d
        out = ref(pose_parameters=pose, phenotype_kwargs=pheno, facial_actions=facial)
        out["vertices"].square().sum().backward()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    t = time.perf_counter()
    ours = AnnyHead.load()
    print(f"AnnyHead.load() {time.perf_counter() - t:.2f} s (from the user cache)")
    ref = make_reference_anny()
    print(f"anny module: {ref.dtype}, skinning {ref._skinning_method.__module__}.{ref._skinning_method.__name__}")
    lm = landmark_model(ours)
    print(f"landmark submesh: {lm.num_vertices} of {ours.num_vertices} vertices")
    print("best-of-repeats ms per forward+backward (loss = sum of squared vertex positions)")
    print(f"{'batch':>6} {'full, shared id':>16} {'full, per-sample id':>20} {'landmarks only':>15} "
          f"{'anny module':>12} {'anny/ours(full)':>16}")
    for b in args.batches:
        reps = max(3, args.repeats if b <= 64 else args.repeats // 4)
        t_track = timeit(ours_step(ours, b, True), reps)
        t_full = timeit(ours_step(ours, b, False), reps)
        t_lm = timeit(ours_step(lm, b, True), reps)
        t_anny = timeit(anny_step(ref, b, ref.dtype), max(3, reps // 4))
        print(f"{b:>6} {t_track:>16.2f} {t_full:>20.2f} {t_lm:>15.2f} {t_anny:>12.1f} {t_anny / t_full:>15.1f}x")
    print("goal: batch-64 forward+backward <= 10 ms")


if __name__ == "__main__":
    main()
