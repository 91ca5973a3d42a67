"""The world's fixed vocabulary: shapes, colours, sizes, glyphs, words and lore.

Everything the generator can draw or say is listed here once, so questions, rendering,
ground truth and (later) tokenizers all agree. Changing anything in this file changes the
world: bump ``GENERATOR_VERSION`` in ``generate.py`` when you do.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "ring",
    "hexagon",
)

# Semantic-mask class ids: 0 is background, shapes follow in SHAPES order, then the two
# non-object classes used by chart and text scenes.
SEMANTIC_CLASSES: tuple[str, ...] = ("background", *SHAPES, "bar", "text")
BAR_CLASS = SEMANTIC_CLASSES.index("bar")
TEXT_CLASS = SEMANTIC_CLASSES.index("text")

# Saturated hues, far from the desaturated backgrounds; each object's colour is jittered
# around its prototype so a colour is a region of RGB space, not one value.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 120, 190),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
COLOR_JITTER = 18

# Object diameter as a fraction of a layout cell.
SIZES: dict[str, float] = {"small": 0.45, "medium": 0.7, "large": 0.95}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

# Background texture kinds and the adjective a caption uses for each.
BACKGROUNDS: dict[str, str] = {
    "noise": "mottled",
    "stripes": "striped",
    "checker": "checkered",
    "gradient": "shaded",
    "dots": "dotted",
}

# Glyphs drawn on objects. Pairs that are identical in small fonts (0/O, 1/I) are left
# out so every glyph has exactly one right reading; near-confusable pairs stay in, and
# feed the "confusable_glyph" negatives.
GLYPHS: tuple[str, ...] = tuple("23456789AEFHKOQX")
CONFUSABLE_GLYPHS: dict[str, str] = {
    "2": "Z",
    "3": "8",
    "4": "A",
    "5": "6",
    "6": "8",
    "7": "2",
    "8": "6",
    "9": "6",
    "A": "4",
    "E": "F",
    "F": "E",
    "H": "K",
    "K": "X",
    "O": "Q",
    "Q": "O",
    "X": "K",
}

# Short words and numbers for text scenes.
WORDS: tuple[str, ...] = (
    "moon",
    "ember",
    "frost",
    "tide",
    "stone",
    "leaf",
    "spark",
    "cloud",
    "gate",
    "wolf",
    "reed",
    "lamp",
    "dune",
    "mist",
    "fern",
    "bolt",
    "12",
    "27",
    "35",
    "48",
    "53",
    "64",
    "79",
    "86",
)

BAR_LABELS: tuple[str, ...] = tuple("ABCDEFGH")

# ---------------------------------------------------------------------------------------
# Lore: facts a model can only learn from text, used by the `knowledge` questions. Each
# table maps every key to exactly one value; balanced tables keep answers unguessable.
# ---------------------------------------------------------------------------------------
SIDES: dict[str, int] = {
    "circle": 0,
    "square": 4,
    "triangle": 3,
    "diamond": 4,
    "star": 10,
    "cross": 12,
    "ring": 0,
    "hexagon": 6,
}
GUILDS: dict[str, str] = {
    "circle": "tide",
    "ring": "tide",
    "square": "stone",
    "hexagon": "stone",
    "triangle": "ember",
    "star": "ember",
    "diamond": "frost",
    "cross": "frost",
}
GEMS: dict[str, str] = {
    "red": "ruby",
    "orange": "amber",
    "yellow": "topaz",
    "green": "emerald",
    "cyan": "aquamarine",
    "blue": "sapphire",
    "purple": "amethyst",
    "pink": "quartz",
}
# Shapes a coarse glance confuses, for "misperceived_shape" negatives of knowledge items.
LOOKALIKE_SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("hexagon", "ring"),
    "ring": ("circle", "hexagon"),
    "square": ("diamond", "hexagon", "cross"),
    "diamond": ("square", "triangle", "star"),
    "triangle": ("diamond", "star"),
    "star": ("cross", "hexagon"),
    "cross": ("star", "square"),
    "hexagon": ("circle", "square"),
}

# (shape, colour) combinations that never occur in train/val/test and are the point of
# the `holdout` split. A Latin-square choice: every shape and every colour loses exactly
# one partner, so no single attribute becomes rarer than another.
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    (shape, COLOR_NAMES[(3 * i + 1) % len(COLOR_NAMES)]) for i, shape in enumerate(SHAPES)
)


def allowed_colors(shape: str, heldout: bool) -> tuple[str, ...]:
    """Colours a ``shape`` may take: the held-out partner only when ``heldout`` is set."""
    return tuple(c for c in COLOR_NAMES if ((shape, c) in HELDOUT_COMBOS) == heldout)


def plural(shape: str) -> str:
    """English plural of a shape name ("cross" -> "crosses")."""
    return shape + ("es" if shape.endswith("s") else "s")


def lore_sentences() -> list[str]:
    """The world's lore as plain sentences, for text-only pretraining and tokenizers."""
    sentences = []
    for shape, sides in SIDES.items():
        noun = "no sides" if sides == 0 else f"{sides} sides"
        sentences.append(f"A {shape} has {noun}.")
    for shape, guild in GUILDS.items():
        sentences.append(f"Every {shape} belongs to the {guild} guild.")
    for color, gem in GEMS.items():
        sentences.append(f"The gemstone of {color} things is the {gem}.")
    return sentences
