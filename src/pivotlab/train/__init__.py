"""Training stages on TRL: ``align`` (projector), ``full`` (all parts), ``post`` (sft, dpo,
ipo, mpo or grpo on the same records), each from a YAML config with dotted overrides.

Public API: ``load_config`` reads a config, ``run_stage`` trains one stage into a run
folder and returns a ``StageResult``. ``run_stage`` and ``StageResult`` are imported on
first use: they bring in TRL, which reading and planning a config never need.
"""

from typing import Any

from pivotlab.train.config import ConfigError, StageConfig, load_config

__all__ = ["ConfigError", "StageConfig", "StageResult", "load_config", "run_stage"]
_FROM_STAGES = ("StageResult", "run_stage")


def __getattr__(name: str) -> Any:
    if name in _FROM_STAGES:
        from pivotlab.train import stages

        return getattr(stages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
