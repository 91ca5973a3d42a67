"""The shipped ``configs/accelerate/`` launch configs: accelerate reads each one as intended
(every key known to ``accelerate launch``, the DeepSpeed and FSDP plugins it builds from
them), the two-process CPU config trains ``post`` exactly like one process, and FSDP on the
CPU is tried and skipped with the reason this stack gives.

DeepSpeed is not installed here (and transformers will not build trainer arguments for it
without the package), so the DeepSpeed configs are checked up to accelerate's own
``DeepSpeedPlugin``; ``docs/scale.md`` says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from pivotlab.io import read_jsonl
from tests.train.conftest import CONFIGS, assert_same_curves, launch_training, train_curve

LAUNCH = CONFIGS / "accelerate"
EXPECTED = {  # config: (distributed type, processes, ZeRO stage or FSDP version)
    "ddp": ("MULTI_GPU", 8, None),
    "cpu-ddp": ("MULTI_GPU", 2, None),
    "deepspeed-zero2": ("DEEPSPEED", 8, 2),
    "deepspeed-zero3": ("DEEPSPEED", 8, 3),
    "fsdp2": ("FSDP", 8, 2),
}


def _launch_args(config: Path):
    # accelerate launch's own parsing and validation (the private step `accelerate launch`
    # runs before it starts any process), so a config is read exactly as a launch reads it.
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config), "-m", "pivotlab", "train"])
    known = {action.dest for action in parser._actions}
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults, known


def test_the_shipped_configs_are_the_ones_expected() -> None:
    assert sorted(p.stem for p in LAUNCH.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_reads_each_launch_config_as_intended(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = LAUNCH / f"{name}.yaml"
    assert isinstance(load_config_from_file(str(config)), ClusterConfig)  # no unknown keys
    kind, processes, level = EXPECTED[name]
    args, defaults, known = _launch_args(config)
    assert defaults.distributed_type.value == kind
    assert args.num_processes == processes
    assert defaults.mixed_precision == "no"  # the stage config's train.precision decides
    # Keys inside deepspeed_config / fsdp_config are copied onto the launch arguments
    # without a check: a typo there would be ignored silently.
    for key in defaults.deepspeed_config:
        assert key in known, f"{name}: deepspeed_config.{key} is not a launch argument"
    for key in defaults.fsdp_config:
        assert key in known, f"{name}: fsdp_config.{key} is not a launch argument"
    if kind == "DEEPSPEED":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        plugin = DeepSpeedPlugin()
        zero = plugin.deepspeed_config["zero_optimization"]
        assert plugin.zero_stage == level
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
        assert plugin.zero3_init_flag is False
        if level == 3:
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    elif kind == "FSDP":
        for variable, value in prepare_multi_gpu_env(args).items():
            monkeypatch.setenv(variable, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == level
        assert plugin.reshard_after_forward is True
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"


def _launch(config: Path) -> list[str]:
    return ["-m", "accelerate.commands.launch", "--config_file", str(config)]


@pytest.mark.trains
@pytest.mark.slow
def test_cpu_ddp_config_trains_post_like_one_process(preset, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    launch_training([], one, preset, 4, "post-dpo")
    launch_training(_launch(LAUNCH / "cpu-ddp.yaml"), two, preset, 2, "post-dpo")
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    assert read_jsonl(one / "samples.jsonl") == read_jsonl(two / "samples.jsonl")
    assert len(train_curve(one, "loss")) == 4
    assert_same_curves(one, two, ("loss", "rewards/margins"))


PROBE = """
from accelerate import Accelerator, PartialState
PartialState(cpu=True)  # what pivotlab's stages do on a machine without GPUs
state = Accelerator().state
plugin = getattr(state, "fsdp_plugin", None)
print("PROBE", state.distributed_type.value, plugin is not None, flush=True)
"""


@pytest.mark.trains
@pytest.mark.slow
def test_fsdp_on_cpu_is_tried_and_skipped_with_the_reason(preset, tmp_path: Path) -> None:
    config = yaml.safe_load((LAUNCH / "fsdp2.yaml").read_text())
    config["num_processes"] = 2
    (tmp_path / "cpu-fsdp.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "probe.py").write_text(PROBE)
    command = [sys.executable, *_launch(tmp_path / "cpu-fsdp.yaml"), str(tmp_path / "probe.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Two processes share the pipe: a line may carry the other's output before it.
    states = [list(found) for found in re.findall(r"PROBE (\w+) (True|False)", result.stdout)]
    assert len(states) == 2
    if states[0] != ["FSDP", "True"]:
        import accelerate
        import torch

        pytest.skip(
            f"FSDP on the CPU: accelerate {accelerate.__version__} with torch "
            f"{torch.__version__} sets FSDP up only for accelerator devices; the CPU "
            f"processes run as {states[0][0]} (plain DDP over gloo), see docs/scale.md"
        )
    one, two = tmp_path / "one", tmp_path / "two"
    launch_training([], one, preset, 4, "post-dpo")
    launch_training(_launch(tmp_path / "cpu-fsdp.yaml"), two, preset, 2, "post-dpo")
    assert_same_curves(one, two, ("loss", "rewards/margins"))
