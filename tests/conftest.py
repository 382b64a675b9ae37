"""Shared fixtures. anny's data takes ~2 min to build on a fresh machine (then it is cached), so
every test shares one load per session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def anny_head():
    """AnnyHead in float32 (the default dtype)."""
    from avatar.models.anny_head import AnnyHead

    return AnnyHead.load()


@pytest.fixture(scope="session")
def anny_head64():
    """AnnyHead in float64, for equivalence and gradient checks."""
    from avatar.models.anny_head import AnnyHead

    return AnnyHead.load(dtype=torch.float64)


@pytest.fixture(scope="session")
def anny_reference():
    """anny's own module, configured as AnnyHead (slow to evaluate; for equivalence tests only)."""
    from avatar.models.anny_head import make_reference_anny

    return make_reference_anny()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real-data tests run only where it exists)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def load_bench():
    """``load_bench("bench_avatar")``: a script of ``bench/`` imported as a module (bench/ is not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
