"""Fixtures of the analysis tests: probe splits at the tests-sized preset (32 px)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivotlab.world import WorldConfig, generate
from tests.conftest import TEST_SIZE


@pytest.fixture(scope="session")
def probe_splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A train split (60 scenes, 120 classification-probe images) and a test split
    (40 scenes, 60 probe images), both with every probe file."""
    root = tmp_path_factory.mktemp("analysis-world")
    train, test = root / "train", root / "test"
    generate(WorldConfig(split="train", n=60, seed=5, size=TEST_SIZE, probe_n=120), train)
    generate(WorldConfig(split="test", n=40, seed=5, size=TEST_SIZE, probe_n=60), test)
    return train, test
