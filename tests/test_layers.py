"""Layers point down: a module imports nothing from a layer above its own, at top level or inside a
function. Read from the sources (ast), so an import that runs only on some code path counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

AVATAR = Path(__file__).resolve().parents[1] / "avatar"
EVERY_LAYER = ("io", "perception", "models", "fitting", "representations", "render", "training", "guidance",
               "export", "viewer")  # fmt: skip
#: Layer -> the avatar subpackages it may not import (``avatar_apps``, the CLI, is above all of them).
#: utils -> io -> perception -> fitting -> representations / render -> training -> export / viewer / apps,
#: with models beside fitting's inputs: a head model needs neither perception nor rendering.
FORBIDDEN = {
    "utils": set(EVERY_LAYER),
    "io": set(EVERY_LAYER) - {"io"},
    "perception": set(EVERY_LAYER) - {"io", "perception"},
    "models": {"perception", "fitting", "representations", "render", "training", "guidance", "export", "viewer"},
    "fitting": {"representations", "render", "training", "guidance", "export", "viewer"},
    "render": {"training", "guidance", "export", "viewer"},
    "training": {"export", "viewer"},
}


def imports(source: str, module: str) -> set[str]:
    """Dotted names of everything ``source`` (the module ``module``, e.g. ``avatar.models.flame``)
    imports anywhere: ``import x``, ``from x import y`` (as ``x.y``), relative forms resolved, and
    ``importlib.import_module("...")`` with a literal name."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join([*base, *([node.module] if node.module else [])])
            found.update(f"{prefix}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((AVATAR / layer).rglob("*.py")):
        parts = path.relative_to(AVATAR.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if parts[-1] == "__init__":
            module += ".__init__"  # relative imports in a package's __init__ resolve against the package
        for name in sorted(imports(path.read_text(), module)):
            top = name.split(".")
            if top[0] == "avatar_apps" or (top[0] == "avatar" and len(top) > 1 and top[1] in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(AVATAR.parent)} imports {name}")
    return bad


def test_imports_are_found_in_every_form() -> None:
    source = (
        "import avatar.render.mesh\nfrom avatar.perception import landmarks\n"
        "def f():\n    from ..render import mesh\n    from . import base\n    from .. import fitting\n"
        "    import importlib\n    importlib.import_module('avatar.training')\n"
    )
    assert imports(source, "avatar.models.x") == {
        "avatar.render.mesh", "avatar.perception.landmarks", "avatar.render.mesh", "avatar.models.base",
        "avatar.fitting", "importlib", "avatar.training",
    }  # fmt: skip
    assert imports("from . import flame\n", "avatar.models.__init__") == {"avatar.models.flame"}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    assert (AVATAR / layer).is_dir()
    assert violations(layer) == []
