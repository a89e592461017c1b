"""Fresh SFT examples from Kafka, positioned by the trainer's checkpoint, not by Kafka.

The reader assigns itself every partition of the topic (no consumer group, nothing
committed): the offsets it resumes from are the ones the trainer saved with its last
checkpoint (trainer/data.py `DataPosition`). It reads `read_committed`, so records of
aborted transactions of the Flink job's exactly-once sink are never seen. Malformed
records (the Flink job validated them already, so these are rare) are counted by reason,
logged and skipped; they still count as read.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import TopicPartition

from streams.contracts import schema
from streams.kafka.clients import make_consumer
from trainer.archive import ArchiveRecord

log = logging.getLogger(__name__)

START_FROM = ("earliest", "latest")
NULL_VALUE = "null_value"  # malformed-record reason of a record without a value


@dataclass(frozen=True)
class FreshRecord:
    """A decoded record of the SFT-examples topic."""

    partition: int
    offset: int
    value: bytes
    example: schema.SftExample

    def archived(self) -> ArchiveRecord:
        return ArchiveRecord(
            self.partition, self.offset, self.example.ts, self.value, self.example.event_id
        )


@dataclass(frozen=True)
class _Malformed:
    """A record that does not decode, waiting in a partition buffer until passed."""

    partition: int
    offset: int
    reason: str
    error: str


class FreshSource(Protocol):
    """What TrainingData reads fresh examples from (FreshReader, or a fake in tests)."""

    malformed: Counter[str]  # reason -> records skipped since start

    def take(self, max_records: int, timeout_s: float) -> list[FreshRecord]:
        """Up to max_records decoded records, waiting at most timeout_s when none are ready."""
        ...

    def position(self) -> dict[int, int]:
        """partition -> offset of the first record not returned by take() yet."""
        ...

    def close(self) -> None: ...


class FreshReader:
    """kafka-python reader of every partition of one topic, positioned by our checkpoint.

    Records polled but not handed out wait in per-partition buffers, so `position()` is
    exact for what `take()` returned: the head of a partition's buffer, or the consumer's
    fetch position once the buffer is empty (which is past skipped markers and aborted
    records). Not thread-safe: one thread polls, takes and asks for positions.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start: Mapping[int, int] | None = None,
        start_from: str = "earliest",
        metadata_timeout_s: float = 30.0,
    ):
        if start_from not in START_FROM:
            raise ValueError(f"start_from={start_from!r} is not one of {START_FROM}")
        self.topic = topic
        self.malformed: Counter[str] = Counter()
        self._consumer = make_consumer(
            bootstrap, group_id=None, auto_offset_reset="earliest", client_id="plum-trainer"
        )
        try:
            self._tps = self._assign(start, start_from, metadata_timeout_s)
        except BaseException:
            self._consumer.close()
            raise
        self._pending: dict[int, deque[FreshRecord | _Malformed]] = {p: deque() for p in self._tps}
        self._next_partition = 0  # round robin over partitions when taking
        log.info("reading %s from %s", topic, self.position())

    def _assign(
        self, start: Mapping[int, int] | None, start_from: str, timeout_s: float
    ) -> dict[int, TopicPartition]:
        deadline = time.monotonic() + timeout_s
        partitions = self._consumer.partitions_for_topic(self.topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"topic {self.topic!r} has no partition metadata after {timeout_s} s"
                )
            time.sleep(0.1)
            partitions = self._consumer.partitions_for_topic(self.topic)
        tps = {p: TopicPartition(self.topic, p) for p in sorted(partitions)}
        self._consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            if start is not None and p in start:
                self._consumer.seek(tp, start[p])
            elif start is not None or start_from == "earliest":
                # a partition the saved position does not know was added since: read it all
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)
        gone = sorted(set(start or {}) - set(tps))
        if gone:
            log.warning("saved position has partitions %s that %s no longer has", gone, self.topic)
        # Resolve seek_to_end/beginning now: resolved lazily, "latest" would mean the end at
        # the first poll, and records produced in between would be skipped.
        for tp in tps.values():
            self._consumer.position(
                tp, timeout_ms=max(1, int((deadline - time.monotonic()) * 1000))
            )
        return tps

    def _fill(self, timeout_s: float) -> None:
        polled = self._consumer.poll(timeout_ms=max(0, int(timeout_s * 1000)))
        for tp, records in polled.items():
            buf = self._pending[tp.partition]
            for rec in records:
                buf.append(self._decode(tp.partition, rec))

    def _decode(self, partition: int, rec: Any) -> FreshRecord | _Malformed:
        if rec.value is None:
            return _Malformed(partition, rec.offset, NULL_VALUE, "null value (tombstone)")
        try:
            example = schema.decode_sft_example(rec.value)
        except schema.ValidationError as exc:
            return _Malformed(partition, rec.offset, exc.reason, str(exc))
        return FreshRecord(partition, rec.offset, rec.value, example)

    def _skip(self, bad: _Malformed) -> None:
        # Counted when the position passes it, not when polled: a count taken at poll
        # time would be saved in a checkpoint whose offsets are still before the record,
        # and counted again when the record is re-read after a restart.
        self.malformed[bad.reason] += 1
        log.warning(
            "skipping malformed record %s[%d]@%d: %s",
            self.topic,
            bad.partition,
            bad.offset,
            bad.error,
        )

    def take(self, max_records: int, timeout_s: float) -> list[FreshRecord]:
        if max_records < 1:
            return []
        if not any(self._pending.values()):
            self._fill(timeout_s)
        out: list[FreshRecord] = []
        parts = list(self._pending)
        idle = 0
        # round robin so that one batch mixes partitions (users) rather than draining one
        while len(out) < max_records and idle < len(parts):
            p = parts[self._next_partition % len(parts)]
            self._next_partition += 1
            if self._pending[p]:
                rec = self._pending[p].popleft()
                if isinstance(rec, _Malformed):
                    self._skip(rec)
                else:
                    out.append(rec)
                idle = 0
            else:
                idle += 1
        return out

    def position(self) -> dict[int, int]:
        out = {}
        for p, tp in self._tps.items():
            buf = self._pending[p]
            out[p] = buf[0].offset if buf else self._consumer.position(tp)
        return out

    def close(self) -> None:
        self._consumer.close()
