"""Transactional Kafka I/O: consume a group's topics, publish results + offsets atomically.

Two clients behind one small interface (`plum.batch_cycle.TransactionalIO`), so the
exactly-once cycle (`plum.batch_cycle.BatchCycle`) is written once:

- `ConfluentIO` (librdkafka via confluent-kafka): the default. Fetching, decompression
  and batching run in librdkafka's C threads; it consumes the uploads topic several times
  faster than kafka-python on the same cores, and the service's rate is bounded by its
  consumer.
- `KafkaPythonIO` (kafka-python): the original path, kept as a fallback.

Both consume `read_committed` in a consumer group with auto-commit off, and commit a batch
with ONE transaction: its output records, then the group's next offsets
(`send_offsets_to_transaction` with the consumer's group metadata), then commit. A failed
transaction is aborted and the error re-raised: the service stops, and its restart reads
the batch again from the last committed offsets.

`TransactionalProducer` is the librdkafka producer side on its own, for writers that
publish in transactions without consuming (the SID reindex), and `PositionGroup` a group
that only stores the positions such a writer commits with its records (`plum replay copy`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from plum.batch_cycle import NextOffsets, Output, Record, TransactionalIO
from streams.kafka.clients import librdkafka_consumer, librdkafka_producer

log = logging.getLogger(__name__)

KAFKA_CLIENTS = ("confluent", "kafka-python")
TRANSACTION_TIMEOUT_S = 30.0


def open_io(
    client: str,
    bootstrap: str,
    topics: Sequence[str],
    group_id: str,
    transactional_id: str,
    max_poll_records: int,
    client_id: str = "plum-transactional",
) -> TransactionalIO:
    """A subscribed consumer and an initialised transactional producer of kind `client`."""
    if client == "confluent":
        return ConfluentIO(bootstrap, topics, group_id, transactional_id, client_id)
    if client == "kafka-python":
        return KafkaPythonIO(
            bootstrap, topics, group_id, transactional_id, max_poll_records, client_id
        )
    raise ValueError(f"kafka_client={client!r}; expected one of {KAFKA_CLIENTS}")


class TransactionalProducer:
    """A librdkafka producer that writes only in transactions (idempotent, acks=all).

    Creating one fences every earlier producer of the same `transactional_id` (a zombie of
    a restarted service) and aborts the transaction it left open, so its records never
    become visible to `read_committed` readers.

        with producer.transaction():
            producer.send(topic, key, value)
            producer.send_offsets(next_offsets, consumer_group_metadata)  # optional
    """

    def __init__(self, bootstrap: str, transactional_id: str, client_id: str = "plum-producer"):
        self._producer = librdkafka_producer(bootstrap, client_id, transactional_id)
        self._producer.init_transactions(TRANSACTION_TIMEOUT_S)

    def begin(self) -> None:
        self._producer.begin_transaction()

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.send_all([(topic, key, value)])

    def send_all(self, outputs: Sequence[Output]) -> None:
        produce = self._producer.produce
        for topic, key, value in outputs:
            try:
                produce(topic, value, key)
            except BufferError:  # local queue full: let it drain, then retry once
                self._producer.poll(1.0)
                produce(topic, value, key)

    def send_record(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: Sequence[tuple[str, bytes | None]] = (),
    ) -> None:
        """One record to an explicit partition with its own timestamp and headers (a copy
        of another record); ordered after every earlier send to the same partition."""
        kwargs: dict[str, object] = {"partition": partition, "headers": list(headers)}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        try:
            self._producer.produce(topic, value, key, **kwargs)
        except BufferError:  # local queue full: let it drain, then retry once
            self._producer.poll(1.0)
            self._producer.produce(topic, value, key, **kwargs)

    def send_offsets(self, next_offsets: NextOffsets, group_metadata: object) -> None:
        """Commit a consumer group's `next_offsets` with this transaction."""
        from confluent_kafka import TopicPartition

        self._producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
            group_metadata,
            TRANSACTION_TIMEOUT_S,
        )

    def flush(self, timeout_s: float = TRANSACTION_TIMEOUT_S) -> int:
        """Deliver what was sent so far (still uncommitted); returns the records left."""
        return self._producer.flush(timeout_s)

    def commit(self) -> None:
        # Flushes every record sent; fails if any one of them failed.
        self._producer.commit_transaction(TRANSACTION_TIMEOUT_S)

    def abort(self) -> None:
        _abort(self._producer)

    @contextmanager
    def transaction(self) -> Iterator[TransactionalProducer]:
        """Commit what is sent inside, or abort on any exception (and re-raise it)."""
        self.begin()
        try:
            yield self
            self.commit()
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        # close(), not just flush(): the handle (its threads, its connections) must go now,
        # not whenever the collector gets to it. An open transaction is aborted.
        self._producer.close()


class PositionGroup:
    """A consumer group that only holds positions committed inside transactions: nothing
    joins or subscribes, a `TransactionalProducer` commits its offsets with the records
    they account for (`send_offsets(..., group.metadata)`), and a rerun reads them back to
    resume where the last committed transaction ended."""

    def __init__(self, bootstrap: str, group_id: str, client_id: str = "plum-positions"):
        self.group_id = group_id
        self._consumer = librdkafka_consumer(bootstrap, client_id, group_id)

    @property
    def metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def committed(
        self, topic: str, partitions: Sequence[int], timeout_s: float = TRANSACTION_TIMEOUT_S
    ) -> dict[int, int | None]:
        """partition -> the committed next offset, None where the group has none.

        Asked again while the group's coordinator is not there yet (a fresh broker creates
        its offsets topic on the first such question) until `timeout_s` has passed."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        settling = {
            KafkaError.NOT_COORDINATOR,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
            KafkaError.COORDINATOR_NOT_AVAILABLE,
        }
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = self._consumer.committed(
                    [TopicPartition(topic, p) for p in partitions],
                    timeout=max(deadline - time.monotonic(), 1.0),
                )
                for tp in got:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
                return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in got}
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if err is None or err.code() not in settling or time.monotonic() > deadline:
                    raise
                log.info("group %s: %s; asking again", self.group_id, err.name())
                time.sleep(0.2)

    def close(self) -> None:
        self._consumer.close()


class ConfluentIO:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        transactional_id: str,
        client_id: str,
    ):
        self.producer = TransactionalProducer(bootstrap, transactional_id, client_id)
        self.consumer = librdkafka_consumer(bootstrap, client_id, group_id)
        self._assigned = False
        self.consumer.subscribe(list(topics), on_assign=self._on_assign)

    def _on_assign(self, consumer, partitions) -> None:
        self._assigned = True

    @property
    def thread_safe(self) -> bool:
        return True  # librdkafka handles may be used from two threads

    @property
    def assigned(self) -> bool:
        return self._assigned

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        from confluent_kafka import KafkaException

        out: list[Record] = []
        for msg in self.consumer.consume(num_messages=max_records, timeout=timeout_s):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer: %s", err)  # transient; librdkafka retries itself
                continue
            kind, ts = msg.timestamp()
            out.append(
                Record(
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    msg.value(),
                    ts if kind else None,  # 0 = TIMESTAMP_NOT_AVAILABLE
                )
            )
        return out

    def commit(self, outputs: Sequence[Output], next_offsets: NextOffsets) -> None:
        producer = self.producer
        with producer.transaction():
            producer.send_all(outputs)
            producer.send_offsets(next_offsets, self.consumer.consumer_group_metadata())

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close()


class KafkaPythonIO:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        transactional_id: str,
        max_poll_records: int,
        client_id: str,
    ):
        from kafka import KafkaConsumer

        from streams.kafka.clients import make_producer, subscribe_with_metadata

        self._producer = make_producer(bootstrap, transactional_id=transactional_id, linger_ms=5)
        self._producer.init_transactions()
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=max_poll_records,
            client_id=client_id,
        )
        subscribe_with_metadata(self._consumer, topics)

    @property
    def assigned(self) -> bool:
        return bool(self._consumer.assignment())

    @property
    def thread_safe(self) -> bool:
        return False  # kafka-python's consumer must stay on one thread

    def poll(self, max_records: int, timeout_s: float) -> list:
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        if len(polled) == 1:
            return next(iter(polled.values()))
        return [rec for batch in polled.values() for rec in batch]

    def commit(self, outputs: Sequence[Output], next_offsets: NextOffsets) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        producer = self._producer
        producer.begin_transaction()
        try:
            futures = [producer.send(topic, key=key, value=value) for topic, key, value in outputs]
            producer.send_offsets_to_transaction(
                {
                    TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                    for (t, p), o in next_offsets.items()
                },
                self._consumer.group_metadata(),
            )
            producer.commit_transaction()
            for fut in futures:
                fut.get(timeout=TRANSACTION_TIMEOUT_S)  # acknowledged by the commit; raises if not
        except BaseException:
            _abort(producer)
            raise

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()


def _abort(producer) -> None:
    try:
        producer.abort_transaction()
    except Exception as exc:  # the original error is the one worth raising
        log.warning("aborting the transaction failed too: %s", exc)
