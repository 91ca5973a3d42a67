"""The data layer's internal form: validated records, the problems found on the way, and the
policy that decides what a problem does.

Every loader (``llava``, ``mmpr``, ``world``) yields ``Record`` objects in one form: one image
path relative to the image root, the conversation (or prompt, chosen and rejected), and the
file and line the row came from. A row that cannot become a record yields a ``Problem``
naming the file, the line (and the list item, for JSON-list files), the kind and the field.

Policy ``fail`` raises ``DataError`` at the first problem; ``skip`` keeps the good rows and
lists every skipped one (``skipped.jsonl``), so nothing is dropped without a trace.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pivotlab.errors import PivotlabError
from pivotlab.io import write_jsonl_atomic

POLICIES: tuple[str, ...] = ("fail", "skip")
SKIPPED_FILE = "skipped.jsonl"

# Every problem kind, in the order a row is checked (a row is reported with its first).
KINDS: dict[str, str] = {
    "bad_json": "not valid JSON: syntax, invalid UTF-8, NaN or Infinity",
    "wrong_type": "the row or a field has the wrong JSON type",
    "missing_field": "a required field is absent",
    "bad_turns": "conversation roles do not alternate human, gpt (starting with human)",
    "no_image": "a text-only row where an image is expected",
    "multi_image": "several images where one is expected",
    "placeholder_missing": "the first user turn has no <image> placeholder",
    "placeholder_extra": "more than one <image>, or one outside the first user turn",
    "empty_text": "an answer (or preference question) that is empty or whitespace",
    "same_answers": "chosen and rejected are the same text",
    "text_too_long": "a text field over the character limit",
    "path_escape": "the image path leaves the image root (.., absolute, symlink outside)",
    "image_missing": "no file at the image path",
    "image_empty": "a zero-byte image file",
    "image_unreadable": "PIL cannot verify or decode the image (truncated, corrupt)",
    "image_tokens_cut": "max_length would cut the image tokens (features/tokens mismatch)",
    "over_max_length": "the image fits, but max_length would cut the text",
}


class DataError(PivotlabError):
    """A dataset that cannot be used as asked; the message names the file, line and field."""


@dataclass(frozen=True)
class Record:
    """One validated sample.

    ``turns`` holds (user, assistant) pairs with the ``<image>`` placeholder removed (the
    image belongs to the first user turn); a preference record has one turn (prompt,
    chosen) and its ``rejected`` answer; a caption record has one turn with an empty user
    text.
    """

    id: str
    kind: str  # "conversation" | "preference" | "caption"
    image: str  # relative to the image root
    turns: tuple[tuple[str, str], ...]
    rejected: str | None = None
    category: str | None = None
    file: str = ""
    line: int = 0
    item: int | None = None

    @property
    def prompt(self) -> str:
        """The first user text."""
        return self.turns[0][0]

    @property
    def chosen(self) -> str:
        """The first answer (the chosen one, for a preference record)."""
        return self.turns[0][1]

    def where(self) -> str:
        """``file:line`` (and the item of a JSON-list file)."""
        return _where(self.file, self.line, self.item)


@dataclass(frozen=True)
class Problem:
    """Why a row was not turned into a record, with where it is."""

    file: str
    line: int
    kind: str
    message: str
    item: int | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")

    def where(self) -> str:
        """``file:line`` (and the item of a JSON-list file)."""
        return _where(self.file, self.line, self.item)

    def __str__(self) -> str:
        return f"{self.where()}: {self.message} [{self.kind}]"

    def to_json(self) -> dict:
        """The row written to ``skipped.jsonl``."""
        row = {"file": self.file, "line": self.line, "kind": self.kind, "message": self.message}
        if self.item is not None:
            row["item"] = self.item
        if self.id is not None:
            row["id"] = self.id
        return row


def _where(file: str, line: int, item: int | None) -> str:
    return f"{file}:{line}" + (f" (item {item})" if item is not None else "")


@dataclass
class Loaded:
    """What a loader found: the records, the problems, how many rows it read, and a length
    per record (tokens when a processor counted them, else characters)."""

    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    lengths: list[int] = field(default_factory=list)
    length_unit: str = "characters"

    def counts(self) -> dict[str, int]:
        """Problems by kind, in the order of ``KINDS``."""
        found = Counter(p.kind for p in self.problems)
        return {kind: found[kind] for kind in KINDS if found[kind]}


def check_policy(policy: str, where: str = "on_bad_record") -> None:
    """Raise ``DataError`` unless ``policy`` is ``fail`` or ``skip``."""
    if policy not in POLICIES:
        raise DataError(f"{where} is {policy!r}; expected one of {', '.join(POLICIES)}")


def write_skipped(rows: list[dict], folder: Path | str) -> Path:
    """``folder/skipped.jsonl`` (atomically): one row per skipped record, as
    ``Problem.to_json`` gives it plus whatever the caller adds (the split it came from)."""
    path = Path(folder) / SKIPPED_FILE
    write_jsonl_atomic(path, rows, ensure_ascii=False)
    return path
