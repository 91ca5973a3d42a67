"""The zoo's recipes: each part's spec and the data recipe a zoo's parts share.

``ZOOS`` holds the two zoos (``default``, the tiny world's; ``tiny``, seconds for tests);
a part's cache key hashes its spec and data recipe (``zoo/entries.py``), so a changed
recipe builds a new entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pivotlab.errors import PivotlabError

PARTS: tuple[str, ...] = ("enc-s", "enc-s-2k", "enc-m", "vfm", "lm-s", "lm-m")


class ZooError(PivotlabError):
    """A zoo request that cannot be served (unknown part or zoo, failed checks)."""


@dataclass(frozen=True)
class EncoderSpec:
    """A SigLIP dual encoder (image tower ``width`` x ``depth`` with ``heads``, text tower
    ``text_width`` x ``text_depth``), pretrained for ``steps`` optimizer steps of
    ``batch_size`` world images with their captions and symbolic cells at ``learning_rate``."""

    width: int
    depth: int
    heads: int
    steps: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    text_width: int = 64
    text_depth: int = 2


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher, a DINOv2-style vision model (``width`` x ``depth`` with ``heads``)
    trained for ``steps`` optimizer steps of ``batch_size`` images at ``learning_rate`` to
    classify each patch: the frozen vision foundation model VIRAL aligns to."""

    width: int
    depth: int
    heads: int
    steps: int
    batch_size: int = 64
    learning_rate: float = 1e-3


@dataclass(frozen=True)
class LMSpec:
    """A language model: ``steps`` optimizer steps, each on ``symbolic_batch``
    conversations of up to ``turns`` questions about symbolic scenes (every task drawn
    equally often with ``balance_tasks``), plus ``batch_size`` blocks of world text every
    ``text_every`` steps.

    Then a curriculum: ``focus_steps`` on ``focus_tasks`` alone, ``settle_steps`` of the
    first mix again, then each of ``later_phases`` in order (``(tasks, steps)``: those
    tasks alone, or the first mix for ``()``), each phase with its own warm-up and cosine
    decay. Relation, the one task that needs where objects are, stayed at chance in every
    balanced or half-relation mix, and was learnt when trained alone (docs/log.md,
    2026-12-04).

    With ``start_from_zoo``, the model starts from the same part of that zoo (built or
    copied first) instead of a seeded initialisation: a curriculum from few cells to many.
    From scratch on 16 cells every look-up stayed at chance in the mix and needed a phase
    of its own; from the four-cell LM, 1,000 steps of the mix taught them (docs/log.md,
    2026-12-07)."""

    width: int
    depth: int
    heads: int
    kv_heads: int
    steps: int
    batch_size: int = 32
    block: int = 64
    learning_rate: float = 1e-3
    symbolic_batch: int = 64
    turns: int = 1
    text_every: int = 8
    balance_tasks: bool = True
    focus_tasks: tuple[str, ...] = ()
    focus_steps: int = 0
    settle_steps: int = 0
    later_phases: tuple[tuple[tuple[str, ...], int], ...] = ()
    start_from_zoo: str = ""

    def phases(self) -> list[tuple[tuple[str, ...], int]]:
        """The curriculum in order, as ``(tasks, steps)``: ``()`` is the first mix."""
        phases = [((), self.steps)]
        if self.focus_steps:
            phases.append((self.focus_tasks, self.focus_steps))
        if self.settle_steps:
            phases.append(((), self.settle_steps))
        return phases + list(self.later_phases)


# Spec fields added after zoo parts were shipped: a spec's identity holds them only when
# they differ from their default, so the shipped parts' keys (and the weights found under
# them) stay as they were.
_FIELDS_KEYED_WHEN_SET = ("later_phases", "start_from_zoo")


def spec_identity(spec: EncoderSpec | TeacherSpec | LMSpec) -> dict:
    """The fields of ``spec`` that go into its part's key."""
    identity = asdict(spec)
    for field in fields(spec):
        if field.name in _FIELDS_KEYED_WHEN_SET and getattr(spec, field.name) == field.default:
            del identity[field.name]
    return identity


@dataclass(frozen=True)
class ZooConfig:
    """A zoo: its parts' specs and the data recipe they share, drawn from the world preset
    ``world`` (``pivotlab.world.generate.PRESETS``).

    ``cell_place_words``: the LMs' symbolic cells also name their place by words (the
    relation words of their halves); off, a cell's place is only its position among the
    cells, as a visual token's is in the MLLM (``pretraining.cell_token_ids``)."""

    name: str
    parts: dict[str, EncoderSpec | TeacherSpec | LMSpec]
    world: str = "tiny"
    image_size: int = 64
    patch_size: int = 8
    pretrain_images: int = 6000
    probe_train: int = 1000
    probe_test: int = 500
    text_scenes: int = 2000
    heldout_text_scenes: int = 200
    symbolic_scenes: int = 40000
    heldout_symbolic_scenes: int = 300
    cell_place_words: bool = True
    enforce_checks: bool = True

    @property
    def grid(self) -> int:
        """Visual tokens per side: the symbolic scenes' cells per side."""
        return self.image_size // self.patch_size

    def data_recipe(self, part: str) -> dict:
        """The data fields that determine ``part``'s weights (a language model's do not
        move when an image recipe does, and the other way round)."""
        text = (
            "text_scenes",
            "heldout_text_scenes",
            "symbolic_scenes",
            "heldout_symbolic_scenes",
            "cell_place_words",
        )
        images = ("pretrain_images", "probe_train", "probe_test")
        drop = images if isinstance(self.parts[part], LMSpec) else text
        recipe = asdict(self)
        for name in ("parts", "name", "enforce_checks", *drop):
            del recipe[name]
        if recipe["world"] == "tiny":
            # Zoos on the tiny world were keyed before ``world`` existed: their keys (and
            # the shipped parts found under them) stay as they were.
            del recipe["world"]
        if recipe.get("cell_place_words") is True:
            # Keyed only when off, so the zoos keyed before it existed keep their keys.
            del recipe["cell_place_words"]
        return recipe


# The default zoo's LM curriculum: relation alone, then the balanced mix again (LMSpec).
_RELATION = {"focus_tasks": ("relation",), "focus_steps": 1000, "settle_steps": 1000}
# The tiny zoo's language models train for seconds on a handful of batches, each phase.
_SECONDS_LM = {
    "kv_heads": 1,
    "steps": 3,
    "batch_size": 4,
    "block": 32,
    "symbolic_batch": 4,
    "focus_tasks": ("exists",),
    "focus_steps": 2,
    "settle_steps": 2,
    "later_phases": ((("count",), 2), ((), 1)),
}

_DEFAULT_PARTS: dict[str, EncoderSpec | TeacherSpec | LMSpec] = {
    "enc-s": EncoderSpec(width=96, depth=4, heads=3, steps=6000),
    # enc-s stopped at a third of its pretraining: the transplant's positive control
    # (a weaker encoder of the same shape, docs/study.md, The transplant's control).
    "enc-s-2k": EncoderSpec(width=96, depth=4, heads=3, steps=2000),
    "enc-m": EncoderSpec(width=128, depth=6, heads=4, steps=9000),
    "vfm": TeacherSpec(width=128, depth=4, heads=4, steps=2000),
    "lm-s": LMSpec(width=128, depth=4, heads=4, kv_heads=2, steps=6000, **_RELATION),
    "lm-m": LMSpec(width=192, depth=6, heads=6, kv_heads=2, steps=8000, **_RELATION),
}

# The 16-token zoo's LMs continue the default zoo's (four cells) on 16-cell scenes, then the
# same relation curriculum: from scratch, the balanced mix at 16 cells never taught a look-up
# (docs/log.md, 2026-12-07). Then colour alone and the mix again: after the relation phases
# colour was the weakest look-up (0.50 held out), and 500 steps of it alone lifted it to 0.96
# (docs/log.md, 2026-12-07, the colour phase).
_FEW_TO_MANY_CELLS = {
    "steps": 2000,
    "start_from_zoo": "default",
    **_RELATION,
    "later_phases": ((("color",), 500), ((), 500)),
}
_TOKENS16_PARTS: dict[str, EncoderSpec | TeacherSpec | LMSpec] = {
    **_DEFAULT_PARTS,
    "lm-s": LMSpec(width=128, depth=4, heads=4, kv_heads=2, **_FEW_TO_MANY_CELLS),
    "lm-m": LMSpec(width=192, depth=6, heads=6, kv_heads=2, **_FEW_TO_MANY_CELLS),
}

ZOOS: dict[str, ZooConfig] = {
    # The tiny world's zoo (docs/zoo.md): 64-px images in 32-px patches, so an image is
    # four visual tokens, one per quadrant of the 2 x 2 layout.
    "default": ZooConfig(
        name="default",
        parts=_DEFAULT_PARTS,
        patch_size=32,
        pretrain_images=12000,
    ),
    # The same recipes on the tiny16 world (docs/zoo.md, The 16-token zoo): 64-px images in
    # 16-px patches, so an image is 16 visual tokens, one per cell of the 4 x 4 blocks
    # layout; its LMs start from the default zoo's and read a cell's place from its order
    # alone, as an MLLM can read a visual token's (docs/log.md, 2026-12-07).
    "tokens16": ZooConfig(
        name="tokens16",
        parts=_TOKENS16_PARTS,
        world="tiny16",
        patch_size=16,
        pretrain_images=12000,
        cell_place_words=False,
    ),
    # Seconds, for tests: loadable checkpoints and manifests, no quality claims.
    "tiny": ZooConfig(
        name="tiny",
        parts={
            "enc-s": EncoderSpec(
                width=32, depth=1, heads=2, steps=3, batch_size=8, text_width=32, text_depth=1
            ),
            "enc-s-2k": EncoderSpec(
                width=32, depth=1, heads=2, steps=2, batch_size=8, text_width=32, text_depth=1
            ),
            "enc-m": EncoderSpec(
                width=48, depth=2, heads=2, steps=3, batch_size=8, text_width=32, text_depth=1
            ),
            "vfm": TeacherSpec(width=32, depth=1, heads=2, steps=3, batch_size=8),
            "lm-s": LMSpec(width=32, depth=1, heads=2, **_SECONDS_LM),
            "lm-m": LMSpec(width=48, depth=2, heads=2, **_SECONDS_LM),
        },
        image_size=32,
        pretrain_images=48,
        probe_train=48,
        probe_test=24,
        text_scenes=12,
        heldout_text_scenes=6,
        symbolic_scenes=12,
        heldout_symbolic_scenes=6,
        enforce_checks=False,
    ),
}


def zoo_recipe(name: str) -> ZooConfig:
    """The zoo called ``name``; ``ZooError`` naming the zoos for another name."""
    if name not in ZOOS:
        raise ZooError(f"unknown zoo {name!r}; zoos are {', '.join(ZOOS)}")
    return ZOOS[name]


def part_cost(zoo: ZooConfig, part: str) -> str:
    """What building a part takes, before it is built: its optimizer steps."""
    spec = zoo.parts[part]
    steps = sum(s for _, s in spec.phases()) if isinstance(spec, LMSpec) else spec.steps
    cost = f"{steps:,d} optimizer steps" if steps else "a short build"
    if isinstance(spec, LMSpec) and spec.start_from_zoo:
        cost += f" from the {spec.start_from_zoo} zoo's {part}"
    return cost
