"""Run configuration: the schema, Hydra composition, and cross-component validation."""

from pretrain.config.compose import compose_config, compose_dict, config_dir
from pretrain.config.schema import Config
from pretrain.config.validate import validate
from pretrain.errors import ConfigError

__all__ = ["Config", "ConfigError", "compose_config", "compose_dict", "config_dir", "validate"]
