"""Training on a synthetic clip (AnnyHead with painted vertex colours, exact tracking in the
fitting stage's tracking.npz layout): the loss falls, held-out frames beat the initialisation,
an interrupted run resumes to the same final step with no corrupt files."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from avatar.errors import AvatarError
from avatar.io.npy_rows import NpyRows
from avatar.representations import load_avatar
from avatar.training import PRESETS, HashConfig, StrategyConfig, TrainConfig, load_config, override, preset, train
from avatar.training.data import load_clip, split_holdout
from avatar.training.synthetic import make_synthetic_clip
from avatar.training.trainer import latest_checkpoint, list_checkpoints

SIZE = 64


def tiny(**kw):
    """fast-cpu shrunk for tests: 64^2, Gaussians 1 per triangle."""
    base = preset("fast-cpu", resolution=SIZE, per_face_face=1, eval_video=False, color_init_frames=4,
                  strategy=StrategyConfig(enabled=True, start=20, every=20, max_gaussians=12_000))  # fmt: skip
    return dataclasses.replace(base, **kw)


# tiny() as a settings file over fast-cpu (the CLI's default preset).
TINY_TOML = f"""resolution = {SIZE}
per_face_face = 1
eval_video = false
color_init_frames = 4
[strategy]
start = 20
every = 20
max_gaussians = 12_000
"""


@pytest.fixture(scope="module")
def clip_dir(anny_head, tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("clip"), anny_head, num_frames=12, size=SIZE)


def _copy_clip(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tracking.npz", "mattes.npz"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_clip_loading_and_holdout(clip_dir):
    clip = load_clip(clip_dir, SIZE, holdout=0.15)
    assert clip.images.shape == (12, SIZE, SIZE, 3) and clip.mattes.shape == (12, SIZE, SIZE)
    assert list(clip.test_ids) == [10, 11] and list(clip.train_ids) == list(range(10))
    assert 0.05 < (clip.mattes[:] > 127).mean() < 0.6
    assert split_holdout(100, 0.15)[1].tolist() == list(range(85, 100))
    half = load_clip(clip_dir, SIZE // 2)
    assert half.images.shape[1] == SIZE // 2 and torch.allclose(half.Ks[0, :2], clip.Ks[0, :2] / 2)


def test_frames_are_read_from_one_cache(clip_dir, tmp_path):
    """The frames and mattes are read from disk as needed (a long clip does not sit in memory),
    built once; a cache made for other frames is rebuilt, not trusted."""
    out = _copy_clip(clip_dir, tmp_path / "run")
    first = load_clip(out, SIZE)
    (cache,) = (out / "cache").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == ["frame_index.npy", "images.npy", "mattes.npy"]
    again = load_clip(out, SIZE)
    assert isinstance(again.images, NpyRows) and isinstance(again.mattes, NpyRows)
    assert np.array_equal(again.images, first.images) and np.array_equal(again.mattes, first.mattes)
    np.save(cache / "frame_index.npy", np.arange(12) + 1)  # as if the clip had been tracked again
    rebuilt = load_clip(out, SIZE)
    assert np.array_equal(np.load(cache / "frame_index.npy"), np.arange(12)) and np.array_equal(rebuilt.images, first.images)
    assert sorted(p.name for p in (out / "cache").iterdir()) == [cache.name]


def test_head_crop():
    from avatar.training.data import head_crop

    face = np.stack(np.meshgrid([210.0, 510.0], [350.0, 650.0]), -1).reshape(1, 4, 2).repeat(3, 0)  # 300 px, centre (360, 500)
    assert head_crop(face, (720, 1280), 3.0) == (0, 140, 720, 720)  # portrait phone video: the short side, head centred
    assert head_crop(face, (720, 1280), 2.0) == (60, 200, 600, 600)  # a small face in the frame: zoom in
    assert head_crop(face + [0, 600], (720, 1280), 3.0) == (0, 560, 720, 720)  # near the edge: shifted inside
    assert head_crop(face, (720, 1280), 0.0) == (0, 0, 720, 1280)  # off
    assert head_crop(np.zeros((3, 4, 2)), (720, 1280), 3.0) == (0, 0, 720, 1280)  # no landmarks


def test_clip_cropped_to_the_head(clip_dir, tmp_path):
    out = _copy_clip(clip_dir, tmp_path / "run")
    with np.load(out / "tracking.npz") as z:
        tr = dict(z)
    # Landmarks squeezed to an 8 px face around (40, 30): a 24 px crop at (28, 18).
    lm = tr["landmarks"]
    lm[..., :2] = np.random.default_rng(0).uniform([36, 26], [44, 34], lm[..., :2].shape)
    lm[:, :2, :2] = [[36, 26], [44, 34]]
    np.savez(out / "tracking.npz", **tr)
    whole = load_clip(out, SIZE)
    crop = load_clip(out, 24, head_crop_faces=3.0)
    assert crop.size == (24, 24)
    assert np.array_equal(crop.images, whole.images[:, 18:42, 28:52]) and np.array_equal(crop.mattes, whole.mattes[:, 18:42, 28:52])
    assert torch.allclose(crop.Ks[:, :2, 2], whole.Ks[:, :2, 2] - torch.tensor([28.0, 18.0]))
    assert torch.equal(crop.Ks[:, 0, 0], whole.Ks[:, 0, 0])


def test_training_lowers_loss_and_beats_init(clip_dir, tmp_path):
    out = _copy_clip(clip_dir, tmp_path / "run")
    losses = []
    report = train(out, tiny(steps=150, eval_video=True, checkpoint_every=1000), progress=False,
                   on_step=lambda s, l: losses.append(l["loss"]))  # fmt: skip
    assert len(losses) == 150
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-20:]))
    held, init = report["held_out"], report["held_out_initial"]
    assert held["psnr"] > init["psnr"] + 1.0, (init, held)
    assert held["ssim"] > init["ssim"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["steps"] == 150 and on_disk["frames"]["held_out_rows"] == [10, 11] and on_disk["lpips"] is None
    assert (out / "eval.mp4").stat().st_size > 0 and (out / "eval_refined_pose.mp4").stat().st_size > 0
    av = load_avatar(out)
    assert on_disk["expression_blendshapes"] == 8 == av.representation.expr_rank  # the default, on 10 training frames
    assert av.performance["body"].shape == (12, 3) and torch.isfinite(av.performance["body"]).all()  # tracked body motion kept
    perf = {k: v[10:11] for k, v in av.performance.items()}
    rgb, alpha = av.render(perf, torch.tensor(av.config["viewmat"]), torch.tensor(av.config["K"]), SIZE, SIZE)
    assert rgb.shape == (1, SIZE, SIZE, 3) and alpha.mean() > 0.05


def test_held_out_evaluation_is_capped(clip_dir, tmp_path):
    """A long clip's held-out frames are evaluated on an even sample (eval_max_frames)."""
    out = _copy_clip(clip_dir, tmp_path / "run")
    report = train(out, tiny(steps=4, holdout=0.5, eval_max_frames=3, pose_fit_frames=0), progress=False)
    assert report["frames"]["held_out"] == 6 and report["frames"]["held_out_evaluated"] == 3
    for key in ("held_out", "held_out_refined_pose"):
        assert len(report[key]["psnr_per_frame"]) == 3, key


def test_interrupt_and_resume(clip_dir, tmp_path):
    out = _copy_clip(clip_dir, tmp_path / "run")
    cfg = tiny(steps=24, checkpoint_every=5)

    def stop_at_13(step, _):
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(out, cfg, progress=False, on_step=stop_at_13)
    assert not (out / "report.json").exists() and not (out / "avatar").exists()
    path, ck = latest_checkpoint(out / "checkpoints")
    assert ck["step"] == 10 and path.name == "step_0000010.pt"
    # A half-written newer file (as a crash during a non-atomic write would leave) is not trusted.
    (out / "checkpoints" / "step_0000015.pt").write_bytes(b"\x00garbage")
    steps_run = []
    report = train(out, cfg, progress=False, on_step=lambda s, _: steps_run.append(s))
    assert steps_run == list(range(11, 25)) and report["steps"] == 24 and report["resumed_from"] == 10
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "step_0000024.pt" in files and not any(f.startswith(".") for f in files)
    for p in list_checkpoints(out / "checkpoints"):
        if p.name != "step_0000015.pt":
            assert torch.load(p, weights_only=True)["step"] in (15, 20, 24)
    assert not [p for p in out.rglob(".*") if p.is_file() and p.name != ".lock"], "temporary files left behind"
    assert load_avatar(out).representation.num_gaussians == report["num_gaussians"]
    # Running again finds the finished run: no training steps, same step count.
    again = []
    assert train(out, cfg, progress=False, on_step=lambda s, _: again.append(s))["steps"] == 24 and again == []


def test_resume_refuses_other_settings_or_inputs(clip_dir, tmp_path):
    """A checkpoint resumes only with the settings and tracking it was made with (its length, where
    it runs and what is measured after training may change); anything else names what changed."""
    out = _copy_clip(clip_dir, tmp_path / "run")
    cfg = tiny(steps=6, checkpoint_every=2, eval_refine_iters=0, pose_fit_frames=0)

    def stop_at_3(step, _):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(out, cfg, progress=False, on_step=stop_at_3)
    with pytest.raises(AvatarError, match=r"lambda_alpha 0.1 -> 0.3.*--restart"):
        train(out, dataclasses.replace(cfg, lambda_alpha=0.3), progress=False)
    with pytest.raises(AvatarError, match=r"strategy.every 20 -> 7"):
        train(out, dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, every=7)), progress=False)
    tracking = dict(np.load(out / "tracking.npz"))
    np.savez(out / "tracking.npz", **{**tracking, "transl": tracking["transl"] + 1e-4})  # tracked again
    with pytest.raises(AvatarError, match="tracking changed since this run started"):
        train(out, cfg, progress=False)
    np.savez(out / "tracking.npz", **tracking)
    report = train(out, dataclasses.replace(cfg, steps=8, eval_video=True), progress=False)
    assert report["resumed_from"] == 2 and report["steps"] == 8


def test_resume_across_versions_compares_only_what_both_know():
    """A checkpoint from before a setting existed resumes when the setting is at its default (and
    not otherwise); a setting this version no longer has cannot be compared."""
    from avatar.training.config import TrainConfig
    from avatar.training.state import check_resumable

    cfg = TrainConfig()
    old = cfg.to_dict() | {"hash": {k: v for k, v in cfg.to_dict()["hash"].items() if k != "levels"}, "a_removed_knob": 1}
    check_resumable({"config": old, "inputs": {}}, cfg, {}, "run")
    with pytest.raises(AvatarError, match=r"hash.levels None -> 9"):
        check_resumable({"config": old, "inputs": {}}, dataclasses.replace(cfg, hash=HashConfig(levels=9)), {}, "run")
    with pytest.raises(AvatarError, match=r"lambda_alpha"):
        check_resumable({"config": old, "inputs": {}}, dataclasses.replace(cfg, lambda_alpha=0.3), {}, "run")


def _flat_config(**changed) -> dict:
    """TrainConfig().to_dict() as versions before [hash] and [points] saved it (flat hash_levels, lr_hash, ...)."""
    from avatar.training.config import LEGACY_NAMES

    saved = TrainConfig().to_dict()
    hash_, points = saved.pop("hash"), saved.pop("points")
    for old, new in LEGACY_NAMES.items():
        table, name = new.split(".")
        saved[old] = changed.get(old, (hash_ if table == "hash" else points)[name])
    return saved


def test_resume_a_checkpoint_with_the_flat_names_of_earlier_versions():
    """hash_levels in an old checkpoint is hash.levels: the same value resumes, another is named."""
    from avatar.training.state import check_resumable

    old = {"config": _flat_config(hash_levels=6, points_lr_mlp=0.01), "inputs": {}}
    same = TrainConfig(hash=HashConfig(levels=6), points=dataclasses.replace(TrainConfig().points, lr_mlp=0.01))
    check_resumable(old, same, {}, "run")
    check_resumable({"config": _flat_config(), "inputs": {}}, TrainConfig(), {}, "run")  # all at defaults
    with pytest.raises(AvatarError, match=r"hash.levels 6 -> 8"):
        check_resumable(old, dataclasses.replace(same, hash=HashConfig()), {}, "run")
    with pytest.raises(AvatarError, match=r"points.lr_mlp 0.01 -> 0.001"):
        check_resumable(old, dataclasses.replace(same, points=TrainConfig().points), {}, "run")


def test_from_dict_reads_saved_configs_of_this_and_earlier_versions():
    cfg = override(TrainConfig(), ["hash.levels=5", "points.hidden=8", "strategy.every=3", "background=0,0,0"])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # as report.json holds it
    from avatar.training.config import LEGACY_NAMES

    nested = {f"{t}.{k}" for t in ("hash", "points") for k in cfg.to_dict()[t]}
    born_nested = {"points.appearance", "points.lr_light", "hash.expr_rank"}  # never saved as flat settings
    assert set(LEGACY_NAMES.values()) == nested - born_nested  # each of the others has its old name
    old = TrainConfig.from_dict(_flat_config(hash_levels=5, lr_hash=0.5, points_hidden=8))
    assert (old.hash.levels, old.hash.lr, old.points.hidden) == (5, 0.5, 8)
    assert old.hash.groups == HashConfig().groups and isinstance(old.hash.lr, float)
    with pytest.raises(AvatarError, match="unknown setting a_removed_knob"):
        TrainConfig.from_dict(_flat_config() | {"a_removed_knob": 1})
    kept = TrainConfig.from_dict(_flat_config(hash_rank=3) | {"a_removed_knob": 1, "strategy": {"gone": 1}}, drop_unknown=True)
    assert kept.hash.rank == 3 and kept.strategy == StrategyConfig()


def test_a_second_process_on_the_same_folder_is_refused(clip_dir, tmp_path):
    import subprocess
    import sys

    out = _copy_clip(clip_dir, tmp_path / "run")
    hold = ("import sys, time\nfrom avatar.utils.files import exclusive\n"
            "with exclusive(sys.argv[1], 'a test holder'):\n    print('held', flush=True)\n    time.sleep(60)\n")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(AvatarError, match=rf"in use by pid {child.pid} \(a test holder\)"):
            train(out, tiny(steps=2), progress=False)
        assert not (out / "checkpoints").exists()
    finally:
        child.kill()
        child.wait()
    # The holder died without letting go: the operating system freed its lock.
    assert train(out, tiny(steps=2, eval_refine_iters=0, pose_fit_frames=0), progress=False)["steps"] == 2


def test_config_overrides():
    cfg = override(preset("fast-cpu"), ["steps=7", "strategy.every=3", "background=0,0,0", "refine_tracking=true"])
    assert cfg.steps == 7 and cfg.strategy.every == 3 and cfg.background == (0.0, 0.0, 0.0) and cfg.refine_tracking
    assert preset("quality-gpu").device == "cuda" and preset("fast-cpu").resolution == 256
    with pytest.raises(AvatarError, match="unknown setting"):
        override(cfg, ["stepz=3"])
    with pytest.raises(AvatarError, match="cannot parse"):
        override(cfg, ["steps=many"])
    with pytest.raises(AvatarError, match="unknown preset"):
        preset("turbo")
    with pytest.raises(AvatarError, match="unknown setting"):  # an experiment-only knob, removed
        override(cfg, ["photometric=l1"])
    with pytest.raises(AvatarError, match="body_translation must be"):
        override(cfg, ["body_translation=2"])
    with pytest.raises(AvatarError, match="device must be one of"):
        override(cfg, ["device=tpu"])
    assert override(cfg, ["max_frames=none"]).max_frames is None and override(cfg, ["max_frames=5"]).max_frames == 5


def test_config_overrides_in_nested_tables():
    cfg = override(preset("fast-cpu"), ["hash.levels=12", "hash.lr=0.5", "points.lr_mlp=1", "points.hidden=16"])
    assert (cfg.hash.levels, cfg.hash.lr, cfg.points.lr_mlp, cfg.points.hidden) == (12, 0.5, 1.0, 16)
    assert isinstance(cfg.hash.levels, int) and isinstance(cfg.points.lr_mlp, float)
    assert cfg.hash.rank == HashConfig().rank and cfg.strategy == preset("fast-cpu").strategy  # the rest unchanged
    with pytest.raises(AvatarError, match=r"unknown setting hash.levelz; valid: hash.levels, hash.log2_size, .*hash.lr_mlp$"):
        override(cfg, ["hash.levelz=3"])
    with pytest.raises(AvatarError, match=r"unknown setting hash; valid: .*hash.\*, points.\*"):  # a table, not a value
        override(cfg, ["hash=3"])
    with pytest.raises(AvatarError, match=r"unknown setting hash_levels \(now hash.levels\); valid:"):  # the old flat name
        override(cfg, ["hash_levels=3"])
    with pytest.raises(AvatarError, match="cannot parse"):
        override(cfg, ["hash.levels=many"])
    with pytest.raises(AvatarError, match="unknown setting nope; valid: resolution"):
        override(cfg, ["nope.levels=3"])


def test_presets_are_the_files_in_configs():
    import typing

    from avatar_apps.reconstruct import Reconstruct
    from avatar_apps.train import Train

    # The CLI's --preset choices are exactly the preset files.
    for app in (Train, Reconstruct):
        assert set(typing.get_args(typing.get_type_hints(app)["preset"])) == set(PRESETS)
    # A file names only what it changes: default.toml changes nothing.
    assert preset("default") == TrainConfig()
    fast = preset("fast-cpu")
    assert (fast.resolution, fast.steps, fast.sh_degree, fast.strategy.max_gaussians) == (256, 1500, 1, 40_000)
    assert fast.strategy.grad_threshold == StrategyConfig().grad_threshold  # untouched fields keep defaults


def test_settings_file_over_a_preset(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text('steps = 40\nlr_color = 1\nbackground = [0, 0, 0]\ndevice = "cpu"\n[strategy]\nenabled = false\n')
    cfg = load_config(path, base=preset("fast-cpu"))
    assert (cfg.steps, cfg.lr_color, cfg.background, cfg.device) == (40, 1.0, (0.0, 0.0, 0.0), "cpu")
    assert not cfg.strategy.enabled and cfg.strategy.every == preset("fast-cpu").strategy.every
    assert cfg.resolution == 256 and isinstance(cfg.lr_color, float)  # the rest stays the preset's
    for text, match in [("stepz = 3", "unknown setting stepz;"), ("[strategy]\nevry = 3", "unknown setting strategy.evry"),
                        ("steps = 1.5", "steps = 1.5 is not a valid int"), ("refine_tracking = 1", "not a valid bool"),
                        ('device = "tpu"', "device must be one of"), ("background = [1, 1]", "not a valid"),
                        ("steps = ", "not valid TOML"), ("body_rotation = 2.0", "body_rotation must be in")]:  # fmt: skip
        path.write_text(text + "\n")
        with pytest.raises(AvatarError, match=match):
            load_config(path)
    with pytest.raises(AvatarError, match="no such settings file"):
        load_config(tmp_path / "missing.toml")


def test_settings_file_with_hash_and_points_tables(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text("steps = 40\n[hash]\nlevels = 12\nlr = 1\n[points]\nhidden = 16\n")
    cfg = load_config(path, base=preset("fast-cpu"))
    assert (cfg.steps, cfg.hash.levels, cfg.hash.lr, cfg.points.hidden) == (40, 12, 1.0, 16) and isinstance(cfg.hash.lr, float)
    assert cfg.hash.rank == HashConfig().rank and cfg.points.frequencies == TrainConfig().points.frequencies
    for text, match in [("[hash]\nlevelz = 3", r"unknown setting hash.levelz; valid: hash.levels, "),
                        ("[points]\nhidden = 1.5", "points.hidden = 1.5 is not a valid int"),
                        ("hash = 3", "unknown setting hash; valid:"), ("lr_hash = 3", r"unknown setting lr_hash \(now hash.lr\);")]:  # fmt: skip
        path.write_text(text + "\n")
        with pytest.raises(AvatarError, match=match):
            load_config(path)


def test_cli_settings_file(clip_dir, tmp_path, capsys):
    from avatar_apps.cli import main

    out = _copy_clip(clip_dir, tmp_path / "run")
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    # A bad file fails before anything is tracked or trained, with one line naming it.
    assert main(["reconstruct", str(tmp_path / "none.mp4"), "-o", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert main(["train", str(out), "--config", str(bad)]) == 2
    assert f"{bad}: unknown setting stepz; valid: resolution," in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (out / "checkpoints").exists()
    good = tmp_path / "good.toml"
    good.write_text(TINY_TOML)
    assert main(["train", str(out), "--config", str(good), "--set", "steps=3", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["config"]["resolution"] == SIZE and not report["config"]["eval_video"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_train_on_cuda_without_cuda_is_one_line(clip_dir, tmp_path, capsys):
    from avatar_apps.cli import main

    out = _copy_clip(clip_dir, tmp_path / "run")
    assert main(["train", str(out), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatar: error:") and "no CUDA device" in err and "\n" not in err
    assert not (out / "checkpoints").exists()


def test_tracking_refinement_runs_and_stays_small(clip_dir, tmp_path):
    out = _copy_clip(clip_dir, tmp_path / "run")
    report = train(out, tiny(steps=12, refine_tracking=True, lr_tracking=1e-3, checkpoint_every=100,
                             strategy=StrategyConfig(enabled=False)), progress=False)  # fmt: skip
    av = load_avatar(out)
    tracked = np.load(out / "tracking.npz")
    delta = (av.performance["expression"].numpy() - tracked["expression"])
    assert report["steps"] == 12 and 0 < np.abs(delta[:10]).max() < 0.05  # training rows refined a little
    assert np.abs(delta[10:]).max() == 0  # held-out rows untouched


def test_nearest_colors_takes_the_neighbours_colour():
    from avatar.training.initialise import nearest_colors

    points = torch.tensor([[0.0, 0, 0], [0.01, 0, 0], [1.0, 0, 0], [1.01, 0, 0]], dtype=torch.float64)
    colors = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0]], dtype=torch.float64)
    query = torch.tensor([[0.02, 0, 0], [0.98, 0, 0]], dtype=torch.float64)
    got = nearest_colors(query, points, colors, k=2, chunk=1)
    assert torch.allclose(got, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64))


def test_photometric_loss_is_l2_plus_dssim():
    from avatar.training.losses import photometric_loss, ssim_map

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 8, 8, 3, generator=g), torch.rand(2, 8, 8, 3, generator=g)
    l2, parts = photometric_loss(a, b, lambda_dssim=0.0)
    assert torch.isclose(l2, 10 * ((a - b) ** 2).mean())
    assert parts["l1"] == pytest.approx(float((a - b).abs().mean()))  # the progress bar's l1 stays the absolute error
    mixed, parts = photometric_loss(a, b, lambda_dssim=0.25)
    assert torch.isclose(mixed, 0.75 * l2 + 0.25 * (1 - ssim_map(a, b).mean())) and "dssim" in parts
    # L2's minimiser over two equally likely targets is their mean (L1 would be flat between them).
    x = torch.full((1, 4, 4, 3), 0.5, requires_grad=True)
    lo, hi = torch.zeros(1, 4, 4, 3), torch.ones(1, 4, 4, 3)
    (photometric_loss(x, lo, 0.0)[0] + photometric_loss(x, hi, 0.0)[0]).backward()
    assert x.grad.abs().max() < 1e-6


def test_densify_at_the_cap_takes_the_largest_gradients(anny_head):
    from avatar.representations import MeshGaussians
    from avatar.training.strategy import DensifyStrategy

    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=0)
    n = rep.num_gaussians
    params = rep.primitive_parameters()
    opt = torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k} for k, p in params.items()])
    strat = DensifyStrategy(StrategyConfig(grad_threshold=1e-3, split_scale=1e9, prune_opacity=0.0, max_gaussians=n + 5), 100)
    g = torch.Generator().manual_seed(0)
    grad = torch.rand(n, generator=g) * 1e-4  # below the threshold ...
    hot = torch.randperm(n, generator=g)[:40]
    grad[hot] = 2e-3 + torch.rand(40, generator=g) * 1e-3  # ... but 40 candidates for 5 places
    strat.grad_sum, strat.count = grad.clone(), torch.ones(n)
    rep.sh_dc.data[hot] = torch.arange(40, dtype=torch.float32)[:, None] + 10.0  # tag i + 10 on hot[i]
    result = strat._refine(rep, opt, g)
    assert result["cloned"] == 5 and result["total"] == n + 5
    expected = {float(i) + 10.0 for i in torch.argsort(grad[hot], descending=True)[:5].tolist()}
    assert set(rep.sh_dc.detach()[n:, 0].tolist()) == expected  # the clones: the 5 largest gradients


def test_too_few_frames_for_expression_blendshapes_or_pose_refinement(clip_dir, tmp_path):
    out = _copy_clip(clip_dir, tmp_path / "few")
    report = train(out, tiny(steps=4, max_frames=6, checkpoint_every=1000, refine_pose=True, refine_from=0.0),
                   progress=False)  # 5 training frames  # fmt: skip
    av = load_avatar(out)
    assert report["expression_blendshapes"] == 0 and av.representation.expr_color is None
    with np.load(out / "tracking.npz") as z:
        # Training poses as tracked (the held-out frame, the last, is refined at evaluation).
        assert np.array_equal(av.performance["global_orient"].numpy()[:5], z["global_orient"][:5])


def test_frame_renderer_draws_a_refined_pose_as_the_head_model_does(anny_head, clip_dir):
    """The one frame renderer: rows + rigid deltas drawn from the tracked vertices moved rigidly
    (fixed_verts) equal the head model evaluated at the refined pose; the renders match the target
    layout the loss reads."""
    from avatar.representations import MeshGaussians
    from avatar.training.frames import FrameRenderer

    clip = load_clip(clip_dir, SIZE, holdout=0.15)
    frames = FrameRenderer(anny_head, clip, clip.shape, torch.ones(3))
    rep = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1)
    rows = [2, 7]
    deltas = {"global_orient": torch.zeros(12, 3), "transl": torch.zeros(12, 3)}
    deltas["global_orient"][rows] = torch.tensor([[0.05, -0.1, 0.02], [-0.03, 0.08, 0.0]])
    deltas["transl"][rows] = torch.tensor([[0.004, -0.002, 0.01], [0.0, 0.003, -0.005]])
    with torch.no_grad():
        evaluated, alpha_e, _ = frames.render(rep, rows, deltas)
        frames.pose_fixed_vertices()
        moved, alpha_m, _ = frames.render(rep, rows, deltas)
        as_tracked, _, _ = frames.render(rep, rows)
    assert evaluated.shape == (2, SIZE, SIZE, 3) and alpha_e.shape == (2, SIZE, SIZE, 1)
    torch.testing.assert_close(moved, evaluated, atol=2e-4, rtol=0)
    torch.testing.assert_close(alpha_m, alpha_e, atol=2e-4, rtol=0)
    assert (as_tracked - evaluated).abs().max() > 0.1  # the deltas do move the head in the image
    gt, matte = frames.target(rows)
    assert gt.shape == evaluated.shape and matte.shape == alpha_e.shape


def test_metric_sums_frame_by_frame_equal_the_pooled_figures():
    """evaluate pools a clip's figures one frame at a time; they must equal the figures of all
    frames at once, computed here from their definitions."""
    import math

    from avatar.training.losses import MetricSums, masked_metrics, ssim_map

    g = torch.Generator().manual_seed(1)
    pred, gt = torch.rand(3, 12, 10, 3, generator=g), torch.rand(3, 12, 10, 3, generator=g)
    mask = (torch.rand(3, 12, 10, 1, generator=g) > 0.4).float()
    mask[1] = 0  # a frame with no foreground still counts towards the whole-image figures
    pooled = MetricSums()
    for i in range(3):
        pooled.merge(MetricSums().add(pred[i : i + 1], gt[i : i + 1], mask[i : i + 1]))
    got = pooled.result()
    fg = mask[..., 0] > 0.5
    sq, smap = (pred - gt) ** 2, ssim_map(pred, gt)
    assert got["psnr"] == pytest.approx(-10 * math.log10(float(sq[fg].mean())), rel=1e-5)
    assert got["ssim"] == pytest.approx(float(smap[fg].mean()), rel=1e-5)
    assert got["psnr_full"] == pytest.approx(-10 * math.log10(float(sq.mean())), rel=1e-5)
    assert got["ssim_full"] == pytest.approx(float(smap.mean()), rel=1e-5)
    assert got["pixels"] == int(fg.sum())
    assert masked_metrics(pred, gt, mask) == pytest.approx(got, rel=1e-6)
    assert math.isnan(masked_metrics(pred[1:2], gt[1:2], mask[1:2])["psnr"])
    assert MetricSums().result() == {}


def test_fixed_vertices_on_disk_equal_those_in_memory(anny_head, clip_dir, tmp_path):
    """The tracked heads posed once for training, kept in a file (flat memory in clip length),
    are the in-memory ones to the bit."""
    from avatar.training.frames import FrameRenderer

    clip = load_clip(clip_dir, SIZE)
    frames = FrameRenderer(anny_head, clip, clip.shape, torch.ones(3))
    in_memory = frames.pose_fixed_vertices(chunk=5).clone()
    on_disk = FrameRenderer(anny_head, clip, clip.shape, torch.ones(3))
    on_disk.pose_fixed_vertices(chunk=5, file=tmp_path / "fixed.npy")
    rows = [3, 0, 11]
    params = frames.params(rows)
    assert torch.equal(on_disk.vertices(rows, params), frames.vertices(rows, params))
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "fixed.npy")), in_memory)
