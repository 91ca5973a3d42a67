"""Study presets: one-line errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.study.config import StudyError, load_study


def test_a_bad_preset_names_the_key(preset: Path) -> None:
    with pytest.raises(StudyError, match=r"unknown key post\.arm "):
        load_study(str(preset), ["post.arm=1"])
    with pytest.raises(StudyError, match=r"post\.baseline 'ipo' is not an arm"):
        load_study(str(preset), ["post.baseline=ipo"])
    with pytest.raises(StudyError, match="unknown study preset 'nope'"):
        load_study("nope")
    with pytest.raises(StudyError, match=r"analysis\.permutation_limit must be at least 1.*got 0"):
        load_study(str(preset), ["analysis.permutation_limit=0"])
    with pytest.raises(StudyError, match=r"evaluate\.limit must be at least 1.*got -3"):
        load_study(str(preset), ["evaluate.limit=-3"])
