"""The SID contract: what a semantic ID is, for the SID service and the trainer alike.

A SID is L + 1 integer codes: the tokenizer's L codes (code c of level l in
[0, level_sizes[l])) and one disambiguation code in [0, disambiguation_size): 0 for the
first video with those L codes, 1 for the second, and so on. The SID service hands the
disambiguation codes out (tokenizer/index.py) and the trainer has one token for each
(trainer/vocab.py), so both must use the same range. The levels come from the tokenizer
checkpoint (trained from `[tokenizer]`); the disambiguation range is configured once:

    [sid]
    disambiguation_size = 256

`[sid_service].disambiguation_size` and `[trainer_vocab].disambiguation_size` are derived
from it (`disambiguation_size_field`); a copy in either section that disagrees is refused.
A 257th video sharing one L-code prefix gets no SID: the service dead-letters it, loudly,
instead of the trainer silently reading a SID it has no token for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plum.config import ConfigFile, derived, load_section

SECTION = "sid"
DEFAULT_DISAMBIGUATION_SIZE = 256
DISAMBIGUATION_CODES = 1  # codes after the tokenizer's L: one, the disambiguation code


@dataclass(frozen=True)
class SidConfig:
    """`[sid]`: the part of the SID contract that is configured."""

    disambiguation_size: int = DEFAULT_DISAMBIGUATION_SIZE  # codes per L-code prefix

    def __post_init__(self) -> None:
        if self.disambiguation_size < 1:
            raise ValueError(
                f"disambiguation_size={self.disambiguation_size} must be >= 1: every SID "
                "carries a disambiguation code"
            )


def load_sid_config(
    path: Path | str | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> SidConfig:
    """`[sid]` of the TOML at `path`, then PLUM_SID__* environment overrides."""
    return load_section(SidConfig, path, SECTION, env=env, **overrides)


def _disambiguation_size(config_file: ConfigFile) -> int:
    return config_file.section(SidConfig, SECTION).disambiguation_size


def disambiguation_size_field() -> Any:
    """The `disambiguation_size` field of a component config: derived from `[sid]`."""
    return derived(
        DEFAULT_DISAMBIGUATION_SIZE, f"[{SECTION}].disambiguation_size", _disambiguation_size
    )


def sid_length(num_levels: int) -> int:
    """Codes (and trainer tokens) per SID for a tokenizer of `num_levels` levels."""
    return num_levels + DISAMBIGUATION_CODES


@dataclass(frozen=True)
class SidSpace:
    """Every SID of one tokenizer under one disambiguation range."""

    level_sizes: tuple[int, ...]  # codes per tokenizer level
    disambiguation_size: int

    def __post_init__(self) -> None:
        if not self.level_sizes or min(self.level_sizes) < 1:
            raise ValueError(f"level_sizes={self.level_sizes} must be non-empty, each >= 1")
        if self.disambiguation_size < 1:
            raise ValueError(f"disambiguation_size={self.disambiguation_size} must be >= 1")

    @property
    def length(self) -> int:
        return sid_length(len(self.level_sizes))

    @property
    def code_ranges(self) -> tuple[int, ...]:
        """Codes allowed at each position of a SID, the disambiguation code last."""
        return (*self.level_sizes, self.disambiguation_size)

    def largest(self) -> tuple[int, ...]:
        """The SID with the largest code at every position."""
        return tuple(n - 1 for n in self.code_ranges)

    def contains(self, sid: Sequence[int]) -> bool:
        return len(sid) == self.length and all(
            0 <= int(c) < n for c, n in zip(sid, self.code_ranges, strict=True)
        )

    def covers(self, other: SidSpace) -> bool:
        """Whether every SID of `other` is a SID of this space."""
        return len(other.level_sizes) == len(self.level_sizes) and all(
            o <= s for o, s in zip(other.code_ranges, self.code_ranges, strict=True)
        )

    def count_outside(self, sids: Iterable[Sequence[int]]) -> int:
        """How many of `sids` are not SIDs of this space."""
        return sum(1 for sid in sids if not self.contains(sid))
