"""Run configuration (DESIGN §1's bottom layer): the schema, its validation, files and presets.

A run is fully described by a :class:`RunConfig` (task + model + training). Presets are TOML files
in ``grokinterp/presets/``, one per reproduced paper setting (DESIGN §6).
"""

from grokinterp.config.io import (
    PRESET_DIR,
    apply_overrides,
    load_config,
    load_preset,
    parse_value,
    preset_names,
)
from grokinterp.config.schema import (
    GrokinterpError,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from grokinterp.config.validation import estimate_params, validate

__all__ = [
    "PRESET_DIR",
    "GrokinterpError",
    "ModelConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "estimate_params",
    "load_config",
    "load_preset",
    "parse_value",
    "preset_names",
    "validate",
]
