"""Reward of a watch and the deterministic decision to keep it as an SFT example.

The reward follows the spirit of the PLUM paper's reward-weighted SFT (eq. 3): a watch
is worth more when it was clicked, watched through, and (when the user answered a
survey) rated as satisfying:

    r = w_click * clicked
      + w_ratio * min(watch_ratio, ratio_cap)
      + w_satisfaction * (satisfaction if answered else satisfaction_default)

All weights are >= 0, so r is in [0, r_max] with

    r_max = w_click + w_ratio * ratio_cap + w_satisfaction * 1.

Sampling: a clicked watch becomes an example with probability p = min(1, r / r_max).
The coin is not random but a stable hash of the event id,

    u = blake2b(salt + event_id) read as a 64-bit integer / 2**64   (u in [0, 1))
    keep  <=>  u < p

so a replay, a backfill or a restart from a checkpoint keeps exactly the same examples,
and the decision does not depend on which worker or Python process evaluates it
(Python's `hash()` is salted per process and must never be used here).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

_TWO_64 = float(2**64)


@dataclass(frozen=True)
class RewardWeights:
    click: float = 1.0
    ratio: float = 1.0
    satisfaction: float = 0.5
    ratio_cap: float = 1.0  # a watch ratio above this (replays) earns no more reward
    satisfaction_default: float = 0.5  # used when the user gave no survey answer

    def __post_init__(self) -> None:
        for name in ("click", "ratio", "satisfaction", "ratio_cap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"reward weight {name} must be finite and >= 0, got {value!r}")
        if not 0.0 <= self.satisfaction_default <= 1.0:
            raise ValueError(
                f"satisfaction_default must be in [0, 1], got {self.satisfaction_default!r}"
            )
        if self.max_reward() <= 0:
            raise ValueError("reward weights are all zero: r_max would be 0")

    def max_reward(self) -> float:
        return self.click + self.ratio * self.ratio_cap + self.satisfaction


def reward(
    clicked: bool, watch_ratio: float, satisfaction: float | None, w: RewardWeights
) -> float:
    """r(clicked, watch ratio, satisfaction) as documented in the module docstring."""
    sat = w.satisfaction_default if satisfaction is None else satisfaction
    ratio = min(max(watch_ratio, 0.0), w.ratio_cap)
    return w.click * (1.0 if clicked else 0.0) + w.ratio * ratio + w.satisfaction * sat


def unit_hash(event_id: str, salt: str = "") -> float:
    """A uniform-looking number in [0, 1) that depends only on (salt, event_id)."""
    digest = hashlib.blake2b((salt + event_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_64


def keep_probability(r: float, r_max: float) -> float:
    if r_max <= 0:
        raise ValueError(f"r_max must be > 0, got {r_max!r}")
    return min(1.0, max(0.0, r / r_max))


def keep_example(event_id: str, r: float, r_max: float, salt: str = "") -> bool:
    """Deterministic Bernoulli(min(1, r / r_max)) decided by the hash of the event id."""
    return unit_hash(event_id, salt) < keep_probability(r, r_max)
