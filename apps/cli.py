"""The `avatar` command line. Each subcommand is a typed dataclass in its own module with a
``run()`` method; tyro turns the dataclass fields (and their docstrings) into flags and --help,
so every knob has one home."""
from __future__ import annotations

import importlib
import sys

import tyro

from avatar.errors import AvatarError

# name -> "module:Class". Modules are imported when the CLI starts (tyro needs the classes for
# --help); keep their top-level imports light.
COMMANDS: dict[str, str] = {
    "demo": "avatar_apps.demo:Demo",
    "reconstruct": "avatar_apps.reconstruct:Reconstruct",
    "track": "avatar_apps.track:Track",
    "train": "avatar_apps.train:Train",
    "render": "avatar_apps.render:Render",
    "export": "avatar_apps.export:Export",
    "view": "avatar_apps.view:View",
    "drive": "avatar_apps.drive:Drive",
    "landmarks": "avatar_apps.landmarks:Landmarks",
    "show-model": "avatar_apps.show_model:ShowModel",
    "doctor": "avatar_apps.doctor:Doctor",
}


def _load(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    from avatar.utils.memory import fix_mmap_threshold

    fix_mmap_threshold()  # long clips in bounded memory (avatar.utils.memory)
    commands = {name: _load(spec) for name, spec in COMMANDS.items()}
    config = tyro.extras.subcommand_cli_from_dict(
        commands, prog="avatar", args=argv, description="avatar: 3D head avatars from a phone video."
    )
    try:
        config.run()
    except AvatarError as e:
        print(f"avatar: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatar: interrupted; finished files are kept, partial ones were not written.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
