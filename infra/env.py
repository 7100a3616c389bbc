"""Reading configuration from the environment, loudly.

Every setting of Archiva comes from the environment (see `.env.example`).
A value that is set but malformed stops the process with a message that
names the variable: a typo in production must never fall back silently to
a default.  Secrets may also be given as `NAME_FILE` pointing at a file.
"""

from __future__ import annotations

import os
from pathlib import Path


class ConfigError(Exception):
    """A configuration value is present but unusable."""


def env(name: str, default: str = "") -> str:
    """The value of NAME, or the contents of the file named by NAME_FILE."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={file_name!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = env(name).strip().lower()
    if value == "":
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def envint(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = env(name).strip()
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} is below the minimum {minimum}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}={number} is above the maximum {maximum}")
    return number


def envfloat(name: str, default: float, *, minimum: float | None = None) -> float:
    value = env(name).strip()
    if value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} is below the minimum {minimum}")
    return number


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env(name).strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def envlist(name: str, default: list[str] | None = None) -> list[str]:
    value = env(name).strip()
    if value == "":
        return list(default or [])
    return [item.strip() for item in value.split(",") if item.strip()]


def envport(name: str, default: int) -> int:
    return envint(name, default, minimum=0, maximum=65535)
