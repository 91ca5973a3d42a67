"""Symbolic scenes: what each visual-token cell of an image shows, as words.

A tiny MLLM reads an image as a grid of visual tokens. Its symbolic scene is the same grid
with each cell's content written out: the object whose centre lies in the cell (colour,
shape, size, whether it is partly hidden behind another object or hides one), and the
cell's place in the image, or nothing. The zoo's language models learn to answer world
questions from symbolic scenes before they ever see pixels (reasoning learned as text), and
the zoo's encoders learn to put the same content in each patch token (perception); Stage 1
then only has to map one onto the other (docs/zoo.md).

Cells are in raster order, the order of a ViT's patch tokens. An object belongs to the cell
holding its anchor (in the blocks layout, the first cell of its block that nothing in front
covers; ``pivotlab.world.scene.anchors``) or else its centre; when two share a cell (an
occluded pair), the one in front is the cell's object. Place words are the vertical and
horizontal halves of the image the cell lies in, named by the relation words the questions
use ("above", "left"): a cell's place is a fact about the image, and these are words the
language model already answers with.
"""

from __future__ import annotations

from dataclasses import dataclass

# An object whose visible pixels are below this share of its area is partly hidden.
HIDDEN_BELOW = 0.95
OCCLUSIONS: tuple[str, ...] = ("hidden", "front")


@dataclass(frozen=True)
class Cell:
    """What one visual-token cell shows: an object (``color`` is None for an empty cell)
    and the cell's place in the image."""

    row: str  # "above" (upper half) or "below"
    column: str  # "left" or "right"
    color: str | None = None
    shape: str | None = None
    size: str | None = None
    occlusion: str | None = None  # "hidden" (behind another object), "front" (hides one)

    @property
    def empty(self) -> bool:
        return self.color is None


def _overlap(a: dict, b: dict) -> bool:
    """Whether two objects' boxes (``[x0, y0, x1, y1)``) intersect."""
    return (
        a["bbox"][0] < b["bbox"][2]
        and b["bbox"][0] < a["bbox"][2]
        and (a["bbox"][1] < b["bbox"][3] and b["bbox"][1] < a["bbox"][3])
    )


def occlusion(obj: dict, objects: list[dict]) -> str | None:
    """``hidden`` for an object partly covered by another, ``front`` for one that covers a
    hidden object, else None."""
    if obj["visible_pixels"] < HIDDEN_BELOW * obj["area"]:
        return "hidden"
    hidden = [o for o in objects if o["visible_pixels"] < HIDDEN_BELOW * o["area"]]
    covers = any(o["z"] < obj["z"] and _overlap(obj, o) for o in hidden)
    return "front" if covers else None


def symbolic_cells(scene: dict, grid: int) -> list[Cell]:
    """The ``grid`` x ``grid`` cells of a scene record (a line of ``scenes.jsonl``), in
    raster order. ``grid`` must be even, so every cell lies in one half of each axis."""
    if grid < 2 or grid % 2:
        raise ValueError(f"a symbolic grid must be even, got {grid}")
    side = scene["size"] / grid
    owner: dict[int, dict] = {}
    for obj in scene["objects"]:
        x, y = obj.get("anchor", obj["center"])
        cell = min(int(y // side), grid - 1) * grid + min(int(x // side), grid - 1)
        if cell not in owner or obj["z"] > owner[cell]["z"]:
            owner[cell] = obj
    cells = []
    for index in range(grid * grid):
        row, column = divmod(index, grid)
        place = {
            "row": "above" if row < grid // 2 else "below",
            "column": "left" if column < grid // 2 else "right",
        }
        obj = owner.get(index)
        if obj is None:
            cells.append(Cell(**place))
            continue
        cells.append(
            Cell(
                **place,
                color=obj["color"],
                shape=obj["shape"],
                size=obj["size"],
                occlusion=occlusion(obj, scene["objects"]),
            )
        )
    return cells
