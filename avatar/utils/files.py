"""File helpers used by every stage: where caches live, and writes that never leave half files."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
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


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``path``; when the block succeeds its files are
    synced and it replaces ``path`` whole: the old folder is moved aside to ``.NAME.old``, the new
    one renamed in, the old one removed. A reader sees the old folder or the complete new one,
    never a mix of both; on failure the temporary folder is removed and ``path`` is untouched. A
    crash between the two renames leaves only ``.NAME.old``, which the next call puts back first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.parent / f".{path.name}.old"
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Holds ``folder/.lock`` for this process while the block runs: a second process that asks
    for the same folder gets an :class:`~avatar.errors.AvatarError` naming the holder's pid and
    ``what`` it runs. The lock is the operating system's (``flock``), so a process that dies frees
    it and no stale lock is left to clear. Where ``fcntl`` is missing (Windows) nothing is locked."""
    from avatar.errors import AvatarError

    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(folder)
    if not folder.is_dir():  # nothing there to protect; the caller reports the missing folder
        yield
        return
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise AvatarError(f"{folder} is in use by {holder}; wait for it to finish (or stop it) and run again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({what})")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
