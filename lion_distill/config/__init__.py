"""Run configuration: pydantic models loaded from YAML with `--set a.b=c` overrides."""

from lion_distill.config.loader import load_config, parse_override
from lion_distill.config.models import (
    DataConfig,
    LionConfig,
    OpenAIEndpoint,
    Parallelism,
    RoleConfig,
    SamplingParams,
    TrainConfig,
)
from lion_distill.config.run import RunConfig
from lion_distill.errors import ConfigError

__all__ = [
    "ConfigError",
    "load_config",
    "parse_override",
    "DataConfig",
    "LionConfig",
    "OpenAIEndpoint",
    "Parallelism",
    "RoleConfig",
    "RunConfig",
    "SamplingParams",
    "TrainConfig",
]
