from zlora.config.load import apply_overrides, dump_config, load_config, parse_config
from zlora.config.schema import Config

__all__ = ["Config", "apply_overrides", "dump_config", "load_config", "parse_config"]
