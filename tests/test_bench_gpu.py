"""bench/bench_gpu.py --dry-run: the device check runs end to end on the CPU (tiny sizes, a synthetic
clip), so the script a GPU session runs once is known to work before it gets there."""
from __future__ import annotations

import math

import pytest

from avatar.render import has_cpu_kernels

pytest.importorskip("warp")


@pytest.mark.skipif(not has_cpu_kernels(), reason="the dry run times our GPU kernels against the C++ ones")
def test_bench_gpu_dry_run(load_bench, tmp_path, capsys):
    bench = load_bench("bench_gpu")
    out = bench.main(["--dry-run", "--work", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert "kernel tests on cpu: skipped (dry run)" in printed and "goals:" in printed
    (row,) = out["raster"]
    assert row["gpu_fwd_fps"] > 0 and row["gpu_fwdbwd_its"] > 0 and row["cpu_fwd_fps"] > 0
    q = out["quality"]
    assert q["steps"] == 3 and q["gaussians"] > 0 and math.isfinite(q["held_out_psnr"]) and q["held_out_psnr"] > 5
    assert (tmp_path / "work" / "avatar" / "avatar.json").is_file()
    assert out["avatar_render"]["fps"] > 0 and out["avatar_render"]["size"] == [48, 48]
