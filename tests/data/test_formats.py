"""A world split's files read through one checked reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pivotlab.data.formats import read_world_file
from pivotlab.errors import PivotlabError


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("vqa.jsonl", "answer"),
        ("preferences.jsonl", "rejected"),
        ("probes/captions.jsonl", "caption"),
    ],
)
def test_each_world_file_names_a_field_of_the_wrong_type(
    small_split: Path, tmp_path: Path, name: str, field: str
) -> None:
    split = tmp_path / "split"
    shutil.copytree(small_split, split)
    rows = read_world_file(split, name)
    assert rows and all(isinstance(row[field], str) for row in rows)
    lines = (split / name).read_text().splitlines()
    lines[2] = json.dumps(json.loads(lines[2]) | {field: ["not", "text"]})
    (split / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(PivotlabError, match=rf"^{split / name}:3: field {field} is an array"):
        read_world_file(split, name)
