"""Scene graphs and how they are sampled.

A scene is pure data (what is where); ``render.py`` turns it into pixels and masks and
``questions.py`` asks about it. Sampling is a pure function of a numpy ``Generator``, so a
scene depends only on its seed stream, never on what was generated before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pivotlab.world import vocab

MAX_OBJECTS = 6
MAX_COUNT = 4
GLYPH_PROBABILITY = 0.35
OVERLAP_PROBABILITY = 0.35
ROTATION_JITTER_DEG = 8.0
SHAPES_WITHOUT_GLYPH = frozenset({"ring"})
# Below about 7 px a glyph's strokes merge and some characters render no solid pixel at
# all: such objects carry no glyph (so OCR tasks need images of about 64 px or more).
MIN_TEXT_PX = 7
GLYPH_SCALE = 0.62

LAYOUTS: tuple[str, ...] = ("cells", "blocks")
# The blocks layout: every object fills whole layout cells (one visual token each when the
# layout grid is the encoder's patch grid), small and medium objects one cell, large ones a
# 2 x 2 block, and at least a quarter of the cells stay background. Diameters in cells.
BLOCK_DIAMETERS: dict[str, float] = {"small": 0.6, "medium": 0.95, "large": 1.9}
BLOCK_SPANS: dict[str, int] = {"small": 1, "medium": 1, "large": 2}
MIN_BACKGROUND_SHARE = 0.25
# How far a drawn shape reaches from its centre, in radii, at the largest rotation jitter
# (a cross's arm corners); an object's position jitter keeps this inside its block.
BLOCK_REACH = 1.1
# Only two large objects can overlap here (a one-cell object beside a large one is either
# inside it or apart from it), so a pair of them overlaps more often than in the cells
# layout, for enough front questions (docs/log.md, 2026-12-07).
BLOCK_OVERLAP_PROBABILITY = 0.7
BLOCK_TRIES = 50


def glyph_px(diameter: float) -> int:
    """Font size of a glyph drawn on an object of this diameter."""
    return round(GLYPH_SCALE * diameter)


@dataclass
class SceneObject:
    """One drawn object; ``bbox``, ``area`` and ``visible_pixels`` are filled by rendering."""

    index: int
    shape: str
    color: str
    size: str
    rgb: tuple[int, int, int]
    center: tuple[float, float]
    diameter: float
    rotation: float
    z: int
    glyph: str | None = None
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    area: int = 0
    visible_pixels: int = 0
    glyph_visible: float = 0.0

    @property
    def visible_fraction(self) -> float:
        return self.visible_pixels / self.area if self.area else 0.0

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "bbox": list(self.bbox),
            "z": self.z,
            "glyph": self.glyph,
            "center": [round(self.center[0], 2), round(self.center[1], 2)],
            "area": self.area,
            "visible_pixels": self.visible_pixels,
        }


@dataclass
class Bar:
    """One bar of a chart scene."""

    index: int
    label: str
    value: int
    color: str
    rgb: tuple[int, int, int]
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "label": self.label,
            "value": self.value,
            "color": self.color,
            "bbox": list(self.bbox),
        }


@dataclass
class TextSpec:
    """The rendered word or number of a text scene."""

    content: str
    color: str
    rgb: tuple[int, int, int]
    center: tuple[float, float]
    font_px: int
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)

    def to_json(self) -> dict:
        return {"content": self.content, "color": self.color, "bbox": list(self.bbox)}


@dataclass
class Background:
    """Parameters of a procedural background texture."""

    kind: str
    tone_a: tuple[int, int, int]
    tone_b: tuple[int, int, int]
    frequency: float
    angle: float
    noise_seed: int


@dataclass
class Scene:
    """A scene graph: everything needed to render it and to answer questions about it."""

    scene_id: str
    kind: str  # "objects" | "chart" | "text"
    size: int
    grid: int
    background: Background
    objects: list[SceneObject] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    text: TextSpec | None = None
    count_shape: str | None = None
    heldout: bool = False
    layout: str = "cells"

    @property
    def cell(self) -> float:
        return self.size / self.grid

    def to_json(self) -> dict:
        record: dict = {
            "scene_id": self.scene_id,
            "kind": self.kind,
            "size": self.size,
            "background": self.background.kind,
            "objects": [o.to_json() for o in self.objects],
        }
        if self.layout == "blocks":
            for json_object, (x, y) in zip(record["objects"], anchors(self), strict=True):
                json_object["anchor"] = [round(x, 2), round(y, 2)]
        if self.kind == "chart":
            record["chart"] = {"bars": [b.to_json() for b in self.bars]}
        if self.text is not None:
            record["text"] = self.text.to_json()
        record["heldout_combos"] = sorted(
            {
                f"{o.color} {o.shape}"
                for o in self.objects
                if (o.shape, o.color) in vocab.HELDOUT_COMBOS
            }
        )
        return record

    def copy(self, scene_id: str) -> Scene:
        """A deep copy under a new id (objects are mutable and must not be shared)."""
        return replace(
            self,
            scene_id=scene_id,
            objects=[replace(o) for o in self.objects],
            bars=[replace(b) for b in self.bars],
            text=replace(self.text) if self.text else None,
        )


def jittered_rgb(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    """The colour's prototype moved by a small random offset per channel."""
    base = np.array(vocab.COLORS[color])
    jitter = rng.integers(-vocab.COLOR_JITTER, vocab.COLOR_JITTER + 1, size=3)
    r, g, b = np.clip(base + jitter, 0, 255).tolist()
    return int(r), int(g), int(b)


def sample_background(rng: np.random.Generator) -> Background:
    """Two desaturated tones and a texture kind; objects stay more saturated than this."""
    kind = _pick(rng, list(vocab.BACKGROUNDS))
    tones = []
    for _ in range(2):
        gray = int(rng.integers(70, 191))
        tint = rng.integers(-14, 15, size=3)
        r, g, b = np.clip(gray + tint, 0, 255).tolist()
        tones.append((int(r), int(g), int(b)))
    return Background(
        kind=kind,
        tone_a=tones[0],
        tone_b=tones[1],
        frequency=float(rng.uniform(2.5, 7.0)),
        angle=float(rng.uniform(0, np.pi)),
        noise_seed=int(rng.integers(2**31)),
    )


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_shapes(rng: np.random.Generator, grid: int) -> tuple[list[str], str]:
    """The shapes of an objects scene, shuffled, and the shape repeated for counting."""
    max_objects = min(MAX_OBJECTS, grid * grid)
    count_shape = _pick(rng, vocab.SHAPES)
    count = int(rng.integers(1, min(MAX_COUNT, max_objects) + 1))
    n_other = int(rng.integers(0, max_objects - count + 1))
    other_shapes = [s for s in vocab.SHAPES if s != count_shape]
    shapes = [count_shape] * count + [_pick(rng, other_shapes) for _ in range(n_other)]
    return [shapes[i] for i in rng.permutation(len(shapes))], count_shape


def sample_object_scene(
    rng: np.random.Generator,
    scene_id: str,
    size: int,
    grid: int,
    heldout: bool,
    layout: str = "cells",
) -> Scene:
    """1-6 objects on a textured background.

    One shape (``count_shape``) is repeated 1-4 times with a uniform count, so counting
    answers are balanced; the rest use other shapes. Objects sit in distinct layout cells
    with jitter, except that one object may be moved to partly overlap another (occlusion).
    With ``heldout`` one object takes a held-out (shape, colour) combination; otherwise
    none does. The ``blocks`` layout places objects on whole cells instead
    (``sample_block_scene``).
    """
    if layout == "blocks":
        return sample_block_scene(rng, scene_id, size, grid, heldout)
    shapes, count_shape = sample_shapes(rng, grid)
    n = len(shapes)
    heldout_index = int(rng.integers(n)) if heldout else -1
    cells = grid * grid
    cell_ids = rng.permutation(cells)[:n]
    z_order = rng.permutation(n)
    cell = size / grid
    objects = []
    for i, shape in enumerate(shapes):
        color = _pick(rng, vocab.allowed_colors(shape, heldout=i == heldout_index))
        size_name = _pick(rng, vocab.SIZE_NAMES)
        diameter = vocab.SIZES[size_name] * cell
        slack = max(cell - diameter, 0.0) / 2 * 0.9
        cx = (cell_ids[i] % grid + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (cell_ids[i] // grid + 0.5) * cell + rng.uniform(-slack, slack)
        objects.append(
            _drawn_object(rng, i, shape, color, size_name, diameter, (cx, cy), int(z_order[i]))
        )
    if n >= 2 and rng.random() < OVERLAP_PROBABILITY:
        _overlap_pair(rng, objects, size)
    return Scene(
        scene_id=scene_id,
        kind="objects",
        size=size,
        grid=grid,
        background=sample_background(rng),
        objects=objects,
        count_shape=count_shape,
        heldout=heldout,
    )


def _drawn_object(
    rng: np.random.Generator,
    index: int,
    shape: str,
    color: str,
    size_name: str,
    diameter: float,
    center: tuple[float, float],
    z: int,
) -> SceneObject:
    """An object placed at ``center``: its glyph (where one fits), jittered colour and
    rotation drawn from ``rng``, in that order."""
    glyph = None
    can_carry_glyph = glyph_px(diameter) >= MIN_TEXT_PX and shape not in SHAPES_WITHOUT_GLYPH
    if can_carry_glyph and rng.random() < GLYPH_PROBABILITY:
        glyph = _pick(rng, vocab.GLYPHS)
    return SceneObject(
        index=index,
        shape=shape,
        color=color,
        size=size_name,
        rgb=jittered_rgb(rng, color),
        center=(float(center[0]), float(center[1])),
        diameter=float(diameter),
        rotation=float(rng.uniform(-ROTATION_JITTER_DEG, ROTATION_JITTER_DEG)),
        z=z,
        glyph=glyph,
    )


def _overlap_pair(rng: np.random.Generator, objects: list[SceneObject], size: int) -> None:
    """Move one object so it partly overlaps another.

    The centres end up ``max(r) + min(r)/4`` apart, so the smaller object's centre lies
    just outside the larger one and about half of it stays visible whichever is in front.
    """
    a, b = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
    ra, rb = objects[a].diameter / 2, objects[b].diameter / 2
    distance = max(ra, rb) + 0.25 * min(ra, rb)
    angle = rng.uniform(0, 2 * np.pi)
    cx = objects[a].center[0] + distance * np.cos(angle)
    cy = objects[a].center[1] + distance * np.sin(angle)
    cx = float(np.clip(cx, rb, size - rb))
    cy = float(np.clip(cy, rb, size - rb))
    objects[b].center = (cx, cy)


def sample_block_scene(
    rng: np.random.Generator, scene_id: str, size: int, grid: int, heldout: bool
) -> Scene:
    """1-6 objects on whole cells of a ``grid`` x ``grid`` layout (``LAYOUTS``' "blocks").

    Counting and held-out combinations are drawn as in ``sample_object_scene``. Sizes are
    drawn uniformly and kept only if the objects leave ``MIN_BACKGROUND_SHARE`` of the
    cells empty and their blocks fit; large objects are placed first, and with
    ``BLOCK_OVERLAP_PROBABILITY`` the second large object is placed one cell away from the first
    (sideways, up, down or diagonally), so that the one in front hides part of the other.
    """
    shapes, count_shape = sample_shapes(rng, grid)
    n = len(shapes)
    heldout_index = int(rng.integers(n)) if heldout else -1
    z_order = rng.permutation(n)
    sizes, places = _block_layout(rng, n, grid)
    cell = size / grid
    objects = []
    for i, shape in enumerate(shapes):
        color = _pick(rng, vocab.allowed_colors(shape, heldout=i == heldout_index))
        span = BLOCK_SPANS[sizes[i]]
        diameter = BLOCK_DIAMETERS[sizes[i]] * cell
        slack = max(span * cell - BLOCK_REACH * diameter, 0.0) / 2
        row, column = places[i]
        cx = (column + span / 2) * cell + rng.uniform(-slack, slack)
        cy = (row + span / 2) * cell + rng.uniform(-slack, slack)
        objects.append(
            _drawn_object(rng, i, shape, color, sizes[i], diameter, (cx, cy), int(z_order[i]))
        )
    return Scene(
        scene_id=scene_id,
        kind="objects",
        size=size,
        grid=grid,
        background=sample_background(rng),
        objects=objects,
        count_shape=count_shape,
        heldout=heldout,
        layout="blocks",
    )


def _block_layout(
    rng: np.random.Generator, n: int, grid: int
) -> tuple[list[str], list[tuple[int, int]]]:
    """Sizes and block corners (row, column) of ``n`` objects on a ``grid`` x ``grid``
    layout; after ``BLOCK_TRIES`` failed draws, one-cell sizes only (which always fit)."""
    budget = int(grid * grid * (1 - MIN_BACKGROUND_SHARE))
    for _ in range(BLOCK_TRIES):
        sizes = [_pick(rng, vocab.SIZE_NAMES) for _ in range(n)]
        if sum(BLOCK_SPANS[s] ** 2 for s in sizes) > budget:
            continue
        places = _place_blocks(rng, sizes, grid)
        if places is not None:
            return sizes, places
    sizes = [_pick(rng, [s for s in vocab.SIZE_NAMES if BLOCK_SPANS[s] == 1]) for _ in range(n)]
    places = _place_blocks(rng, sizes, grid)
    assert places is not None, "one-cell objects fit whenever the budget admits them"
    return sizes, places


def _place_blocks(
    rng: np.random.Generator, sizes: list[str], grid: int
) -> list[tuple[int, int]] | None:
    """Block corners for ``sizes``, large first (the second may overlap the first), or
    None when a block finds no free place."""
    free = np.ones((grid, grid), dtype=bool)
    places: dict[int, tuple[int, int]] = {}
    large = [i for i, s in enumerate(sizes) if BLOCK_SPANS[s] > 1]
    order = large + [i for i, s in enumerate(sizes) if BLOCK_SPANS[s] == 1]
    overlap = len(large) >= 2 and rng.random() < BLOCK_OVERLAP_PROBABILITY
    for position, i in enumerate(order):
        span = BLOCK_SPANS[sizes[i]]
        if overlap and position == 1:
            options = _beside(places[order[0]], span, grid)
        else:
            options = [
                (r, c)
                for r in range(grid - span + 1)
                for c in range(grid - span + 1)
                if free[r : r + span, c : c + span].all()
            ]
        if not options:
            return None
        r, c = options[int(rng.integers(len(options)))]
        free[r : r + span, c : c + span] = False
        places[i] = (r, c)
    return [places[i] for i in range(len(sizes))]


def _beside(corner: tuple[int, int], span: int, grid: int) -> list[tuple[int, int]]:
    """Corners one cell away from ``corner`` (any of eight directions) inside the grid."""
    row, column = corner
    return [
        (row + dr, column + dc)
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
        if (dr, dc) != (0, 0) and 0 <= row + dr <= grid - span and 0 <= column + dc <= grid - span
    ]


def block_of(obj: SceneObject, cell: float, grid: int) -> list[tuple[int, int]]:
    """The (row, column) cells an object of the blocks layout fills, from its centre."""
    span = BLOCK_SPANS[obj.size]
    top = min(max(round(obj.center[1] / cell - span / 2), 0), grid - span)
    left = min(max(round(obj.center[0] / cell - span / 2), 0), grid - span)
    return [(top + dr, left + dc) for dr in range(span) for dc in range(span)]


def anchors(scene: Scene) -> list[tuple[float, float]]:
    """Each object's anchor in a blocks-layout scene: the centre of the first cell of its
    block (raster order) that no object in front of it covers, so that every object has a
    cell of its own that shows it (``pivotlab.world.symbolic``)."""
    blocks = [block_of(o, scene.cell, scene.grid) for o in scene.objects]
    points = []
    for obj, block in zip(scene.objects, blocks, strict=True):
        covered = {
            c for other, b in zip(scene.objects, blocks, strict=True) if other.z > obj.z for c in b
        }
        row, column = next((c for c in block if c not in covered), block[0])
        points.append(((column + 0.5) * scene.cell, (row + 0.5) * scene.cell))
    return points


def sample_chart_scene(
    rng: np.random.Generator, scene_id: str, size: int, grid: int, max_value: int
) -> Scene:
    """A bar chart: 3-5 bars with distinct values, labels and colours."""
    n_bars = int(rng.integers(3, 6))
    labels = sorted(rng.choice(vocab.BAR_LABELS, size=n_bars, replace=False).tolist())
    values = rng.choice(np.arange(1, max_value + 1), size=n_bars, replace=False).tolist()
    colors = rng.choice(vocab.COLOR_NAMES, size=n_bars, replace=False).tolist()
    bars = [
        Bar(index=i, label=label, value=int(value), color=color, rgb=jittered_rgb(rng, color))
        for i, (label, value, color) in enumerate(zip(labels, values, colors, strict=True))
    ]
    gray = int(rng.integers(225, 250))
    background = Background("plain", (gray, gray, gray), (gray, gray, gray), 0.0, 0.0, 0)
    return Scene(scene_id, "chart", size, grid, background, bars=bars)


def sample_text_scene(rng: np.random.Generator, scene_id: str, size: int, grid: int) -> Scene:
    """A short word or number, in a saturated colour, on a textured background."""
    content = _pick(rng, vocab.WORDS)
    color = _pick(rng, vocab.COLOR_NAMES)
    font_px = max(MIN_TEXT_PX, round(size * rng.uniform(0.2, 0.26)))
    half_width = 0.32 * font_px * len(content)
    slack_x = max(size / 2 - half_width - 1, 0)
    slack_y = max(size / 2 - font_px, 0)
    center = (
        float(size / 2 + rng.uniform(-slack_x, slack_x)),
        float(size / 2 + rng.uniform(-slack_y, slack_y)),
    )
    text = TextSpec(content, color, jittered_rgb(rng, color), center, font_px)
    return Scene(scene_id, "text", size, grid, sample_background(rng), text=text)
