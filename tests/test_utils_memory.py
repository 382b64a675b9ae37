"""avatar.utils.memory: the process-wide malloc setting the CLI makes."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from avatar.utils.memory import fix_mmap_threshold


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_mmap_threshold_is_set_on_glibc() -> None:
    if not hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "gnu_get_libc_version"):
        pytest.skip("not glibc")
    assert fix_mmap_threshold() is True
