"""Layering: a layer imports only the layers below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pivotlab

LAYERS = ("world", "zoo", "model", "data", "train", "evaluate", "analysis", "plan", "study")
# The modules below every layer (docs/architecture.md): any layer may import them, they
# import none of the layers nor the CLI, only each other.
BOTTOM = ("errors", "io", "images", "cache", "configtree", "probes", "lazy", "console")
SRC = Path(pivotlab.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """The pivotlab modules or packages one level below ``pivotlab`` that ``path`` imports."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pivotlab" and len(parts) > 1:
                modules.add(parts[1])
    return modules


def _imported_layers(path: Path) -> set[str]:
    return _imported_modules(path) & set(LAYERS)


def test_lower_layers_never_import_higher_ones() -> None:
    checked = 0
    for rank, layer in enumerate(LAYERS):
        for path in (SRC / layer).rglob("*.py") if (SRC / layer).is_dir() else []:
            higher = {name for name in _imported_layers(path) if LAYERS.index(name) > rank}
            assert not higher, f"{path.relative_to(SRC)} imports higher layer(s) {sorted(higher)}"
            checked += 1
    assert checked > 10


def test_the_modules_below_every_layer_import_only_each_other() -> None:
    for name in BOTTOM:
        above = _imported_modules(SRC / f"{name}.py") - set(BOTTOM)
        assert not above, f"{name}.py imports {sorted(above)}, which are not below every layer"


def test_every_top_level_module_is_below_the_layers_or_the_cli() -> None:
    top_level = {path.stem for path in SRC.glob("*.py")}
    assert top_level == {*BOTTOM, "__init__", "__main__", "cli"}
