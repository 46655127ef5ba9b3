"""Run configuration: pydantic models loaded from YAML with `--set a.b=c` overrides."""
from engine.config.loader import ConfigError, load_config, parse_override
from engine.config.models import (
    DataConfig,
    LionConfig,
    OpenAIEndpoint,
    Parallelism,
    RoleConfig,
    SamplingParams,
    TrainConfig,
)
from engine.config.run import RunConfig

__all__ = [
    "ConfigError", "load_config", "parse_override", "DataConfig", "LionConfig", "OpenAIEndpoint",
    "Parallelism", "RoleConfig", "RunConfig", "SamplingParams", "TrainConfig",
]
