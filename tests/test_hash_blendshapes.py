"""Hash-table blendshapes: the hash grid (C++ kernel and torch twin against the definition, values
and gradients), the field's neutral state and locality, densification, the bundle round trip, and
`avatar train --representation hash-blendshapes` through resume, render, .ply export and the viewer."""
from __future__ import annotations


import pytest
import torch
from representation_checks import assert_bundle_round_trip, cli_train_resume_render_export_view, tiny_config

from avatar.representations import HashBlendshapes, MeshGaussians
from avatar.representations.hashgrid import HashGridSpec, _cpu_kernels, _encode, _encode_naive, blend_tables, encode, hash_corners
from avatar.representations.mesh_gaussians import FACE, HAIR

# Small tables, so that levels are dense, then hashed with collisions.
SPECS = [
    HashGridSpec(levels=4, log2_size=6, features=2, min_resolution=2, max_resolution=9),
    HashGridSpec(levels=3, log2_size=8, features=3, min_resolution=4, max_resolution=40),
    HashGridSpec(levels=1, log2_size=4, features=1, min_resolution=5, max_resolution=5),
]
KERNELS = {"cpp": encode, "torch": _encode}


def _points(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x[0], x[1] = 0.0, 1.0  # the cube's corners: the last cell, clamped
    x[2, 0] = -0.3  # outside: clamped to the face
    return x


def _kernel(name: str):
    if name == "cpp" and _cpu_kernels() is None:
        pytest.skip("no C++ compiler: the CPU kernel cannot be built here")
    return KERNELS[name]


def test_levels_are_dense_then_hashed_with_collisions():
    spec = SPECS[0]
    assert spec.resolutions() == [2, 3, 5, 9] and [spec.dense(level) for level in range(4)] == [True, True, False, False]
    x = _points(200, 0)
    rows, _ = hash_corners(x, spec)
    # on the finest (hashed) level, distinct grid corners share rows: a corner -> row map, not one-to-one
    cells = (x.clamp(0, 1) * 9).floor().clamp(max=8).long()
    corners = cells[:, None, :] + torch.tensor([[c & 1, c >> 1 & 1, c >> 2 & 1] for c in range(8)])
    pairs = {(tuple(k), int(r)) for k, r in zip(corners.reshape(-1, 3).tolist(), rows[3].reshape(-1).tolist())}
    assert len({k for k, _ in pairs}) == len(pairs)  # each corner has one row
    assert len({r for _, r in pairs}) < len(pairs)  # ... and some rows more than one corner
    assert (rows[3] >= spec.offsets()[3]).all() and (rows[3] < spec.num_rows).all()


@pytest.mark.parametrize("name", ["cpp", "torch"])
@pytest.mark.parametrize("spec", SPECS, ids=["dense+hashed", "features3", "one-level"])
def test_encode_matches_the_definition(spec, name):
    fn = _kernel(name)
    x = _points(40, 1)
    B, K = 2, 3
    tables = torch.randn(B, K, spec.num_rows, spec.features, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    groups = torch.randint(K, (40,), generator=torch.Generator().manual_seed(3)).int()
    rows, weights = hash_corners(x, spec)
    out = fn(tables, rows, weights, groups)
    assert out.shape == (B, 40, spec.encoding_size)
    for b in range(B):
        for k in range(K):
            mine = groups == k
            ref = _encode_naive(tables[b, k], x[mine], spec)
            torch.testing.assert_close(out[b, mine], ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["cpp", "torch"])
@pytest.mark.parametrize("spec", SPECS, ids=["dense+hashed", "features3", "one-level"])
def test_encode_gradients(spec, name):
    """gradcheck of blend -> gather in float64 (tables and blend weights), and the gradient of the
    tables against autograd through the definition."""
    fn = _kernel(name)
    x = _points(12, 4)
    rows, weights = hash_corners(x, spec)
    groups = torch.tensor([0, 1] * 6, dtype=torch.int32)
    g = torch.Generator().manual_seed(5)
    tables = torch.randn(3, spec.num_rows, spec.features, dtype=torch.float64, generator=g, requires_grad=True)
    coef = torch.randn(2, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)  # [B, K, G]
    assert torch.autograd.gradcheck(lambda t, c: fn(blend_tables(t, c), rows, weights, groups), (tables, coef))
    table = tables.detach()[None, :1].clone().requires_grad_()
    probe = torch.randn(1, 12, spec.encoding_size, dtype=torch.float64, generator=g)
    (fn(table, rows, weights) * probe).sum().backward()
    naive = table.detach()[0, 0].clone().requires_grad_()
    (_encode_naive(naive, x, spec) * probe[0]).sum().backward()
    torch.testing.assert_close(table.grad[0, 0], naive.grad, rtol=0, atol=1e-12)


def test_kernel_and_twin_agree_in_float32():
    if _cpu_kernels() is None:
        pytest.skip("no C++ compiler: the CPU kernel cannot be built here")
    spec = HashGridSpec(levels=6, log2_size=10, features=2, min_resolution=8, max_resolution=96)
    x = _points(3000, 6, torch.float32)
    rows, weights = hash_corners(x, spec)
    groups = torch.randint(4, (3000,), generator=torch.Generator().manual_seed(7)).int()
    tables = torch.randn(2, 4, spec.num_rows, 2, generator=torch.Generator().manual_seed(8))
    probe = torch.randn(2, 3000, spec.encoding_size, generator=torch.Generator().manual_seed(9))
    grads = []
    for fn in (encode, _encode):
        t = tables.clone().requires_grad_()
        out = fn(t, rows, weights, groups)
        (out * probe).sum().backward()
        grads.append((out.detach(), t.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)


# --- the representation -----------------------------------------------------------------------------
def _trained_like(rep: HashBlendshapes, seed: int = 0) -> HashBlendshapes:
    """Grids and MLP away from their start (whose output layer is zero), as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rep.hash_tables.normal_(0.0, 0.5, generator=g)
        rep.hash_mlp_w2.normal_(0.0, 0.3, generator=g)
        if rep.hash_proj is not None:
            rep.hash_proj.normal_(0.0, 1.0, generator=g)
    return rep


@pytest.fixture(scope="module")
def rep(anny_head) -> HashBlendshapes:
    r = HashBlendshapes.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=1, grid=HashGridSpec(levels=6))
    r.append(torch.arange(3), torch.full((3,), HAIR), torch.zeros(3, 3), torch.full((3, 3), -2.0), torch.rand(3, 3))
    return _trained_like(r)


def _jaw(head, value: float = 1.0, frames: int = 1) -> torch.Tensor:
    e = torch.zeros(frames, len(head.expression_names))
    e[:, head.expression_names.index("jawOpen")] = value
    return e


def test_a_new_field_renders_as_its_gaussians(anny_head):
    """A new HashBlendshapes is MeshGaussians' Gaussians with a field whose output is zero."""
    mesh = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=1, seed=3)
    hashed = HashBlendshapes.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=1, seed=3, grid=HashGridSpec(levels=2))
    v = anny_head(expression=_jaw(anny_head, 0.7)).vertices
    a, b = mesh(v), hashed(v, expression=_jaw(anny_head, 0.7))
    for name in ("means", "quats", "scales", "opacities", "normals"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(b.colors[0], a.colors)


def test_expression_weight_zero_is_the_neutral_field(rep, anny_head):
    E = len(anny_head.expression_names)
    v = anny_head().vertices
    neutral = rep.field_deltas(None)
    # two frames against one: the matrix products may block differently by batch size (rounding)
    assert torch.allclose(rep.field_deltas(torch.zeros(2, E)), neutral.expand(2, -1, -1), rtol=0, atol=1e-6)
    a, b = rep(v), rep(v, expression=torch.zeros(1, E))
    assert torch.equal(a.means, b.means) and torch.equal(a.colors, b.colors)
    # a grid whose weight is 0 is not read, however large it is; given weight, it changes the field
    jaw = anny_head.expression_names.index("jawOpen")
    saved = rep.hash_tables.detach().clone()
    try:
        with torch.no_grad():
            rep.hash_tables[1 + jaw].normal_(0.0, 10.0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(rep.field_deltas(torch.zeros(1, E)), neutral)
        assert (rep.field_deltas(_jaw(anny_head)) - neutral).abs().amax() > 0.1
    finally:
        with torch.no_grad():
            rep.hash_tables.copy_(saved)


def test_hair_reads_the_neutral_field_and_expressions_reach_the_colour_and_offset(rep, anny_head):
    jaw = _jaw(anny_head)
    change = (rep.field_deltas(jaw) - rep.field_deltas(None))[0]
    hair = rep.region == HAIR
    assert hair.sum() == 3 and change[hair].abs().amax() == 0
    moved = change.abs().amax(-1) > 0
    assert 0.05 < moved.float().mean() < 0.9  # the lower face, not all of the head
    v = anny_head(expression=jaw).vertices
    s, s0 = rep(v, expression=jaw), rep(v)
    assert (s.colors[0, moved, 0] != s0.colors[0, moved, 0]).any(-1).all()  # base colour
    assert torch.equal(s.colors[:, :, 1:], s0.colors[:, :, 1:])  # not the view-dependent part
    assert ((s.means - s0.means).norm(dim=-1)[0, moved] > 0).float().mean() > 0.9  # offset
    terms = rep.regularization_terms(expression=jaw)
    assert set(terms) == {"offset", "scale", "expression"} and terms["expression"] > 0


def test_a_learnt_basis(anny_head):
    r = _trained_like(HashBlendshapes.on_surface(anny_head, per_face=1, per_face_face=1, grid=HashGridSpec(levels=2), rank=3))
    E = len(anny_head.expression_names)
    assert r.hash_tables.shape[0] == 4 and r.hash_proj.shape == (E, 3)
    assert torch.equal(r.field_deltas(torch.zeros(1, E)), r.field_deltas(None))
    r.field_deltas(_jaw(anny_head)).square().sum().backward()
    assert r.hash_proj.grad.abs().sum() > 0 and r.hash_tables.grad[1:].abs().sum() > 0
    from avatar.training.config import TrainConfig
    from avatar.training.state import make_optimizer

    trained = {name for g in make_optimizer(r, TrainConfig()).param_groups for name in [g["name"]]}
    assert {"hash_tables", "hash_proj", "hash_mlp_w1", "hash_mlp_b1", "hash_mlp_w2", "hash_mlp_b2"} <= trained


def test_densification_keeps_the_field_and_moves_its_lookups(anny_head):
    from avatar.training.config import StrategyConfig, TrainConfig
    from avatar.training.state import make_optimizer
    from avatar.training.strategy import DensifyStrategy

    r = _trained_like(HashBlendshapes.on_surface(anny_head, per_face=1, per_face_face=1, grid=HashGridSpec(levels=3)))
    opt = make_optimizer(r, TrainConfig())
    n = r.num_gaussians
    r.field_deltas(_jaw(anny_head)).sum().backward()
    opt.step()
    tables = r.hash_tables.detach().clone()
    with torch.no_grad():
        r.log_scale[: n // 2] = 0.5  # large: split; the rest small: cloned
    strategy = DensifyStrategy(StrategyConfig(prune_opacity=0.0), total_steps=100)
    strategy.grad_sum, strategy.count = torch.zeros(n), torch.ones(n)
    strategy.grad_sum[::50] = 1.0
    info = strategy._refine(r, opt, torch.Generator().manual_seed(0))
    assert info["cloned"] > 0 and info["split"] > 0 and r.num_gaussians == info["total"] > n
    assert r.canon.shape == (r.num_gaussians, 3) and torch.allclose(r.canon, r.canonical_positions())
    rows, weights, group = r.corners()
    assert rows.shape[1] == weights.shape[1] == group.shape[0] == r.num_gaussians
    assert torch.equal(r.hash_tables, tables)  # shared: densification leaves the grids alone
    out = r(anny_head(expression=_jaw(anny_head)).vertices, expression=_jaw(anny_head))
    assert out.means.shape == (1, r.num_gaussians, 3) and torch.isfinite(out.colors).all()


def test_save_load_render_identical(rep, anny_head, tmp_path):
    assert_bundle_round_trip(rep, HashBlendshapes, anny_head, _jaw(anny_head, 0.6), tmp_path)


def test_private_blendshapes_kept_beside_the_field(anny_head, tmp_path):
    """expr_rank > 0: each Gaussian keeps MeshGaussians' own blendshapes and the field adds to them."""
    mesh = MeshGaussians.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=1, seed=3, expr_rank=4)
    both = HashBlendshapes.on_surface(anny_head, per_face=1, per_face_face=1, sh_degree=1, seed=3, expr_rank=4,
                                      grid=HashGridSpec(levels=2))  # fmt: skip
    assert both.expr_rank == 4 and both.expr_color.shape == (both.num_gaussians, 4, 3)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for r in (mesh, both):
            r.expr_color.normal_(0.0, 0.3, generator=g)
            g.manual_seed(2)
    jaw = _jaw(anny_head, 0.7)
    v = anny_head(expression=jaw).vertices
    assert torch.equal(both(v, expression=jaw).colors, mesh(v, expression=jaw).colors)  # the field's output is zero
    _trained_like(both)
    field = both.field_deltas(jaw)[..., 3:]
    private = mesh(v, expression=jaw).colors[..., 0, :]
    torch.testing.assert_close(both(v, expression=jaw).colors[..., 0, :], private + field, rtol=0, atol=1e-5)
    terms = both.regularization_terms(expression=jaw)
    alone = mesh.regularization_terms(expression=jaw)["expression"] + both.field_deltas(jaw).square().sum(-1).mean()
    torch.testing.assert_close(terms["expression"], alone)
    assert_bundle_round_trip(both, HashBlendshapes, anny_head, jaw, tmp_path)


# --- training ---------------------------------------------------------------------------------------
TINY = tiny_config("pose_fit_frames = 0", "[hash]", "levels = 4")


@pytest.fixture(scope="module")
def clip(anny_head, tmp_path_factory):
    from avatar.training.synthetic import make_synthetic_clip

    return make_synthetic_clip(tmp_path_factory.mktemp("hash") / "clip", anny_head, num_frames=12, size=48)


def _mouth_and_forehead(rep: HashBlendshapes, head) -> tuple[torch.Tensor, torch.Tensor]:
    lm = head().landmarks[0].detach()
    p = rep.canon
    mouth = ((p - lm[17]).norm(dim=-1) < 0.015) & (rep.region == FACE)  # MediaPipe 17: lower lip
    brow_y = lm[[105, 334], 1].mean()
    forehead = (p[:, 1] > brow_y + 0.02) & (p[:, 2] > lm[:, 2].mean() - 0.01) & (rep.region == FACE)
    assert mouth.sum() > 20 and forehead.sum() > 20
    return mouth, forehead


def _train_steps(clip, steps: int):
    from avatar.training import trainer
    from avatar.training.config import HashConfig, TrainConfig

    cfg = TrainConfig(resolution=48, per_face_face=1, eval_video=False, color_init_frames=2, seed_off_mesh=False,
                      representation="hash-blendshapes", hash=HashConfig(levels=6), raster_threads=1, steps=steps)  # fmt: skip
    run = trainer._setup(clip, cfg, torch.device("cpu"), False)
    state = trainer._initialise(run)
    run.frames.pose_fixed_vertices()
    for step in range(steps):
        trainer._train_step(run, state, step)
    return state.rep


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "every-channel-everywhere"])
def test_jaw_open_changes_the_mouth_not_the_forehead(clip, anny_head, grouped, monkeypatch):
    """After a few steps on the synthetic clip (whose jaw opens and closes), jawOpen changes the
    field at the mouth and not at the forehead; with every channel heard everywhere (no groups)
    the forehead's grid learns from jaw frames too, which is what the groups prevent."""
    if not grouped:
        import avatar.representations.hash_blendshapes as hb

        monkeypatch.setattr(hb, "expression_reach", lambda head: torch.ones(head.faces.shape[0], len(head.expression_names)))
    rep = _train_steps(clip, 20)
    mouth, forehead = _mouth_and_forehead(rep, anny_head)
    with torch.no_grad():
        change = (rep.field_deltas(_jaw(anny_head)) - rep.field_deltas(_jaw(anny_head, 0.0)))[0].norm(dim=-1)
    assert change[mouth].mean() > 0.01, f"jawOpen changed the mouth by {change[mouth].mean():.4f} only"
    if grouped:
        assert change[forehead].amax() == 0
    else:
        assert change[forehead].mean() > 0.2 * change[mouth].mean()


def test_train_resume_render_export_view(clip, tmp_path):
    desc = cli_train_resume_render_export_view(clip, tmp_path, "hash-blendshapes", TINY)
    assert desc["representation"]["kind"] == "hash_blendshapes" and desc["representation"]["grid"]["levels"] == 4
