"""Kafka producer/consumer factories with the settings PLUM Stream relies on.

Producers are idempotent (acks=all) so a retried send never duplicates a record;
`transactional_id` turns on exactly-once writes. Consumers read `read_committed` so they
never see records of aborted transactions (the Flink sinks and the SID service write
transactionally).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def make_producer(
    bootstrap: str,
    transactional_id: str | None = None,
    linger_ms: int = 20,
    batch_size: int = 256 * 1024,
    compression_type: str | None = None,
    **extra,
) -> KafkaProducer:
    kwargs = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        batch_size=batch_size,
        compression_type=compression_type,
        enable_idempotence=True,
        max_in_flight_requests_per_connection=5,
        client_id="plum-producer",
        # dead letters carry a rejected record whole (see schema.DEAD_LETTER_MAX_BYTES)
        max_request_size=3 * 1024 * 1024,
    )
    if transactional_id:
        kwargs["transactional_id"] = transactional_id
    kwargs.update(extra)
    return KafkaProducer(**kwargs)


def make_consumer(
    bootstrap: str,
    topics: Iterable[str] = (),
    group_id: str | None = None,
    auto_offset_reset: str = "earliest",
    **extra,
) -> KafkaConsumer:
    kwargs = dict(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset=auto_offset_reset,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="plum-consumer",
    )
    kwargs.update(extra)
    consumer = KafkaConsumer(**kwargs)
    topics = list(topics)
    if topics:
        consumer.subscribe(topics)
    return consumer


def end_offsets(bootstrap: str, topics: Iterable[str] | None = None) -> dict[TopicPartition, int]:
    """Log end offsets (the offset the next record gets) of every partition of `topics`,
    by default of every topic but Kafka's internal ones. Transaction markers take offsets
    too, so an end offset counts records plus markers."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="plum-end-offsets"
    )
    try:
        names = consumer.topics() if topics is None else set(topics)
        tps = [
            TopicPartition(topic, p)
            for topic in sorted(names)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        return dict(consumer.end_offsets(tps)) if tps else {}
    finally:
        consumer.close()


def read_all(
    bootstrap: str,
    topic: str,
    timeout_s: float = 30.0,
    isolation_level: str = "read_committed",
) -> list:
    """Every record of `topic` up to its end offsets at call time (no group, no commit).

    Polls until each partition's position reaches the end offset seen at the start, or
    raises TimeoutError after `timeout_s` naming the partitions still behind.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation_level,
        client_id="plum-read-all",
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + timeout_s
        while partitions is None and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            raise TimeoutError(f"topic {topic!r} has no partition metadata after {timeout_s} s")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                behind = {tp.partition: (consumer.position(tp), ends[tp]) for tp in tps}
                raise TimeoutError(
                    f"reading {topic!r}: positions/ends {behind} after {timeout_s} s"
                )
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
