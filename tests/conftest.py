"""Shared fixtures: small world splits at the tests-sized preset (32 px), made once per run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pivotlab.world import WorldConfig, generate

TEST_SIZE = 32

# Tests that run a trainer carry this marker, so that `pytest -m "not slow and not trains"`
# is a quick loop; ``_training_is_marked`` keeps the marks true.
TRAINS = "trains"
_running: list[pytest.Item] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Remember the running test, fixtures' set-up included, for ``_training_is_marked``."""
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


@pytest.fixture(scope="session", autouse=True)
def _training_is_marked():
    """Fail a test that trains in this process (a Trainer's ``train``, in the test or in a
    fixture it sets up) without the ``trains`` marker. Tests that train in a subprocess
    (``pivotlab train`` on a command line) are marked by hand."""
    from transformers import Trainer

    train = Trainer.train

    def checked(self, *args, **kwargs):
        item = _running[-1] if _running else None
        if item is not None and item.get_closest_marker(TRAINS) is None:
            pytest.fail(
                f"{item.nodeid} runs {type(self).__name__}.train: mark it @pytest.mark.trains",
                pytrace=False,
            )
        return train(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train", checked)
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-siglip + tiny-qwen2 at 32 px (2-block towers), saved."""
    from pivotlab.model import assemble, save

    out = tmp_path_factory.mktemp("models") / "siglip-qwen2"
    model, processor = assemble("tiny-siglip", "tiny-qwen2", image_size=TEST_SIZE, seed=1)
    save(model, processor, out)
    return out


@pytest.fixture(scope="session")
def small_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 train scenes with 20 classification-probe images."""
    out = tmp_path_factory.mktemp("world") / "train"
    generate(WorldConfig(split="train", n=120, seed=3, size=TEST_SIZE, probe_n=20), out)
    return out


@pytest.fixture(scope="session")
def audit_splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train and test splits large enough for the text-only audit and balance checks.

    At the default 64 px, not the tests' 32: glyphs are drawn only where they are legible,
    so at 32 px the OCR category would lack its glyph task.
    """
    root = tmp_path_factory.mktemp("audit")
    train, test = root / "train", root / "test"
    generate(WorldConfig(split="train", n=3000, seed=0, size=64, probe_n=0), train, workers=2)
    generate(WorldConfig(split="test", n=1500, seed=0, size=64, probe_n=0), test, workers=2)
    return train, test


def hold_folder_lock(folder: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``folder``'s lock for ``seconds``; returns once it holds it."""
    code = (
        "import time\n"
        "from pivotlab.io import folder_lock\n"
        f"with folder_lock({str(folder)!r}):\n"
        "    print('held', flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process
