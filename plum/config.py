"""Typed component configs loaded from a TOML file with environment overrides.

Every component has one frozen dataclass config. `load_section(KafkaConfig, path,
"kafka")` reads the `[kafka]` table of the TOML file and then applies environment
overrides named `PLUM_<SECTION>__<FIELD>` (double underscore), e.g.
`PLUM_KAFKA__PORT=19092`. Values from the environment are parsed by the field's type
(int, float, bool, str, Path, tuples of those), so a bad override fails at start-up with
the variable's name in the message, not deep inside a component.

Derived values are computed, never copied. A field declared with `derived(...)` is filled
by the loader from other sections of the same file (e.g. the trainer's `reward_max` from
the `[flink]` reward weights), and every field named `bootstrap` is the Kafka address,
filled from `[kafka]` host:port: `[kafka]` is the only place the address is configured.
Precedence for a derived field:

    keyword override (a command-line flag)  >  PLUM_<SECTION>__<FIELD>  >  derived value

A copy of a derived value in the field's own TOML section is accepted only when it equals
the derived value; one that contradicts it is refused with a one-line error naming both
fields. An environment variable or a flag wins without a check: it is a choice made for one
process at launch (e.g. `--bootstrap` for a broker on a free port in the tests).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "PLUM_"
DEFAULT_CONFIG_ENV = "PLUM_CONFIG"
REPO_ROOT = Path(__file__).resolve().parent.parent
# The Kafka address: [kafka] host and port, the only place it is configured.
KAFKA_SECTION = "kafka"
DEFAULT_KAFKA_HOST = "127.0.0.1"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_KAFKA_BOOTSTRAP = f"{DEFAULT_KAFKA_HOST}:{DEFAULT_KAFKA_PORT}"  # no [kafka] at all
BOOTSTRAP_FIELD = "bootstrap"
_DERIVED = "plum.config.derived"


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


@dataclass(frozen=True)
class Derived:
    """How the loader computes a field from other settings of the same file."""

    source: str  # what it is computed from, for messages: "[flink] reward weights"
    compute: Callable[[ConfigFile], Any]


def derived(default: Any, source: str, compute: Callable[[ConfigFile], Any]) -> Any:
    """A dataclass field whose value the loader computes with `compute(config_file)`.

    `default` is what direct construction (`Config()`) gets; it should itself be computed
    from the same contract, not typed in again.
    """
    return dataclasses.field(default=default, metadata={_DERIVED: Derived(source, compute)})


class ConfigFile:
    """One config TOML, every section of it, and the environment its overrides come from."""

    def __init__(
        self,
        data: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        path: Path | None = None,
    ) -> None:
        self.data = data
        self.env = os.environ if env is None else env
        self.path = path

    @classmethod
    def read(cls, path: Path | str | None = None, env: Mapping[str, str] | None = None):
        path = Path(path) if path is not None else default_config_path()
        return cls(read_toml(path), env, path)

    def table(self, section: str) -> Mapping[str, Any]:
        """The raw `[section]` table (empty when the file has none)."""
        table = self.data.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section}] must be a table, got {table!r}")
        return table

    def section(self, cls: type[T], section: str, **overrides: Any) -> T:
        """`cls` from `[section]`, env and `overrides`, derived fields filled from this file."""
        return from_mapping(
            cls, self.table(section), section, env=self.env, config_file=self, **overrides
        )

    def kafka_bootstrap(self) -> str:
        """host:port of `[kafka]`, with PLUM_KAFKA__HOST / PLUM_KAFKA__PORT applied."""
        table = self.table(KAFKA_SECTION)
        parts: list[Any] = []
        for name, hint, default in (
            ("host", str, DEFAULT_KAFKA_HOST),
            ("port", int, DEFAULT_KAFKA_PORT),
        ):
            env_name = f"{ENV_PREFIX}{KAFKA_SECTION.upper()}__{name.upper()}"
            if env_name in self.env:
                parts.append(_parse_env(self.env[env_name], hint, env_name))
            elif name in table:
                parts.append(_coerce(table[name], hint, f"[{KAFKA_SECTION}].{name}"))
            else:
                parts.append(default)
        return f"{parts[0]}:{parts[1]}"


KAFKA_BOOTSTRAP = Derived(f"[{KAFKA_SECTION}].host:port", ConfigFile.kafka_bootstrap)


def kafka_bootstrap(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The Kafka address of the config file at `path` (default: $PLUM_CONFIG or demo.toml)."""
    return ConfigFile.read(path, env).kafka_bootstrap()


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
    Derived fields (see the module docstring) are computed from the rest of the file.
    """
    return ConfigFile.read(path, env).section(cls, section, **overrides)


def from_mapping(
    cls: type[T],
    data: Mapping[str, Any],
    section: str,
    env: Mapping[str, str] | None = None,
    *,
    config_file: ConfigFile | None = None,
    **overrides: Any,
) -> T:
    """`cls` from one section's table; derived fields come from `config_file` (default: a
    file holding only this section, so they take their sources' defaults and env)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    env = os.environ if env is None else env
    if config_file is None:
        config_file = ConfigFile({section: data}, env)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"[{section}] has unknown keys {unknown}; known: {sorted(fields)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        hint = hints[name]
        explicit = False
        if name in data:
            values[name] = _coerce(data[name], hint, f"[{section}].{name}")
        env_name = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
        if env_name in env:
            values[name] = _parse_env(env[env_name], hint, env_name)
            explicit = True
        if name in overrides and overrides[name] is not None:
            values[name] = _coerce(overrides[name], hint, f"override {name}")
            explicit = True
        derivation = _derivation(f, hint)
        if derivation is not None and not explicit:
            value = _coerce(derivation.compute(config_file), hint, derivation.source)
            if name in data and not _same(values[name], value):
                raise ConfigError(
                    f"[{section}].{name} = {values[name]!r} contradicts {derivation.source} "
                    f"= {value!r}: it is derived from there, remove it from [{section}]"
                )
            values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


def _derivation(f: dataclasses.Field, hint: Any) -> Derived | None:
    declared = f.metadata.get(_DERIVED)
    if declared is not None:
        return declared
    if f.name == BOOTSTRAP_FIELD and _strip_optional(hint)[0] is str:
        return KAFKA_BOOTSTRAP
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


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
