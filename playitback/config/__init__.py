"""Config tree, loading and derived values."""
from playitback.config.defaults import get_cfg
from playitback.config.load import ConfigError, config_from_text, dump_config, load_config

__all__ = ["ConfigError", "config_from_text", "dump_config", "get_cfg", "load_config"]
