"""The ledger: a step is finished only while the files it recorded are intact."""

from __future__ import annotations

from pathlib import Path

from pivotlab.study.ledger import Ledger


def test_ledger_needs_the_recorded_files_not_the_folder(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    output = tmp_path / "step" / "result.json"
    output.parent.mkdir()
    output.write_text("{}")
    ledger.record("seed0/step", "abc", [output.parent], 1.0)
    assert ledger.finished("seed0/step", "abc") is not None
    assert ledger.finished("seed0/step", "changed-spec") is None
    output.write_text("{ }")
    assert ledger.finished("seed0/step", "abc") is None
