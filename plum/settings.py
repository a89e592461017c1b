"""The settings root: one config file, every section of it, and the rules between them.

    settings = Settings.load(args.config)          # TOML + PLUM_* environment, read once
    settings.check(TRAINER_CHECKS)                 # refuse a contradictory config at start
    data = settings.section(DataConfig, "trainer_data")

Three kinds of rule keep a config honest, each in one place:

- inside a section, the config class's `__post_init__` (e.g. `max_prompt_len <= seq_len`);
- a value derived from another is computed by the loader, never copied (plum/config.py:
  the Kafka address from `[kafka]`, the disambiguation range from `[sid]`, `reward_max`
  from the `[flink]` weights); a copy that contradicts its source is refused;
- between independent settings of different sections, a `Check` (e.g. a prompt must leave
  room for the target's SID tokens inside the sequence length). A failed check raises
  `ConfigError` with one line naming both fields and their values.

This module knows no component (plum is the bottom layer): the checks are declared by the
component that relies on them, beside its config, where it can see every class involved —
streams/flink/config_checks.py, tokenizer/config_checks.py, trainer/config_checks.py, and
deploy/local/config_checks.py, which holds them all. Each long-running component runs its
checks once at start (`plum flink run`, `plum tokenizer serve`, `plum trainer ...`), and
`plum demo` runs every check before it starts anything. Checks read the file and the
environment only: a command-line flag (e.g. a test's `--topic-prefix`) is a choice for one
process and is not checked against the file.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from plum.config import ConfigError, ConfigFile

T = TypeVar("T")

RELATIONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Check:
    """One rule `left relation right` between settings of (usually) two sections.

    `left` and `right` say what is compared, naming the fields (`[trainer_data].seq_len`);
    `values` computes both sides from the settings; `why` says what breaks otherwise.
    """

    left: str
    relation: str
    right: str
    values: Callable[[Settings], tuple[Any, Any]]
    why: str = ""
    # Pairs for which the rule does not apply (e.g. a port of 0 = "off" clashes with nothing).
    applies: Callable[[Any, Any], bool] = lambda a, b: True

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation {self.relation!r} is not one of {sorted(RELATIONS)}")

    def failure(self, settings: Settings) -> str | None:
        """None when the rule holds, else one line naming both sides and their values."""
        a, b = self.values(settings)
        if not self.applies(a, b) or RELATIONS[self.relation](a, b):
            return None
        why = f" ({self.why})" if self.why else ""
        return f"{self.left} {self.relation} {self.right} does not hold: {a!r} vs {b!r}{why}"


class Settings:
    """Every section of one config file (with its environment), typed on request."""

    def __init__(self, config_file: ConfigFile) -> None:
        self.file = config_file
        self._typed: dict[tuple[type, str], Any] = {}

    @classmethod
    def load(cls, path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """The TOML at `path` (default: $PLUM_CONFIG or configs/demo.toml) and `env`."""
        return cls(ConfigFile.read(path, env))

    @property
    def path(self) -> Path | None:
        return self.file.path

    @property
    def section_names(self) -> list[str]:
        """The sections the file holds (a missing section means: all defaults)."""
        return sorted(self.file.data)

    def section(self, cls: type[T], name: str) -> T:
        """`[name]` as `cls`, derived fields filled; validated once and cached."""
        key = (cls, name)
        if key not in self._typed:
            self._typed[key] = self.file.section(cls, name)
        return self._typed[key]

    def load_sections(self, classes: Mapping[str, type]) -> None:
        """Build every section in `classes` ({name: config class}): refuses a bad one."""
        for name, cls in classes.items():
            self.section(cls, name)

    def problems(self, checks: Iterable[Check]) -> list[str]:
        """Every check that fails, as one line each."""
        return [line for c in checks if (line := c.failure(self)) is not None]

    def check(self, checks: Iterable[Check]) -> Settings:
        """Raise ConfigError (one line) for the first check that fails; else self."""
        found = self.problems(checks)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            where = f"config {self.path}: " if self.path else ""
            raise ConfigError(f"{where}{found[0]}{more}")
        return self


def same(left: tuple[type, str, str], right: tuple[type, str, str], why: str = "") -> Check:
    """A check that two fields hold the same value: (class, section, field) on each side."""
    (lcls, lsec, lfield), (rcls, rsec, rfield) = left, right
    return Check(
        f"[{lsec}].{lfield}",
        "==",
        f"[{rsec}].{rfield}",
        lambda s: (
            getattr(s.section(lcls, lsec), lfield),
            getattr(s.section(rcls, rsec), rfield),
        ),
        why,
    )


def distinct_ports(*ports: tuple[type, str, str]) -> tuple[Check, ...]:
    """Pairwise checks that the listed (class, section, field) ports differ; a port <= 0
    takes no fixed port (0 = a free one, -1 = no listener) and conflicts with none."""
    checks = []
    for i, (lcls, lsec, lfield) in enumerate(ports):
        for rcls, rsec, rfield in ports[i + 1 :]:
            checks.append(
                Check(
                    f"[{lsec}].{lfield}",
                    "!=",
                    f"[{rsec}].{rfield}",
                    lambda s, a=(lcls, lsec, lfield), b=(rcls, rsec, rfield): (
                        getattr(s.section(a[0], a[1]), a[2]),
                        getattr(s.section(b[0], b[1]), b[2]),
                    ),
                    "two processes of one stack cannot listen on one port",
                    applies=lambda a, b: a > 0 and b > 0,
                )
            )
    return tuple(checks)
