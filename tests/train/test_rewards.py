"""GRPO's verifiable rewards against hand-computed cases and against the evaluation's scorer."""

from __future__ import annotations

import json

import pytest

from pivotlab.io import read_jsonl
from pivotlab.train.rewards import (
    correctness,
    ground_truth,
    length,
    mc_format,
    reply_text,
    reward_functions,
)
from pivotlab.world.answers import score_reply

MC = {
    "answer": "C",
    "answer_text": "star",
    "choices": ["circle", "square", "star", "ring"],
    "task": "shape",
    "format": "mc",
    "question": "What shape is the red object?\nA. circle\nB. square\nC. star\nD. ring",
}
OPEN = {"answer": "red", "answer_text": "red", "choices": None, "task": "color"}
BAR = {"answer": "7", "answer_text": "7", "choices": None, "task": "bar_value"}


def _said(*replies: str) -> list[list[dict]]:
    """Replies as TRL hands them to reward functions (conversational completions)."""
    return [[{"role": "assistant", "content": reply}] for reply in replies]


def _rewards(function, record: dict, *replies: str) -> list:
    truth = [ground_truth(record)] * len(replies)
    return function(completions=_said(*replies), truth=truth, prompts=None, trainer_state=None)


def test_a_correct_open_answer_earns_one() -> None:
    replies = ("Red.", "Red. The star is red.", "red", "blue", "The star is red.")
    assert _rewards(correctness, OPEN, *replies) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_a_correct_multiple_choice_letter_earns_one() -> None:
    # "A star" is the option text "star" (the scorer drops articles), not the letter A.
    replies = ("C", "(C)", "c.", "C. star", "the answer is C", "A star", "B", "A. circle")
    assert _rewards(correctness, MC, *replies) == [1, 1, 1, 1, 1, 1, 0, 0]


def test_the_format_reward_asks_for_one_readable_option() -> None:
    replies = ("C", "B", "square", "A or B", "none of the above", "", "(A) or (C)")
    assert _rewards(mc_format, MC, *replies) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # A wrong but well-formed pick: format 1, correctness 0.
    assert _rewards(correctness, MC, "B") == [0.0]


def test_open_questions_have_no_format_reward() -> None:
    assert _rewards(mc_format, OPEN, "red", "C") == [None, None]


def test_numbers_are_scored_with_chartqa_tolerance() -> None:
    # |7.3 - 7| / 7 = 4.3% is inside 5%; |7.4 - 7| / 7 = 5.7% is not.
    assert _rewards(correctness, BAR, "7", "7.3", "7.4", "seven") == [1.0, 1.0, 0.0, 1.0]


def test_the_length_penalty_is_the_share_of_the_token_budget() -> None:
    ids = [[5, 3], list(range(16)), list(range(8)), []]
    assert length(completion_ids=ids, max_tokens=16) == [-0.125, -1.0, -0.5, 0.0]
    functions, weights = reward_functions(16, format_weight=0.1, length_penalty=0.5)
    assert [f.__name__ for f in functions[:2]] == ["correctness", "mc_format"]
    assert weights == [1.0, 0.1, 0.5]
    assert functions[2](completion_ids=ids, completions=None) == [-0.125, -1.0, -0.5, 0.0]
    # Weighted sum for a right 2-token MC reply: 1 + 0.1 x 1 - 0.5 x 0.125 = 1.0375.
    total = sum(
        w * f(completions=_said("C"), completion_ids=[[5, 3]], truth=[ground_truth(MC)])[0]
        for f, w in zip(functions, weights, strict=True)
    )
    assert total == pytest.approx(1.0375)


def test_without_a_penalty_no_length_reward_is_computed() -> None:
    functions, weights = reward_functions(16, format_weight=0.1, length_penalty=0.0)
    assert len(functions) == 2 and weights == [1.0, 0.1]


def test_reply_text_reads_every_completion_form() -> None:
    assert reply_text(" B ") == "B"
    assert reply_text([{"role": "assistant", "content": " B\n"}]) == "B"
    blocks = [{"type": "text", "text": " Red"}, {"type": "text", "text": ". "}]
    assert reply_text([{"role": "assistant", "content": blocks}]) == "Red."


def test_the_ground_truth_keeps_only_what_the_scorer_reads() -> None:
    assert json.loads(ground_truth(MC)) == {
        "answer": "C",
        "answer_text": "star",
        "choices": ["circle", "square", "star", "ring"],
        "task": "shape",
    }
    expected = {"answer": "red", "answer_text": "red", "task": "color"}  # no choices
    assert json.loads(ground_truth(OPEN)) == expected


def test_rewards_agree_with_the_evaluation_scorer_on_every_question(splits) -> None:
    train, _ = splits
    questions = read_jsonl(train / "vqa.jsonl")
    assert any(q["choices"] for q in questions) and any(not q["choices"] for q in questions)
    for record in questions:
        replies = (record["answer"], record["answer_text"], "B", "no", "3", "")
        expected = [float(score_reply(record, reply).correct) for reply in replies]
        assert _rewards(correctness, record, *replies) == expected, record["id"]
