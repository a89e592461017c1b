"""A read_committed source of one topic, positioned by OUR offsets (no group, no commit).

`TopicSource` assigns itself every partition of a topic at offsets the caller stored
(in a checkpoint, next to the state those records produced) and never commits anything
to Kafka. It is exact about where it stands: records polled but not handed out wait in
per-partition buffers, so `position()` says, for every partition, the offset of the
first record `take()` has not returned yet:

- the offset of the head of the partition's buffer when the buffer holds records;
- the consumer's position once the buffer is empty. librdkafka moves that position past
  transaction markers and the records of aborted transactions when it serves them (also
  when no record is delivered), so a partition read to its end stands at the end offset
  that `TopicEnds` reports, even when the topic ends in a marker.

On librdkafka (confluent-kafka). kafka-python's consumer gave the same positions; the
equivalence is checked against kafka-python's `end_offsets` in
tests/integration/test_trainer_data_kafka.py (aborted transactions included).

`decode` turns a `plum.batch_cycle.Record` into what `take()` returns (the raw record by
default); it runs when records are polled, in the reader's thread. Not thread-safe: one
thread polls, takes and asks for positions. `TopicEnds` is a separate small client for
end offsets (consumer lag) that any other thread may own.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from plum.batch_cycle import Record
from streams.kafka.clients import librdkafka_consumer

log = logging.getLogger(__name__)

START_FROM = ("earliest", "latest")
T = TypeVar("T")


def raw(record: Record) -> Record:
    return record


def _consumer(bootstrap: str, client_id: str):
    return librdkafka_consumer(bootstrap, client_id)


def _partitions(consumer, topic: str, timeout_s: float) -> list[int]:
    """The topic's partitions, waiting up to `timeout_s` for its metadata."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        meta = consumer.list_topics(topic, timeout=max(remaining, 0.1)).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return sorted(meta.partitions)
        if remaining <= 0:
            error = meta.error if meta is not None else "no metadata"
            raise TimeoutError(
                f"topic {topic!r} has no partition metadata after {timeout_s} s ({error})"
            )
        time.sleep(0.1)


class TopicSource(Generic[T]):
    """Reads every partition of `topic` from `start` (partition -> next offset).

    A partition `start` does not name was added since the offsets were saved and is read
    from its beginning; without `start`, every partition starts at `start_from`
    ("earliest" or "latest"), resolved to an offset now so that records produced before
    the first poll are not skipped.

    `share=(index, count)`: only the partitions p with p % count == index (one of
    `count` readers that split the topic between them, e.g. the processes of a
    multi-process trainer); `start` may name the others, they are ignored.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start: Mapping[int, int] | None = None,
        start_from: str = "earliest",
        decode: Callable[[Record], T] = raw,  # type: ignore[assignment]
        client_id: str = "plum-reader",
        metadata_timeout_s: float = 30.0,
        max_poll_records: int = 500,
        share: tuple[int, int] = (0, 1),
    ):
        if start_from not in START_FROM:
            raise ValueError(f"start_from={start_from!r} is not one of {START_FROM}")
        if not 0 <= share[0] < share[1]:
            raise ValueError(f"share={share}: need 0 <= index < count")
        self.topic = topic
        self._share = share
        self._decode = decode
        self._max_poll = max_poll_records
        self._consumer = _consumer(bootstrap, client_id)
        try:
            self._start = self._assign(start, start_from, metadata_timeout_s)
        except BaseException:
            self._consumer.close()
            raise
        self._pending: dict[int, deque[tuple[int, T]]] = {p: deque() for p in self._start}
        self._paused: dict[int, int] = {}  # partition -> its position when paused
        self._next_partition = 0  # round robin over partitions when taking

    def _assign(
        self, start: Mapping[int, int] | None, start_from: str, timeout_s: float
    ) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        deadline = time.monotonic() + timeout_s
        every = _partitions(self._consumer, self.topic, timeout_s)
        index, count = self._share
        partitions = [p for p in every if p % count == index]
        if not partitions:
            log.warning("%s has no partition for reader %d of %d", self.topic, index, count)
        offsets: dict[int, int] = {}
        for p in partitions:
            if start is not None and p in start:
                offsets[p] = start[p]
                continue
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p),
                timeout=max(deadline - time.monotonic(), 1.0),
                cached=False,
            )
            # read_committed: `high` is the last stable offset, as kafka-python's end_offsets
            offsets[p] = low if start is not None or start_from == "earliest" else high
        gone = sorted(set(start or {}) - set(every))
        if gone:
            log.warning("saved position has partitions %s that %s no longer has", gone, self.topic)
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in offsets.items()])
        return offsets

    @property
    def partitions(self) -> list[int]:
        return list(self._start)

    def _fill(self, timeout_s: float) -> None:
        # poll() returns as soon as one record is there (consume() would wait out its
        # timeout for a full batch), then consume(0) takes what is already fetched.
        first = self._consumer.poll(max(timeout_s, 0.0))
        if first is None:
            return
        msgs = [first, *self._consumer.consume(num_messages=self._max_poll - 1, timeout=0)]
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    from confluent_kafka import KafkaException

                    raise KafkaException(err)
                log.warning("%s: %s", self.topic, err)  # transient; librdkafka retries itself
                continue
            if msg.partition() in self._paused:  # fetched before the pause
                continue
            kind, ts = msg.timestamp()
            rec = Record(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                msg.value(),
                ts if kind else None,
                msg.key(),
                tuple(msg.headers() or ()),
            )
            self._pending[rec.partition].append((rec.offset, self._decode(rec)))

    def take(self, max_records: int, timeout_s: float) -> list[T]:
        """Up to `max_records` decoded records, taken round robin over partitions (so that
        one batch mixes partitions); polls, waiting at most `timeout_s`, only when every
        buffer is empty."""
        if max_records < 1:
            return []
        if not any(self._pending.values()):
            self._fill(timeout_s)
        out: list[T] = []
        parts = list(self._pending)
        idle = 0
        while len(out) < max_records and idle < len(parts):
            p = parts[self._next_partition % len(parts)]
            self._next_partition += 1
            if self._pending[p]:
                out.append(self._pending[p].popleft()[1])
                idle = 0
            else:
                idle += 1
        return out

    def position(self) -> dict[int, int]:
        """partition -> offset of the first record not returned by take() yet."""
        from confluent_kafka import TopicPartition

        empty = [p for p, buf in self._pending.items() if not buf and p not in self._paused]
        out = {p: buf[0][0] for p, buf in self._pending.items() if buf}
        out.update(self._paused)
        if empty:
            got = self._consumer.position([TopicPartition(self.topic, p) for p in empty])
            for tp in got:
                # negative (OFFSET_INVALID) until the first record or marker is served
                out[tp.partition] = tp.offset if tp.offset >= 0 else self._start[tp.partition]
        return dict(sorted(out.items()))

    def pause(self, partitions: list[int]) -> None:
        """Stop fetching `partitions` (read as far as the caller wants); records of them
        polled but not taken yet are dropped, and `position()` keeps their position."""
        from confluent_kafka import TopicPartition

        if not partitions:
            return
        held = self.position()
        self._consumer.pause([TopicPartition(self.topic, p) for p in partitions])
        for p in partitions:
            self._pending[p].clear()
            self._paused[p] = held[p]

    def close(self) -> None:
        self._consumer.close()


def offsets_for_times(
    bootstrap: str, topic: str, partitions: list[int], ts_ms: int, timeout_s: float = 10.0
) -> dict[int, int | None]:
    """Per partition, the offset of the first record whose timestamp is >= `ts_ms` (Kafka's
    time index), or None when the partition has no such record (yet)."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap, "plum-offsets-for-times")
    try:
        got = consumer.offsets_for_times(
            [TopicPartition(topic, p, ts_ms) for p in partitions], timeout=timeout_s
        )
    finally:
        consumer.close()
    out: dict[int, int | None] = {}
    for tp in got:
        if tp.error is not None:
            from confluent_kafka import KafkaException

            raise KafkaException(tp.error)
        out[tp.partition] = tp.offset if tp.offset >= 0 else None
    return out


class TopicEnds:
    """End offsets of a topic's partitions as a read_committed consumer sees them (the
    last stable offset): consumer lag is `end - position`."""

    def __init__(self, bootstrap: str, topic: str, client_id: str = "plum-ends"):
        self.topic = topic
        self._consumer = _consumer(bootstrap, client_id)

    def __call__(self, partitions: list[int], timeout_s: float = 5.0) -> dict[int, int]:
        return {p: high for p, (_, high) in self.bounds(partitions, timeout_s).items()}

    def bounds(self, partitions: list[int], timeout_s: float = 5.0) -> dict[int, tuple[int, int]]:
        """partition -> (first offset still in the log, end offset), asked in one request
        per partition."""
        from confluent_kafka import TopicPartition

        out = {}
        for p in partitions:
            out[p] = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=timeout_s, cached=False
            )
        return out

    def close(self) -> None:
        self._consumer.close()
