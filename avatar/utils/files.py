"""File helpers used by every stage: where caches live, and writes that never leave half files."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def cache_dir() -> Path:
    """The user cache folder for derived data (``$AVATAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/avatar``,
    else ``~/.cache/avatar``). Created on first use."""
    root = os.environ.get("AVATAR_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "avatar"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    An interrupted run therefore leaves either the old file or the complete new one, never a
    truncated file that a resume would trust.

    >>> with atomic_write("out/tracking.json", "w") as f:  # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_write` for writers that want a file name (e.g. ``np.savez``, video
    encoders): yields a temporary path with the same suffix, renamed over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
