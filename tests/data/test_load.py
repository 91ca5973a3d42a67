"""The loaders on a corpus of broken inputs: every problem gets its own kind and a one-line
message naming file and line; ``skip`` keeps the good rows and lists every bad one,
``fail`` raises at the first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pivotlab.data import DataError, Limits, Source, load
from pivotlab.data.records import KINDS, write_skipped
from pivotlab.data.summary import summary
from tests.data.conftest import BROKEN_LLAVA, GOOD_LLAVA, llava, mmpr, png, write_lines


def test_each_broken_row_gets_its_kind_and_a_message_naming_file_and_line(
    broken_llava: Path, image_root: Path
) -> None:
    loaded = load(Source("llava", broken_llava, image_root), on_bad_record="skip")
    assert loaded.rows == len(GOOD_LLAVA) + len(BROKEN_LLAVA)
    assert [r.id for r in loaded.records] == ["good-a", "good-b", "good-c"]
    first_bad_line = len(GOOD_LLAVA) + 1
    assert [p.line for p in loaded.problems] == list(
        range(first_bad_line, first_bad_line + len(BROKEN_LLAVA))
    )
    assert [p.kind for p in loaded.problems] == [kind for kind, _ in BROKEN_LLAVA]
    for problem in loaded.problems:
        text = str(problem)
        assert text.startswith(f"{broken_llava}:{problem.line}: ")
        assert "\n" not in text and text.endswith(f"[{problem.kind}]")
    messages = {p.kind: p.message for p in loaded.problems}
    assert "field conversations is missing" in messages["missing_field"]
    assert "conversations[1].value has 10000 characters" in messages["text_too_long"]
    assert "outside the image root" in str(loaded.problems[15])  # the symlink
    assert "'..'" in str(loaded.problems[13]) and "absolute" in str(loaded.problems[14])
    nan, utf8 = loaded.problems[2].message, loaded.problems[1].message
    assert "NaN is not a JSON number (field score)" in nan
    assert "invalid UTF-8 in field x" in utf8


def test_the_corpus_covers_every_row_level_kind() -> None:
    token_kinds = {"image_tokens_cut", "over_max_length"}  # need a processor: test_tokens.py
    covered = {kind for kind, _ in BROKEN_LLAVA} | {"same_answers"} | token_kinds
    assert covered == set(KINDS)


def test_records_keep_turns_without_the_placeholder_and_their_category(
    broken_llava: Path, image_root: Path
) -> None:
    records = load(Source("llava", broken_llava, image_root), on_bad_record="skip").records
    assert records[0].turns == (("What colour is it?", "red"),)
    assert records[2].turns == (("What colour?", "blue"), ("Is it dark?", "no"))
    assert [r.category for r in records] == ["colour", "colour", "shapes"]
    assert records[0].where() == f"{broken_llava}:1"


def test_fail_raises_at_the_first_problem(tmp_path: Path, image_root: Path) -> None:
    rows = [llava("a.png"), llava("missing.png", id="first"), llava("empty.png")]
    path = write_lines(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:2: image 'missing.png' not")):
        load(Source("llava", path, image_root))


def test_skip_lists_every_skipped_row_and_summary_counts_them(
    broken_llava: Path, image_root: Path, tmp_path: Path
) -> None:
    loaded = load(Source("llava", broken_llava, image_root), on_bad_record="skip")
    written = write_skipped([p.to_json() for p in loaded.problems], tmp_path)
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert [(r["file"], r["line"], r["kind"]) for r in rows] == [
        (p.file, p.line, p.kind) for p in loaded.problems
    ]
    report = summary(loaded)
    assert report["valid"] + sum(report["problems"].values()) == report["rows"]
    assert report["problems"]["path_escape"] == 3
    assert report["unique_images"] == 3
    assert report["categories"] == {"colour": 2, "shapes": 1}
    assert len(report["examples"]["path_escape"]) == 3


def test_a_json_list_reports_items_with_their_lines(tmp_path: Path, image_root: Path) -> None:
    items = [llava("a.png", id="one"), llava("nowhere.png", id="two"), llava("b.png", id="3")]
    text = "[\n" + ",\n".join(json.dumps(i, indent=1) for i in items) + "\n]\n"
    path = tmp_path / "d.json"
    path.write_text(text)
    loaded = load(Source("llava", path, image_root), on_bad_record="skip")
    assert [r.id for r in loaded.records] == ["one", "3"]
    (problem,) = loaded.problems
    expected_line = text.splitlines().index(json.dumps(items[1], indent=1).splitlines()[0], 2) + 1
    assert (problem.line, problem.item, problem.kind) == (expected_line, 1, "image_missing")
    assert str(problem).startswith(f"{path}:{expected_line} (item 1): ")


def test_a_syntax_error_in_a_json_list_stops_the_file_with_its_line(
    tmp_path: Path, image_root: Path
) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n{"id": "a", "image": "a.png", "conversations": []},\n{"id": ,\n]')
    loaded = load(Source("llava", path, image_root), on_bad_record="skip")
    kinds = [(p.line, p.kind) for p in loaded.problems]
    assert kinds == [(2, "bad_turns"), (3, "bad_json")]
    assert "the rest of the file is unread" in loaded.problems[1].message


def test_mmpr_rows_aliases_and_preference_checks(tmp_path: Path, image_root: Path) -> None:
    rows = [
        mmpr("a.png", id="plain", question="What colour?"),  # no <image>: PIVOT prepends it
        {
            "id": "alias",
            "images": ["b.png"],
            "prompt": "<image>\nWhat?",
            "chosen": "g",
            "rejected": "r",
        },
        mmpr("a.png", id="same", chosen="red ", rejected="red"),
        mmpr("a.png", id="leak", chosen="<image> red"),
        mmpr("a.png", id="blank", rejected=""),
    ]
    path = write_lines(tmp_path / "p.jsonl", rows)
    loaded = load(Source("mmpr", path, image_root), on_bad_record="skip")
    assert [(r.id, r.prompt, r.chosen, r.rejected) for r in loaded.records] == [
        ("plain", "What colour?", "red", "blue"),
        ("alias", "What?", "g", "r"),
    ]
    assert [(p.id, p.kind) for p in loaded.problems] == [
        ("same", "same_answers"),
        ("leak", "placeholder_extra"),
        ("blank", "empty_text"),
    ]


def test_world_split_loads_clean(small_split: Path) -> None:
    loaded = load(Source("world", small_split))
    assert not loaded.problems
    kinds = {r.kind for r in loaded.records}
    assert kinds == {"conversation", "preference", "caption"}
    categories = {r.category for r in loaded.records if r.kind == "conversation"}
    assert {"general", "ocr_chart"} <= categories
    lines = sum(
        1
        for name in ("vqa.jsonl", "preferences.jsonl", "probes/captions.jsonl")
        for line in (small_split / name).read_text().splitlines()
        if line.strip()
    )
    assert loaded.rows == len(loaded.records) == lines


def test_character_limit_is_configurable(tmp_path: Path, image_root: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [llava("a.png", answer="x" * 50)])
    assert load(Source("llava", path, image_root), limits=Limits(max_chars=50)).records
    with pytest.raises(DataError, match=r"50 characters \(limit 49\)"):
        load(Source("llava", path, image_root), limits=Limits(max_chars=49))


def test_unusable_sources_are_one_line_errors(tmp_path: Path, image_root: Path) -> None:
    with pytest.raises(DataError, match="no such data file"):
        load(Source("llava", tmp_path / "none.json", image_root))
    with pytest.raises(DataError, match="no such image folder"):
        load(Source("llava", write_lines(tmp_path / "d.jsonl", []), tmp_path / "nope"))
    with pytest.raises(DataError, match="needs an image folder"):
        Source("mmpr", tmp_path / "d.jsonl")
    with pytest.raises(DataError, match="not a world split"):
        load(Source("world", tmp_path))
    with pytest.raises(DataError, match="format 'sharegpt'"):
        Source("sharegpt", tmp_path)


def test_images_shared_by_rows_are_read_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    png(root / "a.png")
    rows = [llava("a.png", id=str(i)) for i in range(5)]
    path = write_lines(tmp_path / "d.jsonl", rows)
    source = Source("llava", path, root)
    from pivotlab.data.load import Validator, screen

    validator = Validator(root)
    loaded = screen(source.rows(), validator)
    assert len(loaded.records) == 5 and len(validator.images._found) == 1
