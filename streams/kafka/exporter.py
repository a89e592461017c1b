"""Broker-side metrics: broker up and consumer lag per topic, partition and group.

`plum kafka exporter --metrics-port 9102` polls the broker every `interval_s` and serves
the `plum_kafka_*` gauges of the metric catalogue on /metrics, which is how the freshness
dashboard sees every consumer group's lag (Flink's, the SID service's, the trainer's)
without those components having to report it themselves.
"""

from __future__ import annotations

import logging
import threading

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from monitoring.metrics import Metrics
from streams.kafka.admin import admin_client

log = logging.getLogger(__name__)


def consumer_lag(bootstrap: str) -> dict[tuple[str, str, int], int]:
    """{(group, topic, partition): end offset - committed offset} for every consumer group."""
    admin = admin_client(bootstrap, timeout_ms=10_000)
    try:
        groups = [g["group_id"] for g in admin.list_groups()]
        committed = admin.list_group_offsets({g: None for g in groups}) if groups else {}
    finally:
        admin.close()
    partitions = {tp for offsets in committed.values() for tp in offsets}
    if not partitions:
        return {}
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="plum-lag"
    )
    try:
        ends = consumer.end_offsets(list(partitions))
    finally:
        consumer.close()
    lag = {}
    for group, offsets in committed.items():
        for tp, meta in offsets.items():
            if meta.offset >= 0:
                lag[(group, tp.topic, tp.partition)] = max(0, ends[tp] - meta.offset)
    return lag


def collect(bootstrap: str, metrics: Metrics) -> bool:
    """Refresh the gauges once; returns whether the broker answered."""
    up = metrics.gauge("plum_kafka_broker_up").labels(bootstrap=bootstrap)
    try:
        lag = consumer_lag(bootstrap)
    except (KafkaError, OSError) as exc:
        log.warning("broker %s did not answer: %s", bootstrap, exc)
        up.set(0)
        return False
    up.set(1)
    gauge = metrics.gauge("plum_kafka_consumer_lag_records")
    for (group, topic, partition), value in lag.items():
        gauge.labels(topic=topic, partition=str(partition), group=group).set(value)
    return True


def run_exporter(
    bootstrap: str, metrics: Metrics, interval_s: float, stop: threading.Event
) -> None:
    while not stop.is_set():
        collect(bootstrap, metrics)
        stop.wait(interval_s)
