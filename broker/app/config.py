"""Options from a TOML file (`--config`) and from `BROKER_*` environment
variables, for `twistd broker`: the command line wins over the environment,
which wins over the file.

In the file, each key is an option's name (`max-prefetch` or
`max_prefetch`) with a value of its kind; `port` may be a list. In the
environment, `BROKER_MAX_PREFETCH=512`, and `BROKER_PORT="3000 tls:3001"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.toml_file import read_toml

ENVIRONMENT_PREFIX = "BROKER_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says where and why."""


def option_name(key: str) -> str:
    return key.strip().lower().replace("_", "-")


def read_file(path: Path) -> dict[str, Any]:
    """The options a TOML file sets, by option name."""
    document = read_toml(path, "config", ConfigError)
    options = {}
    for key, value in document.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}]: options are top-level keys, not tables")
        options[option_name(key)] = value
    return options


def read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The options BROKER_* variables set, by option name."""
    return {
        option_name(key[len(ENVIRONMENT_PREFIX) :]): value
        for key, value in environ.items()
        if key.startswith(ENVIRONMENT_PREFIX) and len(key) > len(ENVIRONMENT_PREFIX)
    }


def flag_value(value: object, where: str) -> bool:
    """A flag's value from a file (a boolean) or the environment (1/0, true/false)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{where}: true or false, not {value!r}")


def ports_value(value: object, where: str) -> list[str]:
    """`port`: a list of strings (or numbers) in a file, or words in the environment."""
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list) and all(
        isinstance(item, str | int) and not isinstance(item, bool) for item in value
    ):
        return [str(item) for item in value]
    raise ConfigError(f"{where}: a port or a list of ports, not {value!r}")


def parameter_value(value: object, where: str) -> str:
    """A parameter's value as the command line would give it."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: a string or a number, not {value!r}")
    return str(value)
