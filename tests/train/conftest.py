"""The tests-sized preset: the shipped tiny configs with a 32-px world, a 2-block-tower
MLLM and a handful of steps, so every stage runs in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from pivotlab.io import read_jsonl
from pivotlab.model.parts import part_modules
from pivotlab.train import StageConfig, load_config
from pivotlab.world import WorldConfig, generate

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train-world")
    generate(WorldConfig(split="train", n=24, seed=2, size=32, probe_n=0), root / "train")
    generate(WorldConfig(split="val", n=12, seed=2, size=32, probe_n=0), root / "val")
    return root / "train", root / "val"


@pytest.fixture(scope="session")
def stage1_dir(tiny_model_dir: Path) -> Path:
    """The tests' 'Stage-1' model: the suite's saved tiny MLLM."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def preset(splits: tuple[Path, Path], stage1_dir: Path) -> list[str]:
    """Overrides that shrink a shipped tiny config to the tests' size."""
    train, val = splits
    return [
        f"data.train={train}",
        f"data.eval={val}",
        "data.limit=40",
        "data.eval_limit=8",
        "train.batch_size=4",
        "train.per_device_batch_size=4",
        "train.steps=3",
        "train.logging_steps=1",
        f"model.init={stage1_dir}",
    ]


def tiny_config(name: str, preset: list[str], *overrides: str) -> StageConfig:
    """``configs/tiny/<name>.yaml`` at the tests' size, plus ``overrides``."""
    return load_config(CONFIGS / "tiny" / f"{name}.yaml", [*preset, *overrides])


# Summation order differs between one process and an all-reduce over two; over four steps
# the curves agree far inside this.
LOSS_TOLERANCE = 1e-4


def launch_training(
    launch: list[str], out: Path, preset: list[str], per_device: int, config: str, *extra: str
) -> None:
    """``pivotlab train`` on a tiny config for 4 steps, run by ``launch`` (a launcher's
    arguments before ``-m pivotlab``; empty for one plain process)."""
    command = [sys.executable, *launch, "-m", "pivotlab", "train", "--config"]
    command += [str(CONFIGS / "tiny" / f"{config}.yaml"), "--out", str(out), *preset]
    command += ["train.steps=4", "train.lr=1e-3", f"train.per_device_batch_size={per_device}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, *extra], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def train_curve(out: Path, metric: str) -> list[float]:
    """A run's per-step training values of ``metric`` from its metrics.jsonl."""
    rows = read_jsonl(out / "metrics.jsonl")
    return [r["value"] for r in rows if r["split"] == "train" and r["metric"] == metric]


def assert_same_curves(one: Path, two: Path, metrics: tuple[str, ...]) -> None:
    """Two runs logged the same per-step values of ``metrics`` within ``LOSS_TOLERANCE``."""
    for metric in metrics:
        expected = pytest.approx(train_curve(two, metric), abs=LOSS_TOLERANCE)
        assert train_curve(one, metric) == expected, metric


# A faster path that computes the same thing in another order: the equality it is held to.
RELATIVE = 1e-5
COSINE = 0.9999


def part_gradients(model) -> dict[str, torch.Tensor]:
    """Each trained part's gradient as one vector (the parameters the loss reaches: with
    feature layer -2 the tower's last block does not)."""
    gradients = {
        part: [p.grad.flatten() for m in modules for p in m.parameters() if p.grad is not None]
        for part, modules in part_modules(model).items()
    }
    return {part: torch.cat(grads) for part, grads in gradients.items() if grads}


def assert_relative(actual: torch.Tensor, expected: torch.Tensor) -> None:
    error = ((actual - expected).abs() / expected.abs().clamp(min=1e-12)).max().item()
    assert error <= RELATIVE, f"relative error {error:.2e}"
