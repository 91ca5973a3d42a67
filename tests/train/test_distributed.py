"""Two CPU processes (gloo, through ``accelerate launch``) train like one process with the
same global batch: the same records per step, and the same loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pivotlab.world.jsonl import read_jsonl
from tests.train.conftest import CONFIGS

# Summation order differs between one process and an all-reduce over two; over four steps
# the curves agree far inside this.
LOSS_TOLERANCE = 1e-4


def _train(out: Path, preset: list[str], processes: int, config: str, *extra: str) -> None:
    # `--multi_gpu` is accelerate's switch for one process per rank (torchrun); on a
    # machine without GPUs pivotlab's stages then train on the CPU over gloo.
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "accelerate.commands.launch", "--multi_gpu"]
        launch += ["--num_processes", str(processes), "--num_machines", "1"]
        launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    per_device = 4 // processes
    command = [
        *launch,
        "-m",
        "pivotlab",
        "train",
        "--config",
        str(CONFIGS / "tiny" / f"{config}.yaml"),
        "--out",
        str(out),
        *preset,
        "train.steps=4",
        "train.lr=1e-3",
        f"train.per_device_batch_size={per_device}",
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _curve(out: Path, metric: str) -> list[float]:
    rows = read_jsonl(out / "metrics.jsonl")
    return [r["value"] for r in rows if r["split"] == "train" and r["metric"] == metric]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "extra", "metrics"),
    [
        ("post-dpo", (), ("loss", "rewards/margins")),
        # VIRAL's head gets its gradient outside the model's forward: DDP must still
        # average it, or the processes' heads drift apart.
        (
            "post-dpo-viral",
            ("viral.teacher=self", "viral.head_width=32"),
            ("loss", "alignment_loss"),
        ),
    ],
)
def test_two_processes_match_one_process_with_the_same_global_batch(
    preset, tmp_path, config, extra, metrics
) -> None:
    _train(tmp_path / "one", preset, 1, config, *extra)
    _train(tmp_path / "two", preset, 2, config, *extra)
    one, two = tmp_path / "one", tmp_path / "two"
    assert read_jsonl(one / "samples.jsonl") == read_jsonl(two / "samples.jsonl")
    assert len(_curve(one, "loss")) == 4
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    for metric in metrics:
        assert _curve(one, metric) == pytest.approx(_curve(two, metric), abs=LOSS_TOLERANCE)
