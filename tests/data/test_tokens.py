"""Token lengths agree with the model's processor; ``max_length`` cuts are found before
training, split into cuts through the image tokens and cuts through the text."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pivotlab.data import DataError, Source, TokenCounter, load, load_processor
from pivotlab.data.records import Record
from pivotlab.world.hf import conversation
from tests.data.conftest import llava, write_lines


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_processor(tiny_model_dir)


def _processor_length(processor, text: str) -> tuple[int, int]:
    ids = list(processor(images=[Image.new("RGB", (32, 32))], text=[text])["input_ids"][0])
    image = [i for i, t in enumerate(ids) if t == processor.image_token_id]
    assert image == list(range(image[0], image[-1] + 1))  # one contiguous span
    return image[-1] + 1, len(ids)


def test_counts_agree_with_the_processors_own_expansion(processor) -> None:
    counter = TokenCounter(processor)
    turns = (("What colour is the square?", "red"), ("And the circle?", "a darker blue"))
    record = Record("r", "conversation", "a.png", turns)
    text = processor.apply_chat_template(conversation(turns), tokenize=False)
    measured = counter.length(record)
    assert (measured.image_end, measured.total) == _processor_length(processor, text)
    assert counter.image_tokens == 16  # tiny-siglip at 32 px: (32 / 8) ** 2 patches


def test_a_preference_record_is_as_long_as_its_longer_answer(processor) -> None:
    counter = TokenCounter(processor)
    short = Record("s", "preference", "a.png", (("Q?", "yes"),), rejected="no")
    long = Record("l", "preference", "a.png", (("Q?", "yes"),), rejected="no " * 30)
    chosen_only = Record("c", "conversation", "a.png", (("Q?", "yes"),))
    assert counter.length(short) == counter.length(chosen_only)
    assert counter.length(long).total > counter.length(short).total


def test_plain_template_counts_image_caption_and_eos(processor) -> None:
    counter = TokenCounter(processor, "plain")
    record = Record("c", "caption", "a.png", (("", "A red square."),))
    text = processor.image_token + "A red square." + processor.tokenizer.eos_token
    measured = counter.length(record)
    assert (measured.image_end, measured.total) == _processor_length(processor, text)
    assert measured.image_end == 16


def test_max_length_finds_image_cuts_and_text_cuts(
    processor, tmp_path: Path, image_root: Path
) -> None:
    long_prompt = "<image>\n" + "Look closely at every part of the picture. " * 20
    rows = [llava("a.png", id="short"), llava("a.png", id="long", question=long_prompt)]
    path = write_lines(tmp_path / "d.jsonl", rows)
    source = Source("llava", path, image_root)
    counter = TokenCounter(processor)
    lengths = {r.id: counter.length(r) for r in load(source).records}
    image_end = lengths["short"].image_end
    between = lengths["short"].total
    loaded = load(source, "skip", counter=counter, max_length=between)
    assert [r.id for r in loaded.records] == ["short"]
    assert [(p.id, p.kind) for p in loaded.problems] == [("long", "over_max_length")]
    assert loaded.lengths == [between] and loaded.length_unit == "tokens"
    cut = load(source, "skip", counter=counter, max_length=image_end - 1)
    assert [p.kind for p in cut.problems] == ["image_tokens_cut"] * 2
    assert "image features and image tokens would not match" in cut.problems[0].message
    assert f"{path}:1: " in str(cut.problems[0])


def test_max_length_without_a_processor_is_refused(tmp_path: Path, image_root: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [llava("a.png")])
    with pytest.raises(DataError, match="max_length needs a processor"):
        load(Source("llava", path, image_root), max_length=100)


def test_a_folder_without_a_processor_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot load a processor"):
        load_processor(tmp_path)
