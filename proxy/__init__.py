"""guardproxy's HTTP side: an OpenAI-compatible proxy that screens with guard models."""

from ._app import create_app
from ._config import ProxyConfig, load_config, parse_config
from .exceptions import ConfigError, ProxyError

__all__ = ["create_app", "ProxyConfig", "load_config", "parse_config", "ConfigError", "ProxyError"]
