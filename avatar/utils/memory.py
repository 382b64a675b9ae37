"""Process-wide memory settings."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)

#: Allocations of at least this many bytes get their own pages, returned to the system when freed.
MMAP_THRESHOLD = 8 << 20


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``nbytes``; returns whether it was set (glibc on Linux only).

    By default glibc raises the threshold to the size of each large block freed (up to 32 MB), so a
    long computation that allocates and frees arrays of a few MB chunk after chunk (the tracker's
    frames stage, a chunk of frames at a time) ends up with them on the heap, where freed space is
    fragmented rather than returned, and resident memory grows with clip length. A small threshold
    maps and unmaps every chunk's arrays, which costs time; the figures behind the choice are in
    docs/memory.md.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(nbytes)))
    except (OSError, AttributeError):  # another C library (musl) without mallopt
        return False
