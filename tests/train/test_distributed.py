"""Two CPU processes (gloo, through ``accelerate launch``) train like one process with the
same global batch: the same records per step, and the same loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pivotlab.io import read_jsonl
from tests.train.conftest import assert_same_curves, launch_training, train_curve


def _train(out: Path, preset: list[str], processes: int, config: str, *extra: str) -> None:
    # `--multi_gpu` is accelerate's switch for one process per rank (torchrun); on a
    # machine without GPUs pivotlab's stages then train on the CPU over gloo.
    launch = []
    if processes > 1:
        launch += ["-m", "accelerate.commands.launch", "--multi_gpu"]
        launch += ["--num_processes", str(processes), "--num_machines", "1"]
        launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    launch_training(launch, out, preset, 4 // processes, config, *extra)


@pytest.mark.trains
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
    assert len(train_curve(one, "loss")) == 4
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    assert_same_curves(one, two, tuple(metrics))
