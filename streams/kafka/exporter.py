"""Broker-side metrics: broker up, log end offsets, and consumer lag per group.

`plum kafka exporter --metrics-port 9102` runs `KafkaExporter` on `plum.runtime`: every
`interval_s` one step polls the broker and refreshes the `plum_kafka_*` gauges of the
metric catalogue, which is how the freshness dashboard sees every topic's produce rate
and every consumer group's lag (Flink's, the SID service's, the trainer's) without those
components having to report it themselves.
"""

from __future__ import annotations

import logging
import threading

from kafka import TopicPartition
from kafka.errors import KafkaError

from monitoring.metrics import Metrics
from plum.runtime import RunResult, Runtime, RuntimeConfig, Step
from streams.kafka.admin import committed_offsets
from streams.kafka.clients import end_offsets

log = logging.getLogger(__name__)

Lag = dict[tuple[str, str, int], int]  # (group, topic, partition) -> records behind


def lag_from_offsets(
    committed: dict[str, dict[TopicPartition, int]], ends: dict[TopicPartition, int]
) -> Lag:
    """End offset minus committed offset for every committed partition that still exists."""
    return {
        (group, tp.topic, tp.partition): max(0, ends[tp] - offset)
        for group, offsets in committed.items()
        for tp, offset in offsets.items()
        if tp in ends
    }


def consumer_lag(bootstrap: str) -> Lag:
    """{(group, topic, partition): end offset - committed offset} for every consumer group."""
    committed = committed_offsets(bootstrap)
    partitions = {tp for offsets in committed.values() for tp in offsets}
    if not partitions:
        return {}
    ends = end_offsets(bootstrap, {tp.topic for tp in partitions})
    return lag_from_offsets(committed, ends)


def collect(bootstrap: str, metrics: Metrics) -> bool:
    """Refresh the gauges once; returns whether the broker answered."""
    up = metrics.gauge("plum_kafka_broker_up").labels(bootstrap=bootstrap)
    try:
        committed = committed_offsets(bootstrap)
        ends = end_offsets(bootstrap)
    except (KafkaError, OSError) as exc:
        log.warning("broker %s did not answer: %s", bootstrap, exc)
        up.set(0)
        return False
    up.set(1)
    end_gauge = metrics.gauge("plum_kafka_log_end_offset")
    for tp, offset in ends.items():
        end_gauge.labels(topic=tp.topic, partition=str(tp.partition)).set(offset)
    lag_gauge = metrics.gauge("plum_kafka_consumer_lag_records")
    for (group, topic, partition), value in lag_from_offsets(committed, ends).items():
        lag_gauge.labels(topic=topic, partition=str(partition), group=group).set(value)
    return True


class KafkaExporter:
    """A runtime component: each step polls the broker once, then waits `interval_s`."""

    def __init__(self, bootstrap: str, metrics: Metrics, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s} must be > 0")
        self.bootstrap, self.metrics, self.interval_s = bootstrap, metrics, interval_s
        self.up: bool | None = None

    def start(self) -> None:
        log.info("kafka exporter for %s, polling every %g s", self.bootstrap, self.interval_s)

    def step(self, stop: threading.Event) -> Step:
        self.up = collect(self.bootstrap, self.metrics)
        stop.wait(self.interval_s)
        return Step(done=1)

    def checkpoint(self) -> None:
        pass  # gauges only: nothing to make durable

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"broker {self.bootstrap} {'up' if self.up else 'down'}"


def run(
    bootstrap: str,
    metrics_port: int | None,
    interval_s: float,
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Serve the broker's gauges on /metrics until stopped (SIGINT/SIGTERM or `stop`)."""
    metrics = metrics or Metrics.for_component("kafka")
    runtime = Runtime(
        KafkaExporter(bootstrap, metrics, interval_s),
        RuntimeConfig(
            name="kafka exporter",
            unit="polls",
            metrics_port=metrics_port,
            progress_every_s=max(60.0, interval_s),
        ),
        registry=metrics.registry,
        stop=stop,
    )
    return runtime.run()
