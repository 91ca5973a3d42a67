"""Rows of a JSON-list or JSON-lines file, each with its line number, and one-line problems
for what is not valid JSON.

Written by hand around ``json.JSONDecoder`` rather than ``json.load`` because a dataset
check must keep going past a bad row and name where each row starts:

- JSON lines: each line is decoded on its own; a bad line is one problem, the next line is
  read as usual.
- A JSON list (LLaVA's files): items are decoded one by one with ``raw_decode``, so every
  item knows its line and index. A syntax error inside the list leaves no safe place to
  resume, so it is reported once and the rest of the file counts as unread.
- Invalid UTF-8 is decoded with ``surrogateescape`` and reported for the row (and field) it
  sits in; ``NaN`` / ``Infinity`` (accepted by Python's ``json``, not by the JSON standard)
  are parsed into a marker and reported the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pivotlab.data.records import Problem
from pivotlab.errors import one_line

_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class RawRow:
    """One parsed JSON value and where it starts."""

    file: str
    line: int
    value: object
    item: int | None = None  # index in a JSON-list file


@dataclass(frozen=True)
class _NonFinite:
    """What ``NaN`` / ``Infinity`` parse to, so the row can be reported rather than lost."""

    name: str


def _decoder() -> json.JSONDecoder:
    return json.JSONDecoder(parse_constant=_NonFinite)


def _flaw(value: object, path: str = "") -> str | None:
    """The first invalid-UTF-8 string or non-finite number inside a parsed value."""
    if isinstance(value, _NonFinite):
        return f"{value.name} is not a JSON number (field {path or 'row'})"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"invalid UTF-8 in field {path or 'row'}"
        return None
    if isinstance(value, dict):
        for key, child in value.items():
            found = _flaw(key, path or "row") or _flaw(child, f"{path}.{key}" if path else key)
            if found:
                return found
    if isinstance(value, list):
        for index, child in enumerate(value):
            found = _flaw(child, f"{path}[{index}]")
            if found:
                return found
    return None


def _checked(row: RawRow) -> RawRow | Problem:
    flaw = _flaw(row.value)
    if flaw is None:
        return row
    return Problem(row.file, row.line, "bad_json", f"not valid JSON: {flaw}", row.item)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _lines(path: Path) -> Iterator[RawRow | Problem]:
    decoder = _decoder()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = _decode(raw).strip()
            if not text:
                continue
            try:
                value = decoder.decode(text)
            except json.JSONDecodeError as error:
                message = f"not valid JSON ({error.msg} at column {error.colno})"
                yield Problem(str(path), number, "bad_json", message)
                continue
            yield _checked(RawRow(str(path), number, value))


def _list(path: Path, text: str, start: int) -> Iterator[RawRow | Problem]:
    """Items of the JSON list that opens at ``text[start]``."""
    decoder = _decoder()
    position, line, item = _SPACE.match(text, start + 1).end(), 1, 0
    counted = 0

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    if text.startswith("]", position):
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            message = f"not valid JSON ({one_line(error.msg)}); the rest of the file is unread"
            yield Problem(str(path), line_at(error.pos), "bad_json", message, item)
            return
        yield _checked(RawRow(str(path), line_at(position), value, item))
        position = _SPACE.match(text, end).end()
        if text.startswith(",", position):
            position, item = _SPACE.match(text, position + 1).end(), item + 1
            continue
        if text.startswith("]", position) and not text[position + 1 :].strip():
            return
        message = "not valid JSON (expected ',' or the closing ']' after the item)"
        yield Problem(str(path), line_at(position), "bad_json", message, item)
        return


def read_rows(path: Path | str) -> Iterator[RawRow | Problem]:
    """The rows of a JSON list (``[...]``) or JSON-lines file, in order: parsed values with
    their line, or a ``bad_json`` problem for each row that is not valid JSON."""
    path = Path(path)
    with path.open("rb") as handle:
        head = _decode(handle.read(4096)).lstrip()
    if not head.startswith("["):
        yield from _lines(path)
        return
    text = _decode(path.read_bytes())
    yield from _list(path, text, text.index("["))
