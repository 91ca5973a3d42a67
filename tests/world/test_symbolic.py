"""Symbolic scenes: each visual-token cell of an image written out as what it shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pivotlab.world import WorldConfig, generate
from pivotlab.world.symbolic import Cell, occlusion, symbolic_cells


def _object(index: int, center: tuple[float, float], z: int, **fields) -> dict:
    record = {
        "index": index,
        "shape": "circle",
        "color": "red",
        "size": "small",
        "center": list(center),
        "z": z,
        "bbox": [center[0] - 5, center[1] - 5, center[0] + 5, center[1] + 5],
        "area": 80,
        "visible_pixels": 80,
    }
    return {**record, **fields}


def test_each_object_fills_the_cell_of_its_centre_with_its_place_words() -> None:
    scene = {
        "size": 64,
        "objects": [
            _object(0, (10, 12), 0, color="blue", shape="star", size="large"),
            _object(1, (50, 50), 1),
        ],
    }
    cells = symbolic_cells(scene, 2)
    assert cells == [
        Cell("above", "left", "blue", "star", "large"),
        Cell("above", "right"),
        Cell("below", "left"),
        Cell("below", "right", "red", "circle", "small"),
    ]
    assert [c.empty for c in cells] == [False, True, True, False]


def test_a_finer_grid_keeps_the_halves_as_place_words() -> None:
    scene = {"size": 64, "objects": [_object(0, (20, 40), 0)]}
    cells = symbolic_cells(scene, 4)
    assert len(cells) == 16
    assert [i for i, c in enumerate(cells) if not c.empty] == [2 * 4 + 1]
    assert (cells[9].row, cells[9].column) == ("below", "left")
    assert (cells[2].row, cells[2].column) == ("above", "right")


def test_an_occluded_pair_sharing_a_cell_shows_the_one_in_front() -> None:
    back = _object(0, (10, 10), 0, color="green", visible_pixels=40)
    front = _object(1, (14, 14), 1, color="pink")
    scene = {"size": 64, "objects": [back, front]}
    assert occlusion(back, scene["objects"]) == "hidden"
    assert occlusion(front, scene["objects"]) == "front"
    cell = symbolic_cells(scene, 2)[0]
    assert (cell.color, cell.occlusion) == ("pink", "front")


def test_an_object_that_hides_nothing_has_no_occlusion() -> None:
    far = _object(2, (50, 50), 2)
    back = _object(0, (10, 10), 0, visible_pixels=40)
    assert occlusion(far, [back, far]) is None


def test_odd_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        symbolic_cells({"size": 64, "objects": []}, 3)


def test_generated_tiny_scenes_put_every_visible_object_in_its_own_quadrant(
    tmp_path: Path,
) -> None:
    out = tmp_path / "tiny"
    generate(WorldConfig.from_preset("tiny", split="train", n=40, seed=2, probe_n=0), out)
    shown = total = 0
    for line in (out / "scenes.jsonl").read_text().splitlines():
        scene = json.loads(line)
        cells = symbolic_cells(scene, 2)
        described = {(c.color, c.shape, c.size) for c in cells if not c.empty}
        objects = {(o["color"], o["shape"], o["size"]) for o in scene["objects"]}
        assert described <= objects
        shown += len(described)
        total += len(objects)
    # Only the object behind an occluded pair that shares a quadrant is not shown.
    assert shown >= 0.85 * total
