"""Rules between the SID service's settings and those of the components it reads from
(run by `plum tokenizer serve` at start; see plum/settings.py)."""

from __future__ import annotations

from plum.settings import Check, same
from streams.simulator.config import SimulatorConfig
from tokenizer.service import SidServiceConfig

CHECKS: tuple[Check, ...] = (
    same(
        (SidServiceConfig, "sid_service", "topic_prefix"),
        (SimulatorConfig, "simulator", "topic_prefix"),
        "the SID service reads the uploads the simulator writes",
    ),
)
