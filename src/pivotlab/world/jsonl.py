"""Reading JSON-lines files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from pivotlab.errors import PivotlabError


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a malformed line is reported with its number."""
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise PivotlabError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return records
