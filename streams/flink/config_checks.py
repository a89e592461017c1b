"""Rules between the Flink job's settings and those of the components it reads from
(run by `plum flink run` at start; see plum/settings.py)."""

from __future__ import annotations

from plum.settings import Check, same
from streams.flink.job import FlinkConfig
from streams.simulator.config import SimulatorConfig

CHECKS: tuple[Check, ...] = (
    same(
        (FlinkConfig, "flink", "topic_prefix"),
        (SimulatorConfig, "simulator", "topic_prefix"),
        "the job reads the watches and uploads the simulator writes",
    ),
)
