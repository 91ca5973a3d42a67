"""The three input formats, each turned into ``Record`` objects or a ``Problem`` per row.

- ``llava``: LLaVA instruction data (also BLIP-558K captions, LLaVA-665K, OneVision mixes):
  ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": ...}, ...]}``. Roles ``user`` / ``assistant`` are accepted for
  ``human`` / ``gpt``. Exactly one ``<image>``, in the first human turn.
- ``mmpr``: preference rows ``{"image", "question", "chosen", "rejected"}`` (MMPR-v1.2).
  Aliases: ``prompt`` for ``question`` (LLaVA-NeXT's DPO data and PIVOT's DPO file) and
  ``images`` for ``image`` (TRL's column; a one-item list). The question may carry one
  ``<image>`` or none (PIVOT prepends it when missing); the answers may not carry any.
- ``world``: a pivotlab world split: ``vqa.jsonl`` (question, answer), ``preferences.jsonl``
  (prompt, chosen, rejected), ``probes/captions.jsonl`` (caption); the image is implicit.

A row's checks run in the order of ``records.KINDS``; the first failing one is reported.
Image files and token lengths are checked afterwards (``load.py``), on the rows that pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pivotlab.data.reading import RawRow, read_rows
from pivotlab.data.records import Problem, Record
from pivotlab.errors import PivotlabError

IMAGE = "<image>"
FORMATS: tuple[str, ...] = ("llava", "mmpr", "world")
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
DEFAULT_MAX_CHARS = 8000
WORLD_FILES: dict[str, str] = {
    "vqa.jsonl": "conversation",
    "preferences.jsonl": "preference",
    "probes/captions.jsonl": "caption",
}


@dataclass(frozen=True)
class Limits:
    """What a row may hold: ``max_chars`` per text field."""

    max_chars: int = DEFAULT_MAX_CHARS


class RowError(Exception):
    """Raised inside a parser; becomes a ``Problem`` for the row."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def json_type(value: object) -> str:
    """What JSON calls the type of a parsed value."""
    return JSON_TYPES.get(type(value), type(value).__name__)


def _field(row: dict, names: tuple[str, ...], kind: type | tuple[type, ...]) -> object:
    """The first of ``names`` present in ``row``, checked against ``kind``."""
    for name in names:
        if name in row:
            value = row[name]
            if not isinstance(value, kind):
                kinds = kind if isinstance(kind, tuple) else (kind,)
                wanted = " or ".join(JSON_TYPES[t] for t in kinds)
                got = json_type(value)
                raise RowError("wrong_type", f"field {name} is {got}, expected {wanted}")
            return value
    raise RowError("missing_field", f"field {' or '.join(names)} is missing")


def _text(row: dict, names: tuple[str, ...]) -> str:
    return _field(row, names, str)  # type: ignore[return-value]


def _image(row: dict, names: tuple[str, ...] = ("image",)) -> str:
    """The row's one image path: a string, or a list holding one string."""
    if not any(n in row for n in names):
        raise RowError("no_image", f"no {' or '.join(names)} field: text-only rows are not used")
    value = _field(row, names, (str, list))
    if isinstance(value, list):
        if len(value) > 1:
            raise RowError("multi_image", f"{len(value)} images; one image per row is expected")
        if not value:
            raise RowError("no_image", "the image list is empty: text-only rows are not used")
        value = value[0]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"the image path is {json_type(value)}, expected a string")
    if not value.strip():
        raise RowError("no_image", "the image path is empty")
    return value


def _identity(row: dict, raw: RawRow) -> str:
    value = row.get("id")
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    suffix = f"{raw.line}" if raw.item is None else f"{raw.line}.{raw.item}"
    return f"{Path(raw.file).name}:{suffix}"


def _category(row: dict) -> str | None:
    for name in ("category", "source"):
        if isinstance(row.get(name), str):
            return row[name]
    return None


def _strip_placeholder(text: str) -> str:
    """The user text without its one ``<image>`` and the newline beside it."""
    for form in (IMAGE + "\n", "\n" + IMAGE, IMAGE):
        if form in text:
            return text.replace(form, "", 1).strip()
    return text.strip()


def _check_texts(fields: list[tuple[str, str]], answers: set[str], limits: Limits) -> None:
    """Non-empty answers and every text within the character limit."""
    for name, text in fields:
        if name in answers and not text.strip():
            raise RowError("empty_text", f"field {name} is empty or whitespace")
    for name, text in fields:
        if len(text) > limits.max_chars:
            raise RowError(
                "text_too_long",
                f"field {name} has {len(text)} characters (limit {limits.max_chars})",
            )


def _turns(row: dict) -> list[tuple[str, str]]:
    """LLaVA ``conversations`` as (role, value) pairs, roles normalised to human / gpt."""
    conversation = _field(row, ("conversations",), list)
    pairs = []
    for index, turn in enumerate(conversation):  # type: ignore[arg-type]
        where = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"{where} is {json_type(turn)}, expected an object")
        role = _field(turn, ("from",), str)
        value = _field(turn, ("value",), str)
        expected = USER_ROLES if index % 2 == 0 else ASSISTANT_ROLES
        if role not in expected:
            raise RowError(
                "bad_turns", f"{where}.from is {role!r}; expected {' or '.join(expected)}"
            )
        pairs.append((role, value))
    if not pairs or len(pairs) % 2:
        raise RowError("bad_turns", f"{len(pairs)} turns; expected human/gpt pairs ending with gpt")
    return pairs


def llava_record(raw: RawRow, row: dict, limits: Limits) -> Record:
    """A LLaVA conversation row as a record."""
    pairs = _turns(row)
    image = _image(row)
    first = pairs[0][1].count(IMAGE)
    if first == 0:
        raise RowError("placeholder_missing", f"conversations[0].value has no {IMAGE}")
    if first > 1:
        raise RowError("placeholder_extra", f"conversations[0].value has {first} {IMAGE}")
    for index, (_, value) in enumerate(pairs[1:], start=1):
        if IMAGE in value:
            raise RowError("placeholder_extra", f"conversations[{index}].value holds {IMAGE}")
    fields = [(f"conversations[{i}].value", value) for i, (_, value) in enumerate(pairs)]
    answers = {name for i, (name, _) in enumerate(fields) if i % 2}
    _check_texts(fields, answers, limits)
    turns = tuple(
        (_strip_placeholder(pairs[i][1]) if i == 0 else pairs[i][1].strip(), pairs[i + 1][1])
        for i in range(0, len(pairs), 2)
    )
    return _record(raw, row, "conversation", image, turns)


def preference_record(raw: RawRow, row: dict, limits: Limits) -> Record:
    """An MMPR-style preference row (or a world preference pair) as a record."""
    question = _text(row, ("question", "prompt"))
    chosen = _text(row, ("chosen",))
    rejected = _text(row, ("rejected",))
    image = _image(row, ("image", "images"))
    name = "question" if "question" in row else "prompt"
    if question.count(IMAGE) > 1:
        raise RowError("placeholder_extra", f"field {name} has {question.count(IMAGE)} {IMAGE}")
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if IMAGE in text:
            raise RowError("placeholder_extra", f"field {field} holds {IMAGE}")
    fields = [(name, _strip_placeholder(question)), ("chosen", chosen), ("rejected", rejected)]
    _check_texts(fields, {name, "chosen", "rejected"}, limits)
    if chosen.strip() == rejected.strip():
        raise RowError("same_answers", "fields chosen and rejected hold the same text")
    turns = ((_strip_placeholder(question), chosen),)
    return _record(raw, row, "preference", image, turns, rejected=rejected)


def world_question_record(raw: RawRow, row: dict, limits: Limits) -> Record:
    """A world ``vqa.jsonl`` row (question, answer) as a one-turn conversation."""
    question = _text(row, ("question",))
    answer = _text(row, ("answer",))
    image = _image(row)
    if IMAGE in question or IMAGE in answer:
        raise RowError("placeholder_extra", f"a world question or answer holds {IMAGE}")
    _check_texts([("question", question), ("answer", answer)], {"answer"}, limits)
    return _record(raw, row, "conversation", image, ((question, answer),))


def caption_record(raw: RawRow, row: dict, limits: Limits) -> Record:
    """A world caption row as a caption record."""
    caption = _text(row, ("caption",))
    image = _image(row)
    if IMAGE in caption:
        raise RowError("placeholder_extra", f"field caption holds {IMAGE}")
    _check_texts([("caption", caption)], {"caption"}, limits)
    identity = row.get("id", row.get("scene_id"))
    return _record(raw, {**row, "id": identity}, "caption", image, (("", caption),))


def _record(
    raw: RawRow,
    row: dict,
    kind: str,
    image: str,
    turns: tuple[tuple[str, str], ...],
    rejected: str | None = None,
) -> Record:
    return Record(
        id=_identity(row, raw),
        kind=kind,
        image=image,
        turns=turns,
        rejected=rejected,
        category=_category(row),
        file=raw.file,
        line=raw.line,
        item=raw.item,
    )


Parser = Callable[[RawRow, dict, Limits], Record]

PARSERS: dict[str, Parser] = {
    "llava": llava_record,
    "mmpr": preference_record,
    "conversation": world_question_record,
    "preference": preference_record,
    "caption": caption_record,
}


def parse_row(raw: RawRow, parser: Parser, limits: Limits) -> Record | Problem:
    """The record a parsed row makes, or the problem that stops it."""
    if not isinstance(raw.value, dict):
        message = f"the row is {json_type(raw.value)}, expected an object"
        return Problem(raw.file, raw.line, "wrong_type", message, raw.item)
    try:
        return parser(raw, raw.value, limits)
    except RowError as error:
        identity = _identity(raw.value, raw)
        return Problem(raw.file, raw.line, error.kind, str(error), raw.item, identity)


def read_world_file(split: Path, name: str) -> list[dict]:
    """The rows of one of a world split's ``WORLD_FILES``, each checked as ``pivotlab data
    check`` checks it (every field the format reads present and of its type, placeholders,
    lengths): every reader of a split reads it through here, so a bad row is one line
    naming ``file:line`` and the field, whichever verb meets it first."""
    parser = PARSERS[WORLD_FILES[name]]
    rows = []
    for raw in read_rows(split / name):
        parsed = raw if isinstance(raw, Problem) else parse_row(raw, parser, Limits())
        if isinstance(parsed, Problem):
            raise PivotlabError(f"{parsed.where()}: {parsed.message}")
        rows.append(raw.value)
    return rows
