"""A part's cache key: what moves it and what does not."""

from __future__ import annotations

from dataclasses import replace

from pivotlab.zoo.entries import part_key
from pivotlab.zoo.recipes import ZOOS


def test_a_language_model_key_ignores_the_image_recipe() -> None:
    tiny = ZOOS["tiny"]
    more_images = replace(tiny, pretrain_images=tiny.pretrain_images + 8)
    assert part_key(more_images, "lm-s") == part_key(tiny, "lm-s")
    assert part_key(more_images, "enc-s") != part_key(tiny, "enc-s")
    more_scenes = replace(tiny, symbolic_scenes=tiny.symbolic_scenes + 8)
    assert part_key(more_scenes, "lm-s") != part_key(tiny, "lm-s")
    assert part_key(more_scenes, "vfm") == part_key(tiny, "vfm")


def test_every_part_key_moves_with_the_zoo_world() -> None:
    tiny = ZOOS["tiny"]
    blocks = replace(tiny, world="tiny16")
    for part in tiny.parts:
        assert part_key(blocks, part) != part_key(tiny, part), part


def test_later_phases_move_a_language_model_key_only_when_set() -> None:
    from pivotlab.zoo.recipes import spec_identity

    default = ZOOS["default"]
    spec = default.parts["lm-s"]
    assert "later_phases" not in spec_identity(spec)  # the shipped parts' keys stay
    taught = replace(
        default, parts={**default.parts, "lm-s": replace(spec, later_phases=((("color",), 10),))}
    )
    assert spec_identity(taught.parts["lm-s"])["later_phases"] == ((("color",), 10),)
    assert part_key(taught, "lm-s") != part_key(default, "lm-s")
    assert part_key(taught, "enc-s") == part_key(default, "enc-s")


def test_cell_place_words_move_only_language_model_keys_and_only_when_off() -> None:
    default = ZOOS["default"]
    assert "cell_place_words" not in default.data_recipe("lm-s")  # the shipped keys stay
    order_only = replace(default, cell_place_words=False)
    assert order_only.data_recipe("lm-s")["cell_place_words"] is False
    assert part_key(order_only, "lm-s") != part_key(default, "lm-s")
    for part in ("enc-s", "enc-m", "vfm"):
        assert part_key(order_only, part) == part_key(default, part), part
