"""The stage's TRL arguments: the ``trainer:`` section last, the global batch kept, and no
process state set up as a side effect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pivotlab.train import ConfigError
from pivotlab.train.arguments import accumulation, trl_arguments
from tests.train.conftest import tiny_config


def test_the_trainer_section_wins_over_the_stage_settings(preset, tmp_path) -> None:
    plain = trl_arguments(tiny_config("post-dpo", preset), tmp_path, 3, 1)
    cfg = tiny_config("post-dpo", preset, "trainer.dataloader_drop_last=false", "trainer.seed=7")
    args = trl_arguments(cfg, tmp_path, 3, 1)
    assert (plain["dataloader_drop_last"], plain["seed"]) == (True, 0)
    assert (args["dataloader_drop_last"], args["seed"]) == (False, 7)


def test_accumulation_keeps_the_global_batch(preset) -> None:
    cfg = tiny_config("post-dpo", preset, "train.batch_size=8", "train.per_device_batch_size=2")
    assert [accumulation(cfg, n) for n in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ConfigError, match=r"train\.batch_size 8 is not a multiple of .* = 6"):
        accumulation(cfg, 3)


def test_arguments_leave_setting_up_the_processes_to_process_state(preset, tmp_path) -> None:
    # A fresh interpreter: in this one the tests' stages have set the processes up already.
    script = (
        "import sys; from trl import SFTConfig; from pivotlab.train import StageConfig\n"
        "from pivotlab.train.arguments import process_state, trl_arguments\n"
        "cfg = StageConfig(trainer={'use_cpu': True})\n"
        "args = trl_arguments(cfg, sys.argv[1], 1, 1)\n"
        "try:\n    SFTConfig(**args).device\nexcept ValueError:\n    print('no state')\n"
        "process_state(cfg)\n"
        "print(SFTConfig(**args).device)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["no", "state", "cpu"]
