"""MMVP-style pairs: two scenes that differ in one controlled factor.

A pair asks the same yes/no question of both scenes, and the factor is changed so that
the answers differ; scored as pair accuracy (both right). The factors: swap two objects'
positions (relation), swap which of two overlapping objects is in front (occlusion),
recolour one object (attribute), add or remove one object of the counted shape (count).
The answers are recomputed from both rendered scenes, and a pair whose answers did not
come out different is dropped, never emitted half-true.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from pivotlab.world import vocab
from pivotlab.world.questions import (
    ALL_ATTRIBUTES,
    OPPOSITE,
    RELATION_PHRASE,
    YES_NO,
    Item,
    choice,
    describe,
    described_overlaps,
    described_pairs,
    overlapping_pairs,
    referable,
    relation,
)
from pivotlab.world.render import Rendered
from pivotlab.world.scene import (
    BLOCK_DIAMETERS,
    BLOCK_SPANS,
    Scene,
    SceneObject,
    block_of,
    jittered_rgb,
)

PAIR_FACTORS: tuple[str, ...] = ("relation", "occlusion", "color", "count")
AnswerFn = Callable[[Scene, Rendered], str | None]


@dataclass
class PairPlan:
    """The twin scene, the shared question and how to answer it on either scene."""

    factor: str
    twin: Scene
    question: str
    answer: AnswerFn
    target_objects: list[int]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _plan_relation(base: Scene, twin_id: str, rng: np.random.Generator) -> PairPlan | None:
    candidates = [
        p
        for p in described_pairs(base, ALL_ATTRIBUTES)
        if relation(p[0], p[2]) and _swappable(base, p[0], p[2])
    ]
    if not candidates:
        return None
    a, da, b, db = choice(rng, candidates)
    asked = relation(a, b)
    assert asked is not None
    if rng.random() < 0.5:
        asked = OPPOSITE[asked]
    twin = base.copy(twin_id)
    twin.objects[a.index].center, twin.objects[b.index].center = b.center, a.center
    ia, ib = a.index, b.index

    def answer(scene: Scene, rendered: Rendered) -> str | None:
        found = relation(scene.objects[ia], scene.objects[ib])
        return None if found is None else _yes(found == asked)

    question = f"Is the {da} {RELATION_PHRASE[asked]} the {db}?"
    return PairPlan("relation", twin, question, answer, [ia, ib])


def _swappable(scene: Scene, a: SceneObject, b: SceneObject) -> bool:
    """Whether two objects can trade places: in the blocks layout only objects of one block
    size can (a large object in a one-cell place would cover its neighbours)."""
    return scene.layout != "blocks" or BLOCK_SPANS[a.size] == BLOCK_SPANS[b.size]


def _plan_occlusion(
    base: Scene, base_rendered: Rendered, twin_id: str, rng: np.random.Generator
) -> PairPlan | None:
    candidates = described_overlaps(base, base_rendered)
    if not candidates:
        return None
    a, da, b, db = choice(rng, candidates)
    twin = base.copy(twin_id)
    twin.objects[a.index].z, twin.objects[b.index].z = b.z, a.z
    ia, ib = a.index, b.index

    def answer(scene: Scene, rendered: Rendered) -> str | None:
        still_overlapping = any(
            {p.index, q.index} == {ia, ib} for p, q in overlapping_pairs(scene, rendered)
        )
        return _yes(scene.objects[ia].z > scene.objects[ib].z) if still_overlapping else None

    return PairPlan("occlusion", twin, f"Is the {da} in front of the {db}?", answer, [ia, ib])


def _plan_color(base: Scene, twin_id: str, rng: np.random.Generator) -> PairPlan | None:
    candidates = []
    for obj in referable(base):
        phrase = describe(obj, base, ("shape", "size"))
        if phrase and (obj.shape, obj.color) not in vocab.HELDOUT_COMBOS:
            candidates.append((obj, phrase))
    if not candidates:
        return None
    obj, phrase = choice(rng, candidates)
    new_color = choice(rng, [c for c in vocab.allowed_colors(obj.shape, False) if c != obj.color])
    asked = obj.color if rng.random() < 0.5 else new_color
    twin = base.copy(twin_id)
    twin.objects[obj.index].color = new_color
    twin.objects[obj.index].rgb = jittered_rgb(rng, new_color)
    index = obj.index

    def answer(scene: Scene, rendered: Rendered) -> str | None:
        return _yes(scene.objects[index].color == asked)

    return PairPlan("color", twin, f"Is the {phrase} {asked}?", answer, [index])


def _occupied_cells(scene: Scene) -> set[int]:
    """Layout cells holding an object: its centre's cell, or in the blocks layout its block."""
    cell = scene.cell
    if scene.layout == "blocks":
        return {r * scene.grid + c for o in scene.objects for r, c in block_of(o, cell, scene.grid)}
    return {int(o.center[1] // cell) * scene.grid + int(o.center[0] // cell) for o in scene.objects}


def _added_object_size(scene: Scene, rng: np.random.Generator) -> tuple[str, float]:
    """The size name and diameter of an object added to a free cell (one cell in the blocks
    layout)."""
    if scene.layout == "blocks":
        size_name = choice(rng, [s for s in vocab.SIZE_NAMES if BLOCK_SPANS[s] == 1])
        return size_name, BLOCK_DIAMETERS[size_name] * scene.cell
    size_name = choice(rng, list(vocab.SIZE_NAMES))
    return size_name, vocab.SIZES[size_name] * scene.cell


def _reindexed(objects: list[SceneObject]) -> list[SceneObject]:
    """Objects renumbered 0..n-1 (instance ids) with z ranks kept in order."""
    ranks = {o.index: r for r, o in enumerate(sorted(objects, key=lambda o: o.z))}
    return [replace(o, index=i, z=ranks[o.index]) for i, o in enumerate(objects)]


def _plan_count(base: Scene, twin_id: str, rng: np.random.Generator) -> PairPlan | None:
    shape = base.count_shape
    if shape is None:
        return None
    matching = [
        o
        for o in base.objects
        if o.shape == shape and (o.shape, o.color) not in vocab.HELDOUT_COMBOS
    ]
    free = sorted(set(range(base.grid * base.grid)) - _occupied_cells(base))
    count = sum(o.shape == shape for o in base.objects)
    can_remove = count >= 2 and matching
    can_add = bool(free) and len(base.objects) < base.grid * base.grid
    if not (can_remove or can_add):
        return None
    twin = base.copy(twin_id)
    if can_remove and (not can_add or rng.random() < 0.5):
        victim = choice(rng, matching)
        twin.objects = _reindexed([o for o in twin.objects if o.index != victim.index])
        twin_count = count - 1
    else:
        cell_id = choice(rng, free)
        size_name, diameter = _added_object_size(base, rng)
        color = choice(rng, list(vocab.allowed_colors(shape, False)))
        twin.objects.append(
            SceneObject(
                index=len(twin.objects),
                shape=shape,
                color=color,
                size=size_name,
                rgb=jittered_rgb(rng, color),
                center=(
                    (cell_id % base.grid + 0.5) * base.cell,
                    (cell_id // base.grid + 0.5) * base.cell,
                ),
                diameter=diameter,
                rotation=0.0,
                z=len(twin.objects),
            )
        )
        twin_count = count + 1
    asked = count if rng.random() < 0.5 else twin_count

    def answer(scene: Scene, rendered: Rendered) -> str | None:
        return _yes(sum(o.shape == shape for o in scene.objects) == asked)

    question = (
        f"Are there exactly {asked} {vocab.plural(shape) if asked != 1 else shape} in the image?"
    )
    return PairPlan("count", twin, question, answer, [])


def plan_pair(
    base: Scene, base_rendered: Rendered, twin_id: str, rng: np.random.Generator
) -> PairPlan | None:
    """Try the factors in random order; the first that applies to ``base`` wins."""
    for factor in rng.permutation(PAIR_FACTORS).tolist():
        if factor == "relation":
            plan = _plan_relation(base, twin_id, rng)
        elif factor == "occlusion":
            plan = _plan_occlusion(base, base_rendered, twin_id, rng)
        elif factor == "color":
            plan = _plan_color(base, twin_id, rng)
        else:
            plan = _plan_count(base, twin_id, rng)
        if plan is not None:
            return plan
    return None


NEGATIVE_TYPE_BY_FACTOR = {
    "relation": "flipped_relation",
    "occlusion": "flipped_occlusion",
    "color": "distractor_attribute",
    "count": "count_off_by_one",
}


def pair_items(
    plan: PairPlan,
    base: Scene,
    base_rendered: Rendered,
    twin_rendered: Rendered,
    pair_id: str,
) -> tuple[Item, Item] | None:
    """The pair's question as an item for each scene, or ``None`` if the answers agree."""
    answers = (plan.answer(base, base_rendered), plan.answer(plan.twin, twin_rendered))
    if None in answers or answers[0] == answers[1]:
        return None
    items = []
    for answer in answers:
        assert answer is not None
        negative = "no" if answer == "yes" else "yes"
        items.append(
            Item(
                task="mmvp",
                question=plan.question,
                answer=answer,
                answer_space=YES_NO,
                negative=negative,
                negative_type=NEGATIVE_TYPE_BY_FACTOR[plan.factor],
                target_objects=list(plan.target_objects),
                pair_id=pair_id,
            )
        )
    return items[0], items[1]
