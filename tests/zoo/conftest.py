"""The tiny zoo, built once per run for the zoo's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from pivotlab.zoo.build import build

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("zoo")
    build(zoo="tiny", cache=cache, log=lambda message: None)
    return cache
