from zlora.config.load import apply_overrides, dump_config, load_config, parse_config, read_yaml, validate
from zlora.config.schema import Config

__all__ = ["Config", "apply_overrides", "dump_config", "load_config", "parse_config", "read_yaml", "validate"]
