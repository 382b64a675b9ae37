"""Builds and loads the CPU splat kernels (``kernels/splat_cpu/*.cpp``) at first use.

Why this shape: the kernels are plain C++17 with a C ABI, compiled by the system's C++ compiler
into a shared library and called through :mod:`ctypes`. That needs nothing but ``g++``/``c++``
(no torch headers, no ninja, no OpenMP runtime next to torch's own), compiles in seconds, and works
on every torch version. The library is cached under ``$AVATAR_CACHE_DIR`` (default
``~/.cache/avatar``)/``kernels``, keyed by a hash of the sources, flags, compiler and CPU, and
written atomically so concurrent first uses (e.g. pytest-xdist) cannot load a half-written file.

Importing this module compiles nothing; :func:`load_cpu_kernels` does, once per process.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from avatar.errors import AvatarError
from avatar.utils.files import cache_dir

_SOURCES = ("common.h", "project.cpp", "raster.cpp", "mix.cpp", "hashgrid.cpp", "pose.cpp")
# -ffp-contract=off: forward and backward re-evaluate the same per-pixel test and must agree
# bit for bit on which samples pass it; FMA contraction could round them differently.
# -fno-math-errno -fno-trapping-math: lets GCC vectorise sqrt/ceil/floor (no errno, no FP-exception
# flags to preserve); neither changes any computed value.
_FLAGS = [
    "-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno",
    "-fno-trapping-math",
]  # fmt: skip
_NATIVE = ["-march=native"]


def _source_dir() -> Path:
    """Where the C++ sources live: the installed ``avatar_kernels`` package, or the source tree."""
    spec = importlib.util.find_spec("avatar_kernels")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / "splat_cpu"
            if (candidate / "raster.cpp").is_file():
                return candidate
    # Running from a checkout that was not pip-installed: kernels/ sits next to avatar/.
    candidate = Path(__file__).resolve().parents[2] / "kernels" / "splat_cpu"
    if (candidate / "raster.cpp").is_file():
        return candidate
    raise AvatarError(
        "The CPU splat kernel sources (avatar_kernels/splat_cpu) were not found; reinstall avatar "
        "with `pip install -e .` from the repository."
    )


def _cache_dir() -> Path:
    return cache_dir() / "kernels"


def _cpu_fingerprint() -> str:
    # -march=native code must not be reused on another CPU model sharing the same cache folder.
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise AvatarError(
            "The CPU rasterizer compiles a small C++ library at first use but no C++ compiler was "
            "found. Install one (Debian/Ubuntu: `apt-get install g++`) or set CXX."
        )
    return cxx


def _compile(cxx: str, sources: list[Path], flags: list[str], out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cxx, *flags, *map(str, sources), "-o", str(out)], capture_output=True, text=True, check=False
    )


def _build() -> Path:
    src_dir = _source_dir()
    sources = [src_dir / name for name in _SOURCES]
    cxx = _compiler()
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    digest.update(" ".join([cxx, *_FLAGS, *_NATIVE, platform.machine(), _cpu_fingerprint()]).encode())
    cache = _cache_dir()
    target = cache / f"splat_cpu_{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    cpp = [p for p in sources if p.suffix == ".cpp"]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp_lib = Path(tmp) / target.name
        result = _compile(cxx, cpp, _FLAGS + _NATIVE, tmp_lib)
        if result.returncode != 0:
            # Some compilers/CPUs reject -march=native; the portable build is only a bit slower.
            result = _compile(cxx, cpp, _FLAGS, tmp_lib)
        if result.returncode != 0:
            raise AvatarError(
                f"Compiling the CPU splat kernels with {cxx} failed:\n{result.stderr[-4000:]}"
            )
        os.replace(tmp_lib, target)  # atomic: a concurrent builder either sees all or nothing
    return target


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    dbl = ctypes.c_double
    for sfx in ("f32", "f64"):
        fn = getattr(lib, f"splat_bin_count_{sfx}")
        fn.argtypes, fn.restype = [i32, i32, p, p, p, i32, i32, i32, p, i32], i64
        fn = getattr(lib, f"splat_bin_fill_{sfx}")
        fn.argtypes, fn.restype = [i32, i32, p, p, p, i32, i32, i32, p, p, i32], None
        fn = getattr(lib, f"splat_raster_fwd_{sfx}")
        fn.argtypes, fn.restype = [i32] * 6 + [p] * 11 + [i32], None
        fn = getattr(lib, f"splat_raster_bwd_{sfx}")
        fn.argtypes, fn.restype = [i32] * 6 + [p] * 16 + [i32], None
        fn = getattr(lib, f"splat_project_fwd_{sfx}")
        fn.argtypes = [i32, i32, p, p, p, p, p, p, i32, i32, dbl, dbl, dbl, dbl, i32, p, p, p, p, p, i32]
        fn.restype = None
        fn = getattr(lib, f"splat_project_bwd_{sfx}")
        fn.argtypes = [i32, i32, p, p, p, p, p, i32, i32, dbl, p, p, p, p, p, p, p, p, p, p, p, i32]
        fn.restype = None
        fn = getattr(lib, f"splat_mix_fwd_{sfx}")
        fn.argtypes, fn.restype = [i32] * 4 + [p] * 3 + [i32], None
        fn = getattr(lib, f"splat_mix_bwd_{sfx}")
        fn.argtypes, fn.restype = [i32] * 4 + [p] * 5 + [i32], None
        fn = getattr(lib, f"splat_mesh_pose_{sfx}")
        fn.argtypes, fn.restype = [i32] * 4 + [p] * 4 + [i32] + [p] * 8 + [i32], None


@functools.cache  # one build + load per process; the handle is immutable once made
def load_cpu_kernels() -> ctypes.CDLL:
    """The loaded kernel library, compiling it on first use. Raises AvatarError on failure."""
    lib = ctypes.CDLL(str(_build()))
    _declare(lib)
    return lib


def has_cpu_kernels() -> bool:
    """True when the CPU kernels are built or can be built here (compiles them if needed)."""
    try:
        load_cpu_kernels()
    except (AvatarError, OSError):
        return False
    return True
