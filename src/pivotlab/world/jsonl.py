"""Reading JSON-lines files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from pivotlab.errors import PivotlabError


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a line that is not one JSON object (malformed, cut
    short, not UTF-8) is reported with its number."""
    records = []
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PivotlabError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PivotlabError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise PivotlabError(f"{path}:{number}: expected a JSON object")
            records.append(record)
    return records
