"""Kafka producer/consumer factories with the settings PLUM Stream relies on.

Producers are idempotent (acks=all) so a retried send never duplicates a record;
`transactional_id` turns on exactly-once writes. Consumers read `read_committed` so they
never see records of aborted transactions (the Flink sinks and the SID service write
transactionally).

`make_producer` / `make_consumer` build kafka-python clients; `librdkafka_consumer` /
`librdkafka_producer` build confluent-kafka (librdkafka) ones with the same guarantees, for
the hot paths (the transactional IO, the topic source, the consume-rate baselines).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

# Dead letters carry a rejected record whole (see schema.DEAD_LETTER_MAX_BYTES).
MAX_MESSAGE_BYTES = 3 * 1024 * 1024


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
        max_request_size=MAX_MESSAGE_BYTES,
    )
    if transactional_id:
        kwargs["transactional_id"] = transactional_id
    kwargs.update(extra)
    return KafkaProducer(**kwargs)


def librdkafka_producer(
    bootstrap: str,
    client_id: str = "plum-producer",
    transactional_id: str | None = None,
    **overrides: object,
):
    """An idempotent (acks=all) librdkafka producer; transactional with `transactional_id`.

    `overrides` are librdkafka settings with dots written as underscores
    (`linger_ms=20` for `linger.ms`)."""
    from confluent_kafka import Producer

    conf: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.max.bytes": MAX_MESSAGE_BYTES,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
    conf.update({k.replace("_", "."): v for k, v in overrides.items()})
    return Producer(conf)


def librdkafka_consumer(bootstrap: str, client_id: str, group_id: str | None = None):
    """A read_committed librdkafka consumer that commits and stores no offset by itself.

    With `group_id` it can subscribe (offsets are committed by the caller, e.g. inside a
    transaction); without one it is for assign() with our own offsets (librdkafka wants a
    group id even then: a private one nothing joins or commits)."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "group.id": group_id or f"{client_id}-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }
    )


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
        subscribe_with_metadata(consumer, topics)
    return consumer


def subscribe_with_metadata(consumer: KafkaConsumer, topics: Iterable[str]) -> None:
    """Subscribe once the topics' partitions are known, so a group's first assignment
    is complete.

    Otherwise the leader's first assignment is empty, the metadata that arrives next asks
    for a rejoin, and kafka-python 3.0 can lose that rejoin: when a poll's timer expires
    while it is in flight, the leader's own assignment clears the reason to rejoin before
    the poll that would read the result, so the member holds nothing, with heartbeats
    off, for good (seen as GroupJoinTimeout in CI; tests/integration/test_kafka_python_io
    provokes it with short polls)."""
    topics = list(topics)
    for topic in topics:
        consumer.partitions_for_topic(topic)
    consumer.subscribe(topics)


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
    raises TimeoutError after `timeout_s` naming the partitions still behind. Records a
    poll returns beyond those ends (written while reading) are left out: the result is a
    snapshot of every partition as of one moment, not of each partition as of when its
    reading ended (a live transactional writer's newest output would otherwise show in
    some partitions and not in others).
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
            for tp, batch in consumer.poll(timeout_ms=200).items():
                records.extend(r for r in batch if r.offset < ends[tp])
        return records
    finally:
        consumer.close()
