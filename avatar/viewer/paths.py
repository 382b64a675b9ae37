"""Which files the viewer may open: the output folder's own files, and files the user named on the
command line. A path typed in the browser is resolved (symlinks followed) and refused unless it
lands inside OUT or is one of those explicitly allowed files: the viewer is a web server, and a
browser must not be able to make it read arbitrary files."""
from __future__ import annotations

from pathlib import Path

from avatar.errors import AvatarError

__all__ = ["OutFolder", "open_out"]


class OutFolder:
    """An output folder as the viewer sees it, plus the files allowed beyond it.

    Args:
        root: the OUT folder (must exist), or ``None`` when the viewer runs without one.
        allowed: files named explicitly by the user (e.g. ``--reenact other/tracking.npz``).
    """

    def __init__(self, root: Path | None, allowed: tuple[Path, ...] = ()) -> None:
        self.root = None if root is None else Path(root).resolve()
        self.allowed = frozenset(_existing_file(p, "file given on the command line") for p in allowed)

    @property
    def tracking(self) -> Path | None:
        return self._member("tracking.npz")

    @property
    def avatar_dir(self) -> Path | None:
        path = self._member("avatar")
        return path if path is not None and path.is_dir() else None

    def _member(self, name: str) -> Path | None:
        if self.root is None:
            return None
        path = self.root / name
        if not path.exists():
            return None
        return self.resolve(path)

    def resolve(self, path: str | Path) -> Path:
        """An existing file the viewer may read: relative paths are taken from OUT; the result
        (symlinks resolved) must lie inside OUT or be one of the explicitly allowed files."""
        text = str(path).strip()
        if not text:
            raise AvatarError("no file given")
        p = Path(text).expanduser()
        if not p.is_absolute():
            if self.root is None:
                raise AvatarError(f"{text}: relative paths are taken from OUT, and the viewer was started without OUT")
            p = self.root / p
        try:
            real = p.resolve(strict=True)
        except (FileNotFoundError, RuntimeError, OSError) as e:
            raise AvatarError(f"{text}: no such file") from e
        if real in self.allowed:
            return real
        if self.root is not None and real.is_relative_to(self.root):
            return real
        where = f"inside {self.root}" if self.root is not None else "given on the command line"
        raise AvatarError(
            f"refused {text}: the viewer only opens files {where} (pass another person's tracking "
            f"file explicitly with --reenact FILE)"
        )


def _existing_file(path: Path, what: str) -> Path:
    try:
        real = Path(path).expanduser().resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError) as e:
        raise AvatarError(f"{what} {path} does not exist") from e
    if not real.is_file():
        raise AvatarError(f"{what} {path} is not a file")
    return real


def open_out(out: Path, allowed: tuple[Path, ...] = ()) -> OutFolder:
    """Check that ``out`` is an output folder the viewer can show; clear errors otherwise."""
    out = Path(out)
    if not out.exists():
        raise AvatarError(
            f"output folder {out} does not exist. Make one with `avatar reconstruct VIDEO -o {out}` "
            "(or `avatar track`), or look at the default head with `avatar view --model anny` (no OUT)."
        )
    if not out.is_dir():
        raise AvatarError(f"{out} is not a folder; `avatar view` takes the output folder of `avatar reconstruct`/`avatar track`")
    folder = OutFolder(out, allowed)
    if folder.tracking is None and folder.avatar_dir is None:
        raise AvatarError(
            f"{out} has neither tracking.npz nor avatar/: not an avatar output folder "
            "(run `avatar track` or `avatar reconstruct` into it first)"
        )
    return folder
