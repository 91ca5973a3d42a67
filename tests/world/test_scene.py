"""Scene sampling: the blocks layout, where every object fills whole cells (visual tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pivotlab.world import WorldConfig, WorldConfigError, generate
from pivotlab.world.generate import render_scenes
from pivotlab.world.scene import BLOCK_SPANS, anchors, block_of
from pivotlab.world.symbolic import symbolic_cells

PATCH = 16  # the tiny16 world's 64-px images, in the default zoo's 16-px patches


def _blocks_scenes(n: int = 120):
    cfg = WorldConfig.from_preset("tiny16", split="train", n=n, seed=3, probe_n=0)
    return list(render_scenes(cfg, range(n)))


def _cell_of(point: tuple[float, float]) -> tuple[int, int]:
    return int(point[1] // PATCH), int(point[0] // PATCH)


def test_every_object_stays_inside_its_block_of_whole_cells() -> None:
    for scene, rendered in _blocks_scenes():
        for obj in scene.objects:
            block = block_of(obj, scene.cell, scene.grid)
            assert len(block) == BLOCK_SPANS[obj.size] ** 2
            rows, columns = np.nonzero(rendered.instances == obj.index + 1)
            drawn = {(int(r) // PATCH, int(c) // PATCH) for r, c in zip(rows, columns, strict=True)}
            assert drawn <= set(block), (scene.scene_id, obj.index)


def test_every_image_keeps_a_quarter_of_its_tokens_background() -> None:
    for scene, rendered in _blocks_scenes():
        empty = (rendered.instances == 0).reshape(4, PATCH, 4, PATCH).all(axis=(1, 3))
        assert empty.sum() >= 4, scene.scene_id


def test_sizes_fill_one_cell_or_a_two_by_two_block_and_large_pairs_overlap() -> None:
    scenes = _blocks_scenes()
    sizes = {obj.size for scene, _ in scenes for obj in scene.objects}
    assert sizes == {"small", "medium", "large"}
    overlapping = [r for _, r in scenes if any(shared > 0 for shared in r.overlaps.values())]
    assert len(overlapping) >= 10


def test_each_object_owns_a_cell_that_shows_it_even_when_partly_hidden() -> None:
    hidden_seen = 0
    for scene, rendered in _blocks_scenes():
        record = scene.to_json()
        cells = symbolic_cells(record, scene.grid)
        assert sum(not c.empty for c in cells) == len(scene.objects), scene.scene_id
        for obj, anchor in zip(scene.objects, anchors(scene), strict=True):
            row, column = _cell_of(anchor)
            patch = rendered.instances[
                row * PATCH : (row + 1) * PATCH, column * PATCH : (column + 1) * PATCH
            ]
            assert (patch == obj.index + 1).any(), (scene.scene_id, obj.index)
            hidden_seen += cells[row * scene.grid + column].occlusion == "hidden"
    assert hidden_seen >= 5


def test_the_cells_layout_writes_no_anchor(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    generate(WorldConfig.from_preset("tiny", split="train", n=6, seed=2, probe_n=0), out)
    scenes = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    assert all("anchor" not in o for s in scenes for o in s["objects"])


def test_a_generated_blocks_split_has_front_questions_and_mmvp_pairs(tmp_path: Path) -> None:
    out = tmp_path / "tiny16"
    generate(WorldConfig.from_preset("tiny16", split="test", n=80, seed=0, probe_n=0), out)
    tasks = [json.loads(line)["task"] for line in (out / "vqa.jsonl").read_text().splitlines()]
    assert tasks.count("front") >= 5
    assert tasks.count("mmvp") >= 6


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"layout": "rows"}, "unknown layout 'rows'"), ({"grid": 2}, "grid of at least 4")],
)
def test_bad_layouts_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(WorldConfigError, match=message):
        WorldConfig.from_preset("tiny16", **fields)
