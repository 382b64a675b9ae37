"""Photometric pose refinement (avatar.training.refine): the per-row Adam, rigid re-posing of
tracked vertices, a held-out pose error undone against a trained avatar, and refinement of the
training frames' poses inside train()."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar.representations import load_avatar
from avatar.training import StrategyConfig, evaluate, train
from avatar.training.data import load_clip
from avatar.training.frames import FrameRenderer
from avatar.training.refine import PoseCorrection, RowAdam, fit_pose_correction, refine_poses, repose_vertices
from avatar.training.synthetic import make_synthetic_clip
from avatar.training.trainer import latest_checkpoint, refine_held_out
from test_training import SIZE, _copy_clip, tiny


def test_row_adam_updates_only_the_given_rows_as_adam_would():
    g = torch.Generator().manual_seed(0)
    p = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)  # row 1 on its own, under torch's Adam
    opt, ref_opt = RowAdam({"p": p}, {"p": 0.1}), torch.optim.Adam([ref], lr=0.1, eps=1e-12)
    for i in range(6):
        grad = torch.randn(5, 3, generator=g, dtype=torch.float64)
        rows = torch.tensor([1, 3]) if i % 2 == 0 else torch.tensor([3, 4])
        p.grad = torch.zeros_like(p)
        p.grad[rows] = grad[rows]
        before = p.detach().clone()
        opt.step(rows)
        assert p.grad is None
        untouched = torch.ones(5, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(p.detach()[untouched], before[untouched])  # no stale momentum elsewhere
        if 1 in rows:
            ref.grad = grad[1:2].clone()
            ref_opt.step()
    torch.testing.assert_close(p.detach()[1:2], ref.detach(), rtol=1e-12, atol=1e-14)  # 3 steps, as Adam's 3
    assert opt.count.tolist() == [0, 3, 0, 6, 3] and p.detach()[[0, 2]].abs().max() == 0
    state = opt.state_dict()
    other = RowAdam({"p": p}, {"p": 0.1})
    other.load_state_dict(state)
    assert torch.equal(other.m["p"], opt.m["p"]) and torch.equal(other.count, opt.count)


def test_pose_correction_carries_a_systematic_error_to_frames_it_was_not_fitted_on():
    """A tracker that under-reads the yaw by 20 % and is 2 mm off in x, with no body in view: the
    correction fitted on the first 40 frames' errors (least squares, as the training loss would
    push it) undoes it on the last 20, whose yaw lies beyond the fitted range."""
    g = torch.Generator().manual_seed(0)
    n = 60
    yaw = torch.linspace(-0.2, 0.4, n)  # radians; the last 20 frames turn further than any before
    true = {"global_orient": torch.stack([0.02 * torch.randn(n, generator=g), yaw, 0.02 * torch.randn(n, generator=g)], 1),
            "transl": 0.01 * torch.randn(n, 3, generator=g), "body": torch.zeros(n, 3)}  # fmt: skip
    tracked = {k: v.clone() for k, v in true.items()}
    tracked["global_orient"][:, 1] *= 0.8
    tracked["transl"][:, 0] -= 0.002
    fit, rest = torch.arange(40), torch.arange(40, 60)
    model = PoseCorrection.for_clip(tracked, fit)
    assert model.keys == ["global_orient", "transl", "body"]
    assert all(torch.equal(v, torch.zeros(n, 3)) for v in model().values())  # starts at the tracked pose
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1500):
        out = model()
        loss = sum(((tracked[k] + out[k] - true[k])[fit] ** 2).sum() for k in out) * 1e3
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model()
    for k in ("global_orient", "transl"):
        before = (tracked[k] - true[k])[rest].abs().max()
        after = (tracked[k] + out[k] - true[k])[rest].abs().max()
        assert after < 0.05 * before, (k, float(before), float(after))
    assert out["body"].abs().max() < 1e-6  # an input that never varies drops out, and the body stays put
    assert float(model.penalty().detach()) > 0


def test_fitted_pose_correction_predicts_a_linear_tracker_error_on_other_frames():
    """The closed-form ridge fit: a 20 % yaw under-read and a 2 mm offset, seen on 40 frames,
    predicted on 20 beyond their yaw range (up to 3 deviations from their mean, then held); a
    constant input drops out; the ridge shrinks slopes,
    not the offset; extra inputs widen the features."""
    g = torch.Generator().manual_seed(4)
    n = 60
    yaw = torch.linspace(-0.2, 0.4, n)
    true = {"global_orient": torch.stack([0.02 * torch.randn(n, generator=g), yaw, torch.zeros(n)], 1),
            "transl": 0.01 * torch.randn(n, 3, generator=g), "body": torch.zeros(n, 3)}  # fmt: skip
    tracked = {k: v.clone() for k, v in true.items()}
    tracked["global_orient"][:, 1] *= 0.8
    tracked["transl"][:, 0] -= 0.002
    fit, rest = torch.arange(40), torch.arange(40, 60)
    refined = {k: torch.where((torch.arange(n) < 40)[:, None], true[k] - tracked[k], torch.full_like(true[k], 9.0))
               for k in true}  # rows outside `fit` are not read  # fmt: skip
    out = fit_pose_correction(tracked, refined, fit, ridge=1e-9)
    assert set(out) == {"global_orient", "transl", "body"} and out["transl"].shape == (n, 3)
    # Beyond the fit frames' yaw range, up to 3 standard deviations from their mean: predicted exactly.
    z = (tracked["global_orient"][:, 1] - tracked["global_orient"][fit, 1].mean()) / tracked["global_orient"][fit, 1].std(unbiased=False)
    near, far = rest[z[rest] <= 3.0], rest[z[rest] > 3.0]
    assert len(near) >= 5 and len(far) >= 3
    for k in ("global_orient", "transl"):
        torch.testing.assert_close(tracked[k][near] + out[k][near], true[k][near], rtol=0, atol=1e-6)
    # Further out the fit is not carried on: the yaw correction stays where 3 deviations put it.
    at_3sd = out["global_orient"][near[-1], 1] + (out["global_orient"][near[-1], 1] - out["global_orient"][near[-2], 1]) \
        * (3.0 - z[near[-1]]) / (z[near[-1]] - z[near[-2]])
    torch.testing.assert_close(out["global_orient"][far, 1], at_3sd.expand(len(far)), rtol=0, atol=1e-6)
    assert out["body"].abs().max() < 1e-9
    shrunk = fit_pose_correction(tracked, refined, fit, ridge=1e3)
    assert shrunk["global_orient"][:, 1].std() < 0.1 * out["global_orient"][:, 1].std()
    torch.testing.assert_close(shrunk["transl"][:, 0].mean(), torch.tensor(0.002), rtol=0, atol=1e-5)  # the offset stays
    tracked["expression"] = torch.rand(n, 52, generator=g)
    wide = fit_pose_correction(tracked, refined, fit, ridge=1.0, extra=("expression",))
    assert not torch.allclose(wide["global_orient"], fit_pose_correction(tracked, refined, fit, ridge=1.0)["global_orient"])


def test_repose_vertices_is_the_head_models_pose(anny_head64):
    g = torch.Generator().manual_seed(1)
    kw = {"expression": torch.rand(2, 52, generator=g, dtype=torch.float64) * 0.5,
          "jaw": torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.1}  # fmt: skip
    go0, t0 = torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.3, torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.1
    go1, t1 = go0 + 0.05 * torch.randn(2, 3, generator=g, dtype=torch.float64), t0 + 0.004
    v0 = anny_head64(global_orient=go0, transl=t0, **kw).vertices
    v1 = anny_head64(global_orient=go1, transl=t1, **kw).vertices
    torch.testing.assert_close(repose_vertices(v0, go0, t0, go1, t1), v1, rtol=0, atol=1e-12)
    assert (v1 - v0).abs().max() > 1e-3


def test_levenberg_marquardt_finds_a_blob_and_leaves_unseen_numbers_alone():
    """A toy render: a Gaussian blob whose image position is the x/y translation (in pixels /
    1000) and whose size grows with the rotation's z. Each frame's target is the blob at a known
    offset; the body motion is not drawn (a zero Jacobian column) and must stay where it was."""
    size, n = 32, 5
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")

    def blob(t: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:  # [B, 3], [B, 3] -> [B, H, W, 1]
        cx, cy, sigma = 16 + 1000 * t[:, 0], 16 + 1000 * t[:, 1], 4 + 20 * rot[:, 2]
        d2 = (xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2
        return torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))[..., None]

    truth_t = torch.tensor([[0.002 * i, -0.0015 * i, 0.0] for i in range(n)])
    truth_r = torch.tensor([[0.0, 0.0, 0.01 * i - 0.02] for i in range(n)])
    target_alpha = blob(truth_t, truth_r)
    deltas = {k: torch.zeros(n, 3) for k in ("global_orient", "transl", "body")}
    deltas["body"][:] = 0.5  # not drawn: must come back unchanged
    calls = []

    def render(d, rows):
        calls.append(len(rows))
        a = blob(d["transl"], d["global_orient"])
        return a.expand(-1, -1, -1, 3), a

    refine_poses(render, deltas, torch.arange(n), lambda r: (target_alpha[r].expand(-1, -1, -1, 3), target_alpha[r]),
                 iters=8, batch=2)  # fmt: skip
    torch.testing.assert_close(deltas["transl"][:, :2], truth_t[:, :2], atol=2e-5, rtol=0)  # 0.02 px
    torch.testing.assert_close(deltas["global_orient"][:, 2], truth_r[:, 2], atol=1e-4, rtol=0)
    assert (deltas["body"] == 0.5).all() and (deltas["global_orient"][:, :2] == 0).all()
    assert len(calls) == 3 * (1 + 3 * 9 + 8)  # per batch: start, 3 Jacobians of 9 probes, 8 trial steps


def _refine_poses_frozen(render, deltas, rows, target, iters=6, jacobian_every=3, batch=4, alpha_weight=0.1):
    """refine_poses' own Levenberg-Marquardt loop as it was before it moved to avatar.utils.optim
    (commit ed701dd), kept to check that the shared loop gives the same numbers."""
    keys = [k for k in ("global_orient", "transl", "body") if k in deltas]
    sizes = [deltas[k].shape[1] for k in keys]
    fd = torch.cat([torch.full((n,), 1e-3 if k == "global_orient" else 1e-4, dtype=torch.float64) for k, n in zip(keys, sizes)])
    probes = torch.diag(fd)
    for start in range(0, len(rows), batch):
        r = rows[start : start + batch]
        gt, matte = target(r)
        weight = (matte > 0.5).to(gt)
        scale_rgb, scale_alpha = gt[0].numel() ** -0.5, (alpha_weight / matte[0].numel()) ** 0.5

        def residuals(x):
            rgb, alpha = render({k: v.to(deltas[k]) for k, v in zip(keys, x.split(sizes, 1))}, r)
            return torch.cat([((rgb - gt) * weight).flatten(1) * scale_rgb, (alpha - matte).flatten(1) * scale_alpha], 1).double()

        init = rows[start - 1 : start].expand(len(r)) if start > 0 else r
        x = torch.cat([deltas[k][init] for k in keys], 1).double()
        with torch.no_grad():
            res = residuals(x)
            loss = res.square().sum(1)
            damping = torch.full_like(loss, 1e-2)
            for it in range(iters):
                if it % jacobian_every == 0:
                    jac = torch.stack([(residuals(x + probes[j]) - res) / fd[j] for j in range(len(fd))], 1)
                    hess = jac @ jac.transpose(1, 2)
                    diag = torch.diagonal(hess, dim1=1, dim2=2)
                    diag = diag + 1e-9 * diag.mean(1, keepdim=True) + 1e-30
                grad = (jac @ res[:, :, None])[..., 0]
                step = -torch.linalg.solve(hess + damping[:, None, None] * torch.diag_embed(diag), grad)
                res_new = residuals(x + step)
                loss_new = res_new.square().sum(1)
                better = loss_new < loss
                x = torch.where(better[:, None], x + step, x)
                res = torch.where(better[:, None], res_new, res)
                loss = torch.where(better, loss_new, loss)
                damping = torch.where(better, damping * 0.3, damping * 10)
            for k, v in zip(keys, x.split(sizes, 1)):
                deltas[k][r] = v.to(deltas[k])
    return deltas


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_refine_poses_gives_the_numbers_of_its_former_loop(dtype):
    """A toy render that every refined number moves (a blob: position, size and brightness from the
    pose, the body tilting it): the shared Levenberg-Marquardt loop reproduces the former one to the bit."""
    size, n = 24, 7
    yy, xx = torch.meshgrid(torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij")

    def draw(d, rows):
        t, rot, body = d["transl"], d["global_orient"], d["body"]
        cx, cy = 12 + 900 * t[:, 0] + 30 * body[:, 0], 12 + 900 * t[:, 1] + 20 * rot[:, 0]
        sigma = 3.5 + 15 * rot[:, 2] + 200 * t[:, 2]
        d2 = (xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2 * (1 + body[:, 1, None, None])
        a = (0.9 + rot[:, 1, None, None]) * torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
        return torch.stack([a, a * (1 + body[:, 2, None, None]), a * 0.5], -1), a[..., None]

    g = torch.Generator().manual_seed(3)
    truth = {k: 0.002 * torch.randn(n, 3, generator=g, dtype=dtype) for k in ("global_orient", "transl", "body")}
    with torch.no_grad():
        rgb, alpha = draw(truth, torch.arange(n))

    def target(r):
        return rgb[r], alpha[r]

    start = {k: torch.zeros(n, 3, dtype=dtype) for k in truth}
    rows = torch.tensor([0, 1, 2, 4, 5, 6])
    ours = refine_poses(draw, {k: v.clone() for k, v in start.items()}, rows, target, iters=7, batch=4)
    frozen = _refine_poses_frozen(draw, {k: v.clone() for k, v in start.items()}, rows, target, iters=7, batch=4)
    for k in truth:
        assert torch.equal(ours[k], frozen[k]), (k, float((ours[k] - frozen[k]).abs().max()))
    with torch.no_grad():  # a toy worth the check: the refinement brings the drawing much closer
        err0, err1 = ((draw(d, rows)[0] - rgb[rows]).square().sum() for d in ({k: v[rows] for k, v in start.items()},
                                                                            {k: v[rows] for k, v in ours.items()}))  # fmt: skip
    assert err1 < 0.1 * err0, (float(err0), float(err1))
    assert all(ours[k][3].abs().max() == 0 for k in ours)  # not in rows


@pytest.fixture(scope="module")
def trained(anny_head, tmp_path_factory):
    """A small avatar trained on a synthetic clip whose tracking is exact."""
    out = make_synthetic_clip(tmp_path_factory.mktemp("refine"), anny_head, num_frames=12, size=SIZE)
    train(out, tiny(steps=60, checkpoint_every=1000, eval_refine_iters=0, strategy=StrategyConfig(enabled=False)), progress=False)
    return out


def test_held_out_pose_error_is_undone(trained):
    """Held-out frames drawn with a pose off by 2.3 degrees / 3 mm: refining against the avatar
    (fixed) raises their PSNR against the real frames, and against frames the avatar itself drew
    at the true pose (where the photometric optimum is the true pose) it finds that pose."""
    av = load_avatar(trained)
    clip = load_clip(trained, SIZE, 0.15)
    bg = torch.ones(3)
    rows = clip.test_ids
    truth = {k: clip.params[k].clone() for k in ("global_orient", "transl")}
    for k, e in {"global_orient": [0.03, -0.025, 0.01], "transl": [0.003, -0.002, 0.0]}.items():
        clip.params[k][rows] += torch.tensor(e)
    trainable = [n for n, p in av.representation.named_parameters() if p.requires_grad]

    def refined_psnr() -> tuple[dict, float]:
        deltas = refine_held_out(av.representation, frames, rows, iters=8)
        return deltas, evaluate(av.representation, frames, rows, deltas=deltas)["psnr"]

    frames = FrameRenderer(av.head, clip, av.shape, bg)
    off = evaluate(av.representation, frames, rows)["psnr"]
    deltas, fixed = refined_psnr()
    assert fixed > off + 2.0, (off, fixed)
    assert all(deltas[k][clip.train_ids].abs().max() == 0 for k in deltas)  # only the given rows move
    # The avatar was held fixed and is trainable again afterwards.
    assert [n for n, p in av.representation.named_parameters() if p.requires_grad] == trainable != []

    with torch.no_grad():
        drawn, alpha = av.render({**{k: v[rows] for k, v in clip.params.items()}, **{k: v[rows] for k, v in truth.items()}},
                                 clip.viewmat, clip.Ks[rows], SIZE, SIZE)  # fmt: skip
    # Frame and matte such that the target (frame over the background by the matte) is the drawing.
    colour = ((drawn - (1 - alpha)) / alpha.clamp_min(1e-3)).clamp(0, 1)
    clip.images, clip.mattes = clip.images[:], clip.mattes[:]  # in memory: the cache is read-only
    clip.images[rows] = (colour.numpy() * 255).round().astype(np.uint8)
    clip.mattes[rows] = (alpha[..., 0].numpy() * 255).round().astype(np.uint8)
    deltas, _ = refined_psnr()

    def head_error(pose: dict[str, torch.Tensor]) -> float:
        """Mean vertex distance (m) from the true head: a rotation about the model's origin and a
        translation partly stand in for each other, the vertices do not."""
        rest = {k: v[rows] for k, v in clip.params.items() if k not in truth}
        return float((av.vertices({**rest, **{k: pose[k][rows] for k in truth}})
                      - av.vertices({**rest, **{k: v[rows] for k, v in truth.items()}})).norm(dim=-1).mean())  # fmt: skip

    before, after = head_error(clip.params), head_error({k: clip.params[k] + deltas[k] for k in truth})
    # Measured: 6.1 -> 0.02 mm (a pixel is ~5 mm); the Adam steps used before reached 0.7 mm.
    assert after < 0.05 * before and after < 3e-4, (before, after)


def test_training_refines_the_training_poses_only(trained, tmp_path):
    out = _copy_clip(trained, tmp_path / "run")
    cfg = tiny(steps=30, checkpoint_every=10, refine_pose=True, correct_pose=False, refine_from=0.2, eval_refine_iters=3,
               strategy=StrategyConfig(enabled=False))  # fmt: skip
    steps_run = []

    def stop_at_15(step, _):
        if step == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(out, cfg, progress=False, on_step=stop_at_15)
    _, ck = latest_checkpoint(out / "checkpoints")
    assert ck["step"] == 10 and set(ck["delta_optimizer"]["m"]) == {"global_orient", "transl", "body"}
    assert ck["delta_optimizer"]["count"].sum() > 0  # refined from step 6 (0.2 x 30)
    report = train(out, cfg, progress=False, on_step=lambda s, _: steps_run.append(s))
    assert steps_run == list(range(11, 31)) and report["resumed_from"] == 10
    av = load_avatar(out)
    _, ck = latest_checkpoint(out / "checkpoints")
    with np.load(out / "tracking.npz") as z:
        tracked = {k: z[k] for k in ("global_orient", "transl")}
    for k in ("global_orient", "transl"):
        trained_delta = ck["deltas"][k].numpy()
        assert np.abs(trained_delta[:10]).max() > 0 and np.abs(trained_delta[10:]).max() == 0, k  # held-out rows untouched
        # The bundle's performance: training rows as trained, held-out rows refined at evaluation.
        delta = av.performance[k].numpy() - tracked[k]
        np.testing.assert_allclose(delta[:10], trained_delta[:10], atol=1e-7)
        assert np.abs(delta[10:]).max() > 0, k
    assert np.degrees(np.abs(av.performance["global_orient"].numpy() - tracked["global_orient"]).max()) < 3.0
    refined = report["held_out_refined_pose"]
    assert refined is not None and np.isfinite(refined["psnr"]) and len(refined["psnr_per_frame"]) == 2
    held = av.performance["global_orient"].numpy()[10:] - tracked["global_orient"][10:]
    assert refined["rotation_deg_median"] == pytest.approx(np.median(np.degrees(np.linalg.norm(held, axis=1))), rel=1e-4)
    held_perf = {k: v[10:] for k, v in av.performance.items()}
    with torch.no_grad():
        shift = (av.vertices(held_perf) - av.vertices({**held_perf, **{k: torch.as_tensor(tracked[k][10:]) for k in tracked}}))
    assert refined["head_shift_mm_median"] == pytest.approx(float(shift.norm(dim=-1).mean(-1).mean()) * 1000, rel=1e-3)


def test_learnt_pose_correction_resumes_exactly_and_moves_the_held_out_frames(trained, tmp_path):
    """``correct_pose``: the correction and its optimiser travel in the checkpoints (an interrupted
    and resumed run ends where an uninterrupted one does), the held-out frames are scored and
    stored through it, and the report keeps the figure without it."""
    cfg = tiny(steps=20, checkpoint_every=10, correct_pose=True, lr_pose_model=1e-2, refine_from=0.2, pose_fit_frames=0,
               eval_refine_iters=0, strategy=StrategyConfig(enabled=False))  # fmt: skip
    whole = _copy_clip(trained, tmp_path / "whole")
    report = train(whole, cfg, progress=False)
    parted = _copy_clip(trained, tmp_path / "parted")

    def stop_at_15(step, _):
        if step == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(parted, cfg, progress=False, on_step=stop_at_15)
    assert latest_checkpoint(parted / "checkpoints")[1]["pose_model_keys"] == ["global_orient", "transl", "body"]
    resumed = train(parted, cfg, progress=False)
    assert resumed["resumed_from"] == 10
    ck_whole, ck_parted = (latest_checkpoint(d / "checkpoints")[1] for d in (whole, parted))
    for k, v in ck_whole["pose_model"].items():
        torch.testing.assert_close(ck_parted["pose_model"][k], v, rtol=0, atol=0)
    assert ck_whole["pose_model"]["weight"].abs().max() > 0
    assert resumed["held_out"]["psnr"] == report["held_out"]["psnr"]

    # The held-out rows of the bundle's performance: tracked + the correction (no per-frame delta there).
    with torch.no_grad():
        correction = PoseCorrection.from_state(ck_whole["pose_model_keys"], ck_whole["pose_model"])()
    av = load_avatar(whole)
    with np.load(whole / "tracking.npz") as z:
        for k in ("global_orient", "transl"):
            held = av.performance[k].numpy()[10:] - z[k][10:]
            np.testing.assert_allclose(held, correction[k].numpy()[10:], atol=1e-7)
            assert np.abs(held).max() > 0, k
    other = report["held_out_uncorrected_pose"]
    assert np.isfinite(other["psnr"]) and other["psnr"] != report["held_out"]["psnr"]
    assert other["correction"]["rotation_deg_median"] > 0 and report["pose_fit"] is None


def test_fitted_pose_correction_poses_the_held_out_frames_and_leaves_the_training_frames(trained, tmp_path):
    """``pose_fit_frames``: after training, the held-out frames are scored and stored through the
    ridge fit to refined training poses; training frames keep the learnt correction and their
    per-frame refinements; the report keeps the learnt correction's figure beside it."""
    cfg = tiny(steps=20, checkpoint_every=10, refine_pose=True, correct_pose=True, lr_pose_model=1e-2, refine_from=0.2, pose_fit_frames=8,
               eval_refine_iters=0, strategy=StrategyConfig(enabled=False))  # fmt: skip
    out = _copy_clip(trained, tmp_path / "fit")
    report = train(out, cfg, progress=False)
    fit = report["pose_fit"]
    assert fit["frames"] == 8 and fit["ridge"] == cfg.pose_fit_ridge
    learnt = fit["held_out_learnt_correction"]
    assert np.isfinite(learnt["psnr"]) and learnt["psnr"] != report["held_out"]["psnr"]
    ck = latest_checkpoint(out / "checkpoints")[1]
    with torch.no_grad():
        correction = PoseCorrection.from_state(ck["pose_model_keys"], ck["pose_model"])()
    av = load_avatar(out)
    with np.load(out / "tracking.npz") as z:
        for k in ("global_orient", "transl"):
            held = av.performance[k].numpy()[10:] - z[k][10:]
            np.testing.assert_allclose(held, np.asarray(fit["held_out_correction"][k]), atol=1e-7)
            assert np.abs(held - correction[k].numpy()[10:]).max() > 1e-6, k  # not the learnt one
            trained_rows = av.performance[k].numpy()[:10] - z[k][:10]
            np.testing.assert_allclose(trained_rows, (correction[k] + ck["deltas"][k]).numpy()[:10], atol=1e-6)
