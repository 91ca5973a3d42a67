"""Layering: a layer imports only the layers below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pivotlab

LAYERS = ("world", "zoo", "model", "data", "train", "evaluate", "analysis", "plan", "study")
SRC = Path(pivotlab.__file__).parent


def _imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pivotlab" and len(parts) > 1 and parts[1] in LAYERS:
                layers.add(parts[1])
    return layers


def test_lower_layers_never_import_higher_ones() -> None:
    checked = 0
    for rank, layer in enumerate(LAYERS):
        for path in (SRC / layer).rglob("*.py") if (SRC / layer).is_dir() else []:
            higher = {name for name in _imported_layers(path) if LAYERS.index(name) > rank}
            assert not higher, f"{path.relative_to(SRC)} imports higher layer(s) {sorted(higher)}"
            checked += 1
    assert checked > 10
