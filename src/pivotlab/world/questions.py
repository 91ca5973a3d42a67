"""Questions about a scene, in four categories, with balanced answers.

Each task is a function ``(scene, rng) -> Item | None`` registered in ``TASKS``. An
``Item`` carries the question, the ground-truth answer, the task's answer space, the
objects it is about, a realistic wrong answer with its ``negative_type`` (for preference
pairs) and one-sentence rationales for both.

Balance is by construction, so a question-only model sits at chance: answers are drawn
uniformly (yes/no by coin, the relation before the pair of objects), come from attributes
sampled uniformly and independently of the wording, or are thinned by rejection where the
world is lopsided (several shapes have 0 or 4 sides). Referring expressions never name
the attribute a question is about (no "What colour is the red star?"), nor one that
correlates with the answer (no size words in size comparisons).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations

import numpy as np

from pivotlab.world import vocab
from pivotlab.world.render import Rendered
from pivotlab.world.scene import Scene, SceneObject, sample_shapes

CATEGORIES: tuple[str, ...] = ("general", "knowledge", "ocr_chart", "vision_centric")
YES_NO: tuple[str, ...] = ("yes", "no")
REFERABLE_VISIBILITY = 0.5
OCCLUDED_VISIBILITY = 0.3
GLYPH_VISIBILITY = 0.9

NEGATIVE_TYPES: tuple[str, ...] = (
    "hallucinated_object",
    "missed_object",
    "distractor_attribute",
    "wrong_attribute",
    "count_off_by_one",
    "flipped_relation",
    "flipped_size",
    "flipped_occlusion",
    "confusable_glyph",
    "misread_text",
    "second_tallest",
    "distractor_value",
    "misperceived_shape",
    "wrong_fact",
    "unrelated_choice",
    "on_policy",
)


@dataclass
class Item:
    """One question about one scene, before open / multiple-choice formatting."""

    task: str
    question: str
    answer: str
    answer_space: tuple[str, ...]
    negative: str
    negative_type: str
    rationale: str = ""
    negative_rationale: str = ""
    target_objects: list[int] = field(default_factory=list)
    # Explicit multiple-choice distractors for tasks without a closed answer space.
    distractors: tuple[str, ...] = ()
    pair_id: str | None = None


@dataclass(frozen=True)
class Task:
    """A family of questions: its category and the scene kinds it applies to."""

    name: str
    category: str
    kinds: tuple[str, ...]
    make: Callable[[Scene, Rendered, np.random.Generator], Item | None] | None


# ---------------------------------------------------------------------------------------
# Referring to objects
# ---------------------------------------------------------------------------------------
_DESCRIPTOR_ORDERS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color",),
    ("size",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color"),
    ("size", "color", "shape"),
)


def describe(obj: SceneObject, scene: Scene, attrs: tuple[str, ...]) -> str | None:
    """The shortest unique noun phrase for ``obj`` using only ``attrs`` (without article).

    Uniqueness is checked against every object, occluded ones included. ``None`` when no
    allowed combination singles the object out.
    """
    for keys in _DESCRIPTOR_ORDERS:
        if not set(keys) <= set(attrs):
            continue
        matches = [o for o in scene.objects if all(getattr(o, k) == getattr(obj, k) for k in keys)]
        if len(matches) == 1:
            words = [getattr(obj, k) for k in ("size", "color") if k in keys]
            words.append(obj.shape if "shape" in keys else "object")
            return " ".join(words)
    return None


ALL_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size")


def referable(scene: Scene) -> list[SceneObject]:
    """Objects visible enough to be asked about."""
    return [o for o in scene.objects if o.visible_fraction >= REFERABLE_VISIBILITY]


def choice(rng: np.random.Generator, items: list):
    """One element of ``items``, drawn with ``rng``."""
    return items[int(rng.integers(len(items)))]


def _pick_described(
    scene: Scene,
    rng: np.random.Generator,
    attrs: tuple[str, ...],
    candidates: list[SceneObject] | None = None,
) -> tuple[SceneObject, str] | None:
    pool = referable(scene) if candidates is None else candidates
    described = [(o, d) for o in pool if (d := describe(o, scene, attrs)) is not None]
    return choice(rng, described) if described else None


def _other_value(rng: np.random.Generator, space: tuple[str, ...], answer: str) -> str:
    return choice(rng, [v for v in space if v != answer])


def _distractor_or_random(
    rng: np.random.Generator, present: set[str], space: tuple[str, ...], answer: str
) -> tuple[str, str]:
    """A wrong value taken from another object in the image when there is one."""
    in_image = sorted(present - {answer})
    if in_image:
        return choice(rng, in_image), "distractor_attribute"
    return _other_value(rng, space, answer), "wrong_attribute"


def _yes_no_item(
    task: str,
    question: str,
    truth: bool,
    statements: tuple[str, str],
    negative_type: str,
    target_objects: list[int],
) -> Item:
    """A yes/no item; ``statements`` are the rationales for "yes" and for "no"."""
    answer, negative = ("yes", "no") if truth else ("no", "yes")
    return Item(
        task=task,
        question=question,
        answer=answer,
        answer_space=YES_NO,
        negative=negative,
        negative_type=negative_type,
        rationale=statements[0] if truth else statements[1],
        negative_rationale=statements[1] if truth else statements[0],
        target_objects=target_objects,
    )


def _article(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


# ---------------------------------------------------------------------------------------
# general
# ---------------------------------------------------------------------------------------
def ask_exists(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    present_shapes = {o.shape for o in scene.objects}
    present_combos = {(o.color, o.shape) for o in scene.objects}
    answer = choice(rng, list(YES_NO))
    by_color = rng.random() < 0.5
    targets: list[int] = []
    if answer == "yes":
        obj = choice(rng, referable(scene) or scene.objects)
        phrase = f"{obj.color} {obj.shape}" if by_color else obj.shape
        targets = [obj.index]
    elif by_color:
        absent = [
            (c, s)
            for s in vocab.SHAPES
            for c in vocab.allowed_colors(s, heldout=False)
            + (vocab.allowed_colors(s, True) if scene.heldout else ())
            if (c, s) not in present_combos
        ]
        color, shape = choice(rng, absent)
        phrase = f"{color} {shape}"
    else:
        phrase = choice(rng, [s for s in vocab.SHAPES if s not in present_shapes])
    return _yes_no_item(
        "exists",
        f"Is there {_article(phrase)} in the image?",
        answer == "yes",
        (f"There is {_article(phrase)} in the image.", f"There is no {phrase} in the image."),
        "missed_object" if answer == "yes" else "hallucinated_object",
        targets,
    )


def _ask_attribute(
    scene: Scene, rng: np.random.Generator, attribute: str, space: tuple[str, ...]
) -> Item | None:
    describe_with = tuple(a for a in ALL_ATTRIBUTES if a != attribute)
    picked = _pick_described(scene, rng, describe_with)
    if picked is None:
        return None
    obj, phrase = picked
    answer = getattr(obj, attribute)
    present = {getattr(o, attribute) for o in scene.objects}
    negative, negative_type = _distractor_or_random(rng, present, space, answer)
    if attribute == "color":
        question, template = f"What color is the {phrase}?", "The {p} is {v}."
    elif attribute == "shape":
        question, template = f"What shape is the {phrase}?", "The {p} is a {v}."
    else:
        question, template = f"Is the {phrase} small, medium or large?", "The {p} is {v}."
    return Item(
        task=attribute,
        question=question,
        answer=answer,
        answer_space=space,
        negative=negative,
        negative_type=negative_type,
        rationale=template.format(p=phrase, v=answer),
        negative_rationale=template.format(p=phrase, v=negative),
        target_objects=[obj.index],
    )


def ask_color(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    return _ask_attribute(scene, rng, "color", vocab.COLOR_NAMES)


def ask_shape(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    return _ask_attribute(scene, rng, "shape", vocab.SHAPES)


def ask_size(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    return _ask_attribute(scene, rng, "size", vocab.SIZE_NAMES)


def caption(scene: Scene) -> str:
    """A one-sentence description of the scene, objects listed left to right."""
    if scene.kind == "chart":
        tallest = max(scene.bars, key=lambda b: b.value)
        return chart_caption(len(scene.bars), tallest.label)
    if scene.kind == "text":
        assert scene.text is not None
        return f'The text "{scene.text.content}" written in {scene.text.color}.'
    objects = sorted(scene.objects, key=lambda o: o.center[0])
    return objects_caption(
        [(o.size, o.color, o.shape) for o in objects], vocab.BACKGROUNDS[scene.background.kind]
    )


def objects_caption(objects: list[tuple[str, str, str]], background: str) -> str:
    """ "A small red circle and a large blue star on a striped background." from
    (size, colour, shape) triples in reading order and the background's adjective."""
    phrases = [_article(" ".join(o)) for o in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    sentence = f"{listed} on {_article(background)} background."
    return sentence[0].upper() + sentence[1:]


def chart_caption(n_bars: int, tallest_label: str) -> str:
    return f"A bar chart with {n_bars} bars; bar {tallest_label} is the tallest."


def _hallucinated_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """The caption with one thing swapped for something that is not in the image."""
    if scene.kind == "objects":
        present = {o.shape for o in scene.objects}
        twin = scene.copy(scene.scene_id)
        victim = choice(rng, twin.objects)
        victim.shape = choice(rng, [s for s in vocab.SHAPES if s not in present])
        return caption(twin), "hallucinated_object"
    if scene.kind == "chart":
        twin = scene.copy(scene.scene_id)
        ranked = sorted(twin.bars, key=lambda b: b.value)
        ranked[-1].value, ranked[-2].value = ranked[-2].value, ranked[-1].value
        return caption(twin), "second_tallest"
    assert scene.text is not None
    twin = scene.copy(scene.scene_id)
    assert twin.text is not None
    twin.text.content = _other_value(rng, vocab.WORDS, scene.text.content)
    return caption(twin), "misread_text"


def _caption_distractors(scene: Scene, rng: np.random.Generator, answer: str) -> tuple[str, ...]:
    """Captions of independently sampled scenes of the same kind.

    Distractors are not edits of the true caption (not even the hallucinated negative):
    edits make the true caption the option closest to all others, which a text-only model
    picks without looking.
    """
    distractors: list[str] = []
    while len(distractors) < 3:
        if scene.kind == "objects":
            # Same shape statistics as real scenes (sample_shapes), without layout or pixels.
            shapes, _ = sample_shapes(rng, scene.grid)
            triples = [
                (
                    choice(rng, list(vocab.SIZE_NAMES)),
                    choice(rng, list(vocab.allowed_colors(s, False))),
                    s,
                )
                for s in shapes
            ]
            text = objects_caption(triples, choice(rng, list(vocab.BACKGROUNDS.values())))
        elif scene.kind == "chart":
            text = chart_caption(int(rng.integers(3, 6)), choice(rng, list(vocab.BAR_LABELS)))
        else:
            other = scene.copy("")
            assert other.text is not None
            other.text.content = choice(rng, list(vocab.WORDS))
            other.text.color = choice(rng, list(vocab.COLOR_NAMES))
            text = caption(other)
        if text != answer and text not in distractors:
            distractors.append(text)
    return tuple(distractors)


def ask_caption(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    answer = caption(scene)
    negative, negative_type = _hallucinated_caption(scene, rng)
    distractors = _caption_distractors(scene, rng, answer)
    return Item(
        task="caption",
        question="Describe the image in one short sentence.",
        answer=answer,
        answer_space=(),
        negative=negative,
        negative_type=negative_type,
        target_objects=[o.index for o in scene.objects],
        distractors=distractors,
    )


# ---------------------------------------------------------------------------------------
# knowledge: a coarse look plus a fact learnable only from text (vocab's lore tables)
# ---------------------------------------------------------------------------------------
SIDES_SPACE: tuple[str, ...] = tuple(str(v) for v in sorted(set(vocab.SIDES.values())))
GUILD_SPACE: tuple[str, ...] = tuple(sorted(set(vocab.GUILDS.values())))
GEM_SPACE: tuple[str, ...] = tuple(vocab.GEMS.values())


def _lookalike_negative(
    rng: np.random.Generator, shape: str, fact: Callable[[str], str]
) -> tuple[str, str] | None:
    """A shape a glance confuses with ``shape`` whose fact differs, and that fact."""
    options = [s for s in vocab.LOOKALIKE_SHAPES[shape] if fact(s) != fact(shape)]
    if not options:
        return None
    other = choice(rng, options)
    return other, fact(other)


def _ask_shape_fact(
    scene: Scene,
    rng: np.random.Generator,
    task: str,
    fact: Callable[[str], str],
    space: tuple[str, ...],
    question: str,
    because: str,
) -> Item | None:
    picked = _pick_described(scene, rng, ("color", "size"))
    if picked is None:
        return None
    obj, phrase = picked
    answer = fact(obj.shape)
    # Several shapes share some answers (0 and 4 sides): keep each answer with probability
    # 1 / (number of shapes giving it), which makes the kept answers uniform.
    multiplicity = sum(fact(s) == answer for s in vocab.SHAPES)
    if rng.random() >= 1.0 / multiplicity:
        return None
    lookalike = _lookalike_negative(rng, obj.shape, fact)
    if lookalike is None:
        wrong_shape = choice(rng, [s for s in vocab.SHAPES if fact(s) != answer])
        negative, negative_type = fact(wrong_shape), "wrong_fact"
    else:
        wrong_shape, negative = lookalike
        negative_type = "misperceived_shape"
    return Item(
        task=task,
        question=question.format(p=phrase),
        answer=answer,
        answer_space=space,
        negative=negative,
        negative_type=negative_type,
        rationale=because.format(p=phrase, s=obj.shape, v=answer),
        negative_rationale=because.format(p=phrase, s=wrong_shape, v=negative),
        target_objects=[obj.index],
    )


def ask_sides(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    return _ask_shape_fact(
        scene,
        rng,
        "sides",
        lambda s: str(vocab.SIDES[s]),
        SIDES_SPACE,
        "How many sides does the {p} have?",
        "The {p} is a {s}, and a {s} has {v} sides.",
    )


def ask_guild(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    return _ask_shape_fact(
        scene,
        rng,
        "guild",
        vocab.GUILDS.__getitem__,
        GUILD_SPACE,
        "Which guild does the {p} belong to?",
        "The {p} is a {s}, and every {s} belongs to the {v} guild.",
    )


def ask_gem(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    picked = _pick_described(scene, rng, ("shape", "size"))
    if picked is None:
        return None
    obj, phrase = picked
    answer = vocab.GEMS[obj.color]
    others = {o.color for o in scene.objects} - {obj.color}
    if others:
        wrong_color, negative_type = choice(rng, sorted(others)), "distractor_attribute"
    else:
        wrong_color = _other_value(rng, vocab.COLOR_NAMES, obj.color)
        negative_type = "wrong_fact"
    because = "The {p} is {c}, and the gemstone of {c} things is the {g}."
    return Item(
        task="gem",
        question=f"Which gemstone matches the color of the {phrase}?",
        answer=answer,
        answer_space=GEM_SPACE,
        negative=vocab.GEMS[wrong_color],
        negative_type=negative_type,
        rationale=because.format(p=phrase, c=obj.color, g=answer),
        negative_rationale=because.format(p=phrase, c=wrong_color, g=vocab.GEMS[wrong_color]),
        target_objects=[obj.index],
    )


# ---------------------------------------------------------------------------------------
# ocr_chart
# ---------------------------------------------------------------------------------------
def ask_glyph(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    legible = [
        o for o in referable(scene) if o.glyph is not None and o.glyph_visible >= GLYPH_VISIBILITY
    ]
    picked = _pick_described(scene, rng, ALL_ATTRIBUTES, legible)
    if picked is None:
        return None
    obj, phrase = picked
    assert obj.glyph is not None
    negative = vocab.CONFUSABLE_GLYPHS[obj.glyph]
    template = "The {p} shows the character {g}."
    return Item(
        task="glyph",
        question=f"What character is written on the {phrase}?",
        answer=obj.glyph,
        answer_space=vocab.GLYPHS,
        negative=negative,
        negative_type="confusable_glyph",
        rationale=template.format(p=phrase, g=obj.glyph),
        negative_rationale=template.format(p=phrase, g=negative),
        target_objects=[obj.index],
    )


def _closest_word(word: str) -> str:
    """The other vocabulary entry sharing the most characters (ties: first listed)."""

    def shared(other: str) -> int:
        return sum(a == b for a, b in zip(word, other, strict=False)) + len(set(word) & set(other))

    return max((w for w in vocab.WORDS if w != word), key=shared)


def ask_text(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    assert scene.text is not None
    answer = scene.text.content
    negative = _closest_word(answer)
    template = 'The image shows the text "{w}".'
    return Item(
        task="text",
        question="What word or number is written in the image?",
        answer=answer,
        answer_space=vocab.WORDS,
        negative=negative,
        negative_type="misread_text",
        rationale=template.format(w=answer),
        negative_rationale=template.format(w=negative),
        target_objects=[0],
    )


def ask_tallest_bar(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    ranked = sorted(scene.bars, key=lambda b: b.value, reverse=True)
    template = "Bar {b} has the largest value."
    return Item(
        task="tallest_bar",
        question="Which bar is the tallest?",
        answer=ranked[0].label,
        answer_space=vocab.BAR_LABELS,
        negative=ranked[1].label,
        negative_type="second_tallest",
        rationale=template.format(b=ranked[0].label),
        negative_rationale=template.format(b=ranked[1].label),
        target_objects=[ranked[0].index],
    )


def value_space(max_value: int) -> tuple[str, ...]:
    return tuple(str(v) for v in range(1, max_value + 1))


def make_ask_bar_value(max_value: int) -> Callable[[Scene, Rendered, np.random.Generator], Item]:
    """The bar-value task for charts whose values run from 1 to ``max_value``."""

    def ask_bar_value(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item:
        bar = choice(rng, scene.bars)
        neighbours = [b for b in scene.bars if abs(b.index - bar.index) == 1]
        negative = str(choice(rng, neighbours).value)
        template = "Bar {b} shows the value {v}."
        return Item(
            task="bar_value",
            question=f"What is the value of bar {bar.label}?",
            answer=str(bar.value),
            answer_space=value_space(max_value),
            negative=negative,
            negative_type="distractor_value",
            rationale=template.format(b=bar.label, v=bar.value),
            negative_rationale=template.format(b=bar.label, v=negative),
            target_objects=[bar.index],
        )

    return ask_bar_value


# ---------------------------------------------------------------------------------------
# vision_centric
# ---------------------------------------------------------------------------------------
COUNT_SPACE: tuple[str, ...] = tuple(str(k) for k in range(1, 5))


def _count_sentence(k: int, shape: str) -> str:
    return (
        f"There is 1 {shape} in the image."
        if k == 1
        else f"There are {k} {vocab.plural(shape)} in the image."
    )


def ask_count(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    shape = scene.count_shape
    if shape is None:
        return None
    matching = [o for o in scene.objects if o.shape == shape]
    k = len(matching)
    if str(k) not in COUNT_SPACE or any(
        o.visible_fraction < REFERABLE_VISIBILITY for o in matching
    ):
        return None
    if k == 1:
        negative = 2
    elif k == len(COUNT_SPACE):
        negative = k - 1
    else:
        negative = k + (1 if rng.random() < 0.5 else -1)
    return Item(
        task="count",
        question=f"How many {vocab.plural(shape)} are there?",
        answer=str(k),
        answer_space=COUNT_SPACE,
        negative=str(negative),
        negative_type="count_off_by_one",
        rationale=_count_sentence(k, shape),
        negative_rationale=_count_sentence(negative, shape),
        target_objects=[o.index for o in matching],
    )


RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
RELATION_PHRASE = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where ``a`` is relative to ``b``, when it is unambiguous.

    Their boxes must be separated along one axis, and the centres' offset along that axis
    must be at least twice the offset along the other.
    """
    dx = a.center[0] - b.center[0]
    dy = a.center[1] - b.center[1]
    if abs(dx) >= 2 * abs(dy):
        if a.bbox[2] <= b.bbox[0]:
            return "left"
        if b.bbox[2] <= a.bbox[0]:
            return "right"
    elif abs(dy) >= 2 * abs(dx):
        if a.bbox[3] <= b.bbox[1]:
            return "above"
        if b.bbox[3] <= a.bbox[1]:
            return "below"
    return None


def described_pairs(
    scene: Scene, attrs: tuple[str, ...]
) -> list[tuple[SceneObject, str, SceneObject, str]]:
    described = [(o, d) for o in referable(scene) if (d := describe(o, scene, attrs)) is not None]
    pairs = []
    for (a, da), (b, db) in combinations(described, 2):
        pairs.append((a, da, b, db))
        pairs.append((b, db, a, da))
    return pairs


def ask_relation(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    # The relation is drawn first, then a pair showing it; layouts are symmetric under
    # reflection, so every relation is found equally often.
    wanted = choice(rng, list(RELATIONS))
    pairs = [p for p in described_pairs(scene, ALL_ATTRIBUTES) if relation(p[0], p[2]) == wanted]
    if not pairs:
        return None
    a, da, b, db = choice(rng, pairs)
    negative = OPPOSITE[wanted]
    template = "The {a} is {r} the {b}."
    return Item(
        task="relation",
        question=f"Where is the {da} relative to the {db}: left, right, above or below?",
        answer=wanted,
        answer_space=RELATIONS,
        negative=negative,
        negative_type="flipped_relation",
        rationale=template.format(a=da, r=RELATION_PHRASE[wanted], b=db),
        negative_rationale=template.format(a=da, r=RELATION_PHRASE[negative], b=db),
        target_objects=[a.index, b.index],
    )


def ask_relative_size(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    pairs = [p for p in described_pairs(scene, ("shape", "color")) if p[0].size != p[2].size]
    if not pairs:
        return None
    a, da, b, db = choice(rng, pairs)
    return _yes_no_item(
        "relative_size",
        f"Is the {da} larger than the {db}?",
        vocab.SIZE_NAMES.index(a.size) > vocab.SIZE_NAMES.index(b.size),
        (f"The {da} is larger than the {db}.", f"The {da} is smaller than the {db}."),
        "flipped_size",
        [a.index, b.index],
    )


def overlapping_pairs(scene: Scene, rendered: Rendered) -> list[tuple[SceneObject, SceneObject]]:
    """Pairs that visibly overlap, with enough of the one behind still showing."""
    pairs = []
    for (i, j), shared in rendered.overlaps.items():
        a, b = scene.objects[i], scene.objects[j]
        smaller = min(a.area, b.area)
        back = a if a.z < b.z else b
        if shared >= max(4, 0.1 * smaller) and back.visible_fraction >= OCCLUDED_VISIBILITY:
            pairs.append((a, b))
    return pairs


def described_overlaps(
    scene: Scene, rendered: Rendered
) -> list[tuple[SceneObject, str, SceneObject, str]]:
    """Overlapping pairs (see ``overlapping_pairs``) where both objects can be named."""
    described = []
    for a, b in overlapping_pairs(scene, rendered):
        da, db = (describe(o, scene, ALL_ATTRIBUTES) for o in (a, b))
        if da and db:
            described.append((a, da, b, db))
    return described


def ask_front(scene: Scene, rendered: Rendered, rng: np.random.Generator) -> Item | None:
    candidates = described_overlaps(scene, rendered)
    if not candidates:
        return None
    a, da, b, db = choice(rng, candidates)
    if rng.random() < 0.5:
        a, da, b, db = b, db, a, da
    return _yes_no_item(
        "front",
        f"Is the {da} in front of the {db}?",
        a.z > b.z,
        (f"The {da} is in front of the {db}.", f"The {da} is behind the {db}."),
        "flipped_occlusion",
        [a.index, b.index],
    )


@lru_cache(maxsize=4)
def build_tasks(max_value: int) -> dict[str, Task]:
    """The task registry; chart values run from 1 to ``max_value``."""
    objects = ("objects",)
    tasks = [
        Task("exists", "general", objects, ask_exists),
        Task("color", "general", objects, ask_color),
        Task("shape", "general", objects, ask_shape),
        Task("size", "general", objects, ask_size),
        Task("caption", "general", ("objects", "chart", "text"), ask_caption),
        Task("sides", "knowledge", objects, ask_sides),
        Task("guild", "knowledge", objects, ask_guild),
        Task("gem", "knowledge", objects, ask_gem),
        Task("glyph", "ocr_chart", objects, ask_glyph),
        Task("text", "ocr_chart", ("text",), ask_text),
        Task("tallest_bar", "ocr_chart", ("chart",), ask_tallest_bar),
        Task("bar_value", "ocr_chart", ("chart",), make_ask_bar_value(max_value)),
        Task("count", "vision_centric", objects, ask_count),
        Task("relation", "vision_centric", objects, ask_relation),
        Task("relative_size", "vision_centric", objects, ask_relative_size),
        Task("front", "vision_centric", objects, ask_front),
        # Built by pairs.py from twin scenes, not from one scene.
        Task("mmvp", "vision_centric", objects, None),
    ]
    return {t.name: t for t in tasks}


TASK_NAMES: tuple[str, ...] = tuple(build_tasks(9))
