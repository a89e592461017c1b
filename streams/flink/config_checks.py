"""Rules between the Flink job's settings and those of the components it reads from
(run by `plum flink run` at start; see plum/settings.py)."""

from __future__ import annotations

from plum.settings import Check, Settings, same
from streams.flink.job import FlinkConfig
from streams.simulator.config import SimulatorConfig


def _delay_and_bound(s: Settings) -> tuple[int, int]:
    sim = s.section(SimulatorConfig, "simulator")
    delay = sim.max_delay_ms if sim.out_of_order_fraction > 0 else 0
    return delay, s.section(FlinkConfig, "flink").out_of_orderness_ms


CHECKS: tuple[Check, ...] = (
    same(
        (FlinkConfig, "flink", "topic_prefix"),
        (SimulatorConfig, "simulator", "topic_prefix"),
        "the job reads the watches and uploads the simulator writes",
    ),
    Check(
        "[simulator].max_delay_ms",
        "<",
        "[flink].out_of_orderness_ms",
        _delay_and_bound,
        "a watch the simulator holds back must stay inside the watermark's bound, or whether "
        "it counts depends on timing; the bound applies when out_of_order_fraction > 0",
        applies=lambda delay, bound: delay > 0,
    ),
)
