"""Symbolic scenes as the zoo's language models read them: each cell's token ids."""

from __future__ import annotations

from pivotlab.world.symbolic import Cell
from pivotlab.zoo.pretraining import cell_token_ids
from pivotlab.zoo.tokenizer import world_tokenizer


def _words(ids: list[int], tokenizer) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def test_a_cell_names_its_place_by_words_only_when_asked() -> None:
    tokenizer = world_tokenizer()
    star = Cell("above", "left", "blue", "star", "large")
    with_place = _words(cell_token_ids(star, tokenizer), tokenizer)
    without = _words(cell_token_ids(star, tokenizer, place_words=False), tokenizer)
    assert [w.strip() for w in with_place[-2:]] == ["above", "left"]
    assert with_place[: len(without)] == without
    assert not {"above", "left"} & {w.strip() for w in without}
    assert "blue" in {w.strip() for w in without}
    empty = _words(cell_token_ids(Cell("below", "right"), tokenizer, place_words=False), tokenizer)
    assert empty == ["<bg>"]
