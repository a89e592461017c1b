"""Typed component configs loaded from a TOML file with environment overrides.

Every component has one frozen dataclass config. `load_section(KafkaConfig, path,
"kafka")` reads the `[kafka]` table of the TOML file and then applies environment
overrides named `PLUM_<SECTION>__<FIELD>` (double underscore), e.g.
`PLUM_KAFKA__PORT=19092`. Values from the environment are parsed by the field's type
(int, float, bool, str, Path, tuples of those), so a bad override fails at start-up with
the variable's name in the message, not deep inside a component.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "PLUM_"
DEFAULT_CONFIG_ENV = "PLUM_CONFIG"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config file or override that cannot be turned into the component's config."""


def default_config_path() -> Path:
    """The TOML file used when none is given: $PLUM_CONFIG, else configs/demo.toml."""
    return Path(os.environ.get(DEFAULT_CONFIG_ENV, REPO_ROOT / "configs" / "demo.toml"))


def read_toml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_section(
    cls: type[T],
    path: Path | str | None,
    section: str,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> T:
    """Build `cls` from `[section]` of the TOML at `path`, then env, then `overrides`.

    Precedence, lowest first: dataclass defaults, TOML, environment, keyword overrides.
    Unknown keys in the TOML section are an error (a typo must not be ignored silently).
    """
    data = read_toml(path if path is not None else default_config_path()).get(section, {})
    return from_mapping(cls, data, section, env=env, **overrides)


def from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    section: str,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"[{section}] has unknown keys {unknown}; known: {sorted(fields)}")
    values: dict[str, Any] = {}
    for name in fields:
        hint = hints[name]
        if name in data:
            values[name] = _coerce(data[name], hint, f"[{section}].{name}")
        env_name = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
        if env_name in env:
            values[name] = _parse_env(env[env_name], hint, env_name)
        if name in overrides and overrides[name] is not None:
            values[name] = _coerce(overrides[name], hint, f"override {name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _coerce(value: Any, hint: Any, where: str) -> Any:
    hint, optional = _strip_optional(hint)
    if value is None and optional:
        return None
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        return Path(value)
    return value


def _parse_env(raw: str, hint: Any, name: str) -> Any:
    hint, optional = _strip_optional(hint)
    if optional and raw == "":
        return None
    origin = typing.get_origin(hint)
    try:
        if origin in (tuple, list):
            args = typing.get_args(hint)
            item = args[0] if args else str
            parts = [p.strip() for p in raw.split(",") if p.strip()]
            return tuple(_parse_env(p, item, name) for p in parts)
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(
            f"environment {name}={raw!r} is not a valid {getattr(hint, '__name__', hint)}"
        ) from exc


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Root of all runtime state (broker data, checkpoints, logs): $PLUM_STATE_DIR or ./state."""
    env = os.environ if env is None else env
    return Path(env.get("PLUM_STATE_DIR", REPO_ROOT / "state")).resolve()
