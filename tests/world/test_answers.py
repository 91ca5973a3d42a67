"""Answer checking and on-policy negatives."""

from __future__ import annotations

import pytest

from pivotlab.world.answers import extract_choice, is_correct, normalize_answer, score_reply
from pivotlab.world.onpolicy import on_policy_preferences

OPEN = {
    "id": "q1",
    "scene_id": "s",
    "image": "i.png",
    "category": "vision_centric",
    "task": "count",
    "question": "How many stars are there?",
    "answer": "3",
    "answer_text": "3",
    "choices": None,
}
MC = dict(
    OPEN,
    id="q2",
    question="How many stars are there?\nA. 1\nB. 3\nC. 2\nD. 4",
    answer="B",
    choices=["1", "3", "2", "4"],
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Three.", "3"), ("The RED star!", "red star"), ("  an   Ember ", "ember"), ("12", "12")],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B. There are 3 stars.", "B"),
        ("The answer is B", "B"),
        ("I think (C) fits", "C"),
        ("3", "B"),
        ("E", None),
        ("many", None),
    ],
)
def test_extract_choice(reply: str, letter: str | None) -> None:
    assert extract_choice(reply, MC["choices"]) == letter


def test_is_correct_reads_short_and_explained_answers() -> None:
    assert (
        is_correct(OPEN, "3")
        and is_correct(OPEN, "three")
        and is_correct(OPEN, "3. There are 3 stars.")
    )
    assert not is_correct(OPEN, "4") and not is_correct(OPEN, "There are 4 stars.")
    assert is_correct(MC, "B. There are 3 stars.") and not is_correct(MC, "A")


def test_on_policy_keeps_only_verified_wrong_replies() -> None:
    replies = {"q1": ["3", "4", "4", "", "5"], "q2": ["B", "(B)"]}
    pairs = on_policy_preferences(
        [OPEN, MC], lambda record: replies[record["id"]], max_per_question=2
    )
    assert [(p["vqa_id"], p["rejected"]) for p in pairs] == [("q1", "4"), ("q1", "5")]
    assert all(p["chosen"] == "3" and p["negative_type"] == "on_policy" for p in pairs)
    with pytest.raises(ValueError, match="max_per_question"):
        on_policy_preferences([OPEN], lambda r: [], max_per_question=0)


CHOICES = ["red", "blue", "green", "pink"]


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("[C]", "C"),
        ("D:", "D"),
        ("B. blue", "B"),
        ("(B) blue", "B"),
        ("B) blue", "B"),
        ("The answer is C.", "C"),
        ("Answer: (D)", "D"),
        ("I choose option A", "A"),
        ("the answer is B, no wait, the answer is C", "C"),
        ("I pick (C) here.", "C"),
        ("blue", "B"),
        ("Blue.", "B"),
        ("Green. It is green.", "C"),
        # Letters inside words never count.
        ("Because", None),
        ("Bar B", None),
        ("The answer is Blue", None),
        ("Absolutely", None),
        ("A red circle", None),
        ("the answer is a red circle", None),
        # Several letters, or none of the options.
        ("A or B", None),
        ("(A) or (B)", None),
        ("(A) and (C)", None),
        ("A. or B", None),
        ("none of the above", None),
        ("", None),
        ("   ", None),
        # Letters beyond the options.
        ("E", None),
        ("(F)", None),
        ("The answer is E", None),
    ],
)
def test_extract_choice_tricky_strings(reply: str, letter: str | None) -> None:
    assert extract_choice(reply, CHOICES) == letter


@pytest.mark.parametrize(
    ("reply", "correct"),
    [
        ("3", True),
        ("three", True),
        ("Three.", True),
        ("3.", True),
        ("  3 ", True),
        ("3. There are 3 stars.", True),
        ("There are 3 stars.", False),
        ("4", False),
        ("33", False),
    ],
)
def test_open_answers_match_numbers_and_words(reply: str, correct: bool) -> None:
    assert is_correct(OPEN, reply) is correct


@pytest.mark.parametrize(
    ("reply", "target", "correct"),
    [
        ("7", "7", True),
        ("7.3", "7", True),
        ("7.4", "7", False),
        ("102", "100", True),
        ("106", "100", False),
        ("The value is 7.", "7", True),
        ("seven", "7", True),
        ("12%", "0.12", True),
        ("0", "0", True),
        ("1", "0", False),
    ],
)
def test_relaxed_numbers_within_five_percent(reply: str, target: str, correct: bool) -> None:
    record = {"task": "bar_value", "answer": target, "answer_text": target, "choices": None}
    assert score_reply(record, reply).correct is correct
