"""Checking a free-text answer against a world question's ground truth.

World answers are short and canonical (``"3"``, ``"red"``, ``"left"``, a letter for
multiple choice), so a light normaliser is enough: lower case, strip punctuation and
articles, number words to digits. Multiple-choice replies are reduced to one option letter
by ``extract_choice``. Training (on-policy negatives, rewards) and evaluation share these
rules so the two never disagree about what is correct.
"""

from __future__ import annotations

import re
import string

NUMBER_WORDS = {
    "zero": "0",
    "none": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
}
ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation if c not in "\"'"})


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, number words as digits, single spaces."""
    words = text.lower().translate(_PUNCTUATION).replace('"', " ").replace("'", " ").split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


_LETTER_PATTERNS = (
    re.compile(r"^\s*\(?([A-D])\)?(?:[.:)\s]|$)"),  # "B", "(B)", "B.", "B: ..." at the start
    re.compile(r"answer is\s*\(?([A-D])\)?\b", re.IGNORECASE),  # "the answer is B"
    re.compile(r"\(([A-D])\)"),  # "(B)" anywhere
)


def extract_choice(reply: str, choices: list[str]) -> str | None:
    """The option letter a reply picks, or ``None``.

    Priority: a letter at the start ("B", "(B)", "B."), then "answer is B", then "(B)"
    anywhere, then the reply being exactly one option's text.
    """
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(reply)
        if match and "ABCD".index(match.group(1).upper()) < len(choices):
            return match.group(1).upper()
    normalised = normalize_answer(reply)
    hits = [i for i, c in enumerate(choices) if normalize_answer(c) == normalised]
    return "ABCD"[hits[0]] if len(hits) == 1 else None


def first_sentence_answer(reply: str) -> str:
    """The short answer part of a reply such as "Red. The star is red." -> "Red"."""
    return re.split(r"\.\s+|\n", reply.strip(), maxsplit=1)[0]


def is_correct(record: dict, reply: str) -> bool:
    """Whether ``reply`` answers the VQA ``record`` (a row of ``vqa.jsonl``) correctly."""
    if record.get("choices"):
        return extract_choice(reply, record["choices"]) == record["answer"]
    expected = normalize_answer(record["answer_text"])
    return (
        normalize_answer(reply) == expected
        or normalize_answer(first_sentence_answer(reply)) == expected
    )
