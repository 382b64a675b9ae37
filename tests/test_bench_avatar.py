"""bench/bench_avatar.py's ceiling: the PSNR once one region's error is gone, from the PSNR and that
region's share of the squared error, against the PSNR measured on images with that region fixed; its
lever table and the defaults rule."""
from __future__ import annotations

import json
import math

import numpy as np


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def test_ceiling_matches_the_psnr_with_that_region_fixed(load_bench):
    bench = load_bench("bench_avatar")
    rng = np.random.default_rng(0)
    target = rng.random((64, 64, 3))
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1)
    pred[:20] = np.clip(target[:20] + rng.normal(0, 0.2, (20, 64, 3)), 0, 1)  # a worse region, like hair
    sq = (pred - target) ** 2
    share = float(sq[:20].sum() / sq.sum())
    fixed = pred.copy()
    fixed[:20] = target[:20]
    assert 0.5 < share < 1.0
    assert abs(bench.ceiling(_psnr(pred, target), share) - _psnr(fixed, target)) < 0.01
    assert bench.ceiling(20.0, 1.0) == float("inf")
    assert bench.ceiling(20.0, 0.0) == 20.0


def _report(fg: float, as_tracked: float, learnt: float, refined: float) -> dict:
    held = {"psnr": fg, "psnr_full": fg + 1, "ssim": 0.9}
    return {"frames": {"train": 80, "held_out": 15}, "held_out": held, "num_gaussians": 1000, "seconds_total": 1.0,
            "held_out_uncorrected_pose": {"psnr": as_tracked}, "held_out_refined_pose": {"psnr": refined},
            "pose_fit": {"held_out_learnt_correction": {"psnr": learnt}}, "train_sample": {"psnr": 30.0}}


def test_lever_verdict_follows_the_defaults_rule(load_bench, tmp_path, capsys):
    """A lever stays on only if it helps on most clips and costs none more than 0.5 dB."""
    bench = load_bench("bench_avatar")
    assert bench.verdict([0.2, 0.1, -0.3]).endswith("keep on")
    assert bench.verdict([0.2, 0.1, -0.6]).endswith("off (fails the rule)")  # one clip pays too much
    assert bench.verdict([0.2, -0.1, -0.1]).endswith("off (fails the rule)")  # helps on too few
    for work, shift in (("base", 0.0), ("off", -1.0)):
        for i, clip in enumerate(("a", "b")):
            (tmp_path / work / clip).mkdir(parents=True)
            report = _report(25.0 + i + shift, 24.0 + i, 24.5 + i, 27.0 + i)
            (tmp_path / work / clip / "report.json").write_text(json.dumps(report))
    bench.print_table([tmp_path / "base", tmp_path / "off"])
    out = capsys.readouterr().out
    assert "| a | 80 / 15 | 25.0 | 26.0 | 24.0 | 24.5 | 27.0 | 30.0 |" in out
    assert "the drawn correction against none (same avatars): helps on 2/2 clips, mean +1.00 dB" in out
    assert "| b | 26.0 | 25.0 | -1.00 |" in out and "baseline (lever as in WORK) minus changed: helps on 2/2" in out


def test_side_by_side_counts_clips_within_half_a_db(load_bench, tmp_path, capsys):
    """Another representation is "close" on a clip when its headline is at most 0.5 dB below."""
    bench = load_bench("bench_avatar")
    for work, shifts in (("base", (0.0, 0.0)), ("other", (-0.4, -0.7))):
        for clip, shift in zip(("a", "b"), shifts):
            (tmp_path / work / clip).mkdir(parents=True)
            (tmp_path / work / clip / "report.json").write_text(json.dumps(_report(25.0 + shift, 24.0, 24.5, 27.0)))
            (tmp_path / work / clip / "tracking.json").write_text(json.dumps({"frames": 250, "fps_clip": 25.0}))
    (tmp_path / "other" / "a" / "avatar").mkdir()
    (tmp_path / "other" / "a" / "avatar" / "representation.safetensors").write_bytes(b"0" * 2_500_000)
    bench.print_side_by_side([tmp_path / "base", tmp_path / "other"])
    out = capsys.readouterr().out
    assert "| a | 25.0 -> 24.6 (-0.40) | 27.0 -> 27.0 | 30.00 -> 30.00 | 1000 -> 1000 | - -> 2.5 | 0.02 -> 0.02 |" in out
    assert "within 0.5 dB of the baseline or better on 1/2 clips" in out


def test_face_fit_reads_training_and_held_out_breakdowns(load_bench, tmp_path, capsys):
    """Fit against generalisation: training-frame face PSNR beside the held-out one; a run whose
    avatar was not kept (nothing to render the training frames from) shows a dash."""
    bench = load_bench("bench_avatar")
    for work, (fit, held) in (("base", (26.5, 24.2)), ("other", (27.6, 23.5))):
        run = tmp_path / work / "a"
        run.mkdir(parents=True)
        (run / "report.json").write_text(json.dumps(_report(25.0, 24.0, 24.5, 27.0)))
        (run / "breakdown.json").write_text(json.dumps({"psnr_face": held}))
        if work == "other":
            (run / "breakdown_train.json").write_text(json.dumps({"psnr_face": fit}))
    bench.print_face_fit([tmp_path / "base", tmp_path / "other"])
    out = capsys.readouterr().out
    assert "| a | - | 27.60 / 23.50 |" in out
