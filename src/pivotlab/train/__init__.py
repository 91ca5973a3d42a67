"""Training stages on TRL: ``align`` (projector), ``full`` (all parts), ``post`` (sft, dpo,
ipo or mpo on the same records), each from a YAML config with dotted overrides.

Public API: ``load_config`` reads a config, ``run_stage`` trains one stage into a run
folder and returns a ``StageResult``.
"""

from pivotlab.train.config import ConfigError, StageConfig, load_config
from pivotlab.train.stages import StageResult, run_stage

__all__ = ["ConfigError", "StageConfig", "StageResult", "load_config", "run_stage"]
