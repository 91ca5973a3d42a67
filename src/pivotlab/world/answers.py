"""Checking a free-text reply against a world question's ground truth.

This is the one definition of a correct answer: evaluation and on-policy negatives call
``score_reply`` (RL rewards are to do the same), so training and evaluation never disagree.

Rules, by kind of question:

- **Multiple choice** (the record has ``choices``): ``extract_choice`` reduces the reply to
  one option letter, by priority:
  1. the whole reply is a letter, bare or wrapped, either case: ``B``, ``(B)``, ``b.``;
  2. the reply starts with a letter and a separator: ``B. three``, ``B: three``, ``(B) three``
     (``A red circle`` is an article, not a choice);
  3. an answer phrase: ``the answer is B``, ``answer: (B)``, ``option B``; the last one wins;
  4. exactly one distinct letter in parentheses anywhere: ``I pick (B) here``;
  5. the reply, or its first sentence, is one option's text (normalised): ``three``;
  otherwise nothing. Letters inside words never count, letters beyond the options never
  count, and a reply naming several options (``A or B``) or none (``none of the above``)
  parses to nothing, which is wrong.
- **Numeric with tolerance** (task ``bar_value``, or a record with ``"scoring": "relaxed"``):
  ChartQA's relaxed accuracy: the first number in the reply is right within 5% of a
  non-zero target (``x%`` read as x/100 on both sides); otherwise exact match.
- **Open answers**: normalised exact match (lower case, punctuation and articles removed,
  number words as digits) of the reply or of its first sentence (``Red. The star is red.``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

LETTERS = "ABCDEFGH"
_NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
NUMBER_WORDS = {word: str(value) for value, word in enumerate(_NUMBERS)} | {"none": "0"}
ARTICLES = frozenset({"a", "an", "the"})
RELAXED_TOLERANCE = 0.05
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, number words as digits, single spaces."""
    words = text.lower().translate(_PUNCTUATION).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def first_sentence(reply: str) -> str:
    """The short answer part of a reply such as "Red. The star is red." -> "Red"."""
    return re.split(r"\.\s+|\n", reply.strip(), maxsplit=1)[0]


_WHOLE = re.compile(r"^[\(\[]?([A-Ha-h])[\)\]]?[.:]?$")
_LEADING = re.compile(r"^[\(\[]?([A-H])(?:[\)\]][.:]?|[.:])(?:\s|$)")
_PHRASE = re.compile(
    r"\b(?i:answer\s+is|answer\s*:|option|choice)\s*[\(\[]?([A-H])[\)\]]?(?![A-Za-z])"
)
_PARENTHESISED = re.compile(r"\(([A-H])\)")
_OTHER_LETTER = re.compile(r"\(([A-H])\)|\bor\s+[\(\[]?[A-H](?![A-Za-z])")


def extract_choice(reply: str, choices: list[str]) -> str | None:
    """The option letter a reply picks, or ``None`` (priority rules in the module docstring)."""
    valid = LETTERS[: len(choices)]
    text = reply.strip()
    for pattern in (_WHOLE, _LEADING):
        match = pattern.match(text)
        if match:
            letter = match.group(1).upper()
            if _OTHER_LETTER.search(text[match.end() :]):  # "(A) or (B)": no single pick
                return None
            return letter if letter in valid else None
    phrases = [m.group(1) for m in _PHRASE.finditer(text)]
    if phrases:
        return phrases[-1] if phrases[-1] in valid else None
    parenthesised = {m.group(1) for m in _PARENTHESISED.finditer(text)}
    if len(parenthesised) == 1:
        (letter,) = parenthesised
        return letter if letter in valid else None
    if len(parenthesised) > 1:
        return None
    options = [normalize_answer(c) for c in choices]
    for candidate in (normalize_answer(text), normalize_answer(first_sentence(text))):
        hits = [i for i, option in enumerate(options) if option == candidate]
        if len(hits) == 1:
            return valid[hits[0]]
    return None


_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?%?")


def parse_number(text: str) -> float | None:
    """The first number in ``text`` (``"12%"`` -> 0.12, ``"3,5"`` -> 3.5), or ``None``."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    token = match.group(0).replace(",", ".")
    if token.endswith("%"):
        return float(token[:-1]) / 100
    return float(token)


def relaxed_match(reply: str, target: str, tolerance: float = RELAXED_TOLERANCE) -> bool:
    """ChartQA's relaxed accuracy; exact (normalised) match when either side is no number."""
    predicted, expected = parse_number(reply), parse_number(target)
    if predicted is not None and expected is not None and expected != 0:
        return abs(predicted - expected) / abs(expected) <= tolerance
    return normalize_answer(first_sentence(reply)) == normalize_answer(target)


@dataclass(frozen=True)
class Score:
    """A reply reduced to what it answers (``parsed``) and whether that is right."""

    parsed: str | None
    correct: bool


def score_reply(record: dict, reply: str) -> Score:
    """Score ``reply`` against a VQA record (a row of ``vqa.jsonl`` or the same format)."""
    if record.get("choices"):
        letter = extract_choice(reply, record["choices"])
        return Score(letter, letter == record["answer"])
    target = record.get("answer_text", record["answer"])
    if record.get("task") == "bar_value" or record.get("scoring") == "relaxed":
        number = parse_number(reply)
        parsed = f"{number:g}" if number is not None else normalize_answer(first_sentence(reply))
        return Score(parsed or None, relaxed_match(reply, target))
    expected = normalize_answer(target)
    for candidate in (normalize_answer(reply), normalize_answer(first_sentence(reply))):
        if candidate == expected:
            return Score(candidate, True)
    return Score(normalize_answer(first_sentence(reply)) or None, False)


def is_correct(record: dict, reply: str) -> bool:
    """Whether ``reply`` answers the VQA ``record`` correctly (see ``score_reply``)."""
    return score_reply(record, reply).correct
