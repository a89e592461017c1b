"""Fresh SFT examples from Kafka, positioned by the trainer's checkpoint, not by Kafka.

The Kafka side is `streams.kafka.source.TopicSource`: every partition of the topic, read
`read_committed` (records of aborted transactions of the Flink job's exactly-once sink
are never seen) from the offsets the trainer saved with its last checkpoint
(trainer/data.py `DataPosition`), no consumer group, nothing committed, and a position
that is exact for what was handed out. This module adds what is the trainer's own: the
SFT-example decoding and the malformed records. Those (the Flink job validated them
already, so they are rare) are counted by reason, logged and skipped; they still count
as read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from plum.batch_cycle import Record
from streams.contracts import schema
from streams.kafka.source import START_FROM, TopicSource
from trainer.archive import ArchiveRecord

log = logging.getLogger(__name__)

__all__ = ["START_FROM", "FreshReader", "FreshRecord", "FreshSource"]

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


def decode(rec: Record) -> FreshRecord | _Malformed:
    if rec.value is None:
        return _Malformed(rec.partition, rec.offset, NULL_VALUE, "null value (tombstone)")
    try:
        example = schema.decode_sft_example(rec.value)
    except schema.ValidationError as exc:
        return _Malformed(rec.partition, rec.offset, exc.reason, str(exc))
    return FreshRecord(rec.partition, rec.offset, rec.value, example)


class FreshReader:
    """SFT examples of every partition of one topic, positioned by our checkpoint.

    Decoded when polled; a malformed record is counted when the position passes it (when
    `take` hands it out), not when polled: a count taken at poll time would be saved in a
    checkpoint whose offsets are still before the record, and counted again when the
    record is re-read after a restart. Not thread-safe (see TopicSource).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start: Mapping[int, int] | None = None,
        start_from: str = "earliest",
        metadata_timeout_s: float = 30.0,
        share: tuple[int, int] = (0, 1),
    ):
        """`share`: (index, count), this reader's share of the partitions (TopicSource)."""
        self.topic = topic
        self.malformed: Counter[str] = Counter()
        self._reader: TopicSource[FreshRecord | _Malformed] = TopicSource(
            bootstrap,
            topic,
            start,
            start_from,
            decode=decode,
            client_id="plum-trainer",
            metadata_timeout_s=metadata_timeout_s,
            share=share,
        )
        log.info("reading %s from %s", topic, self.position())

    def _skip(self, bad: _Malformed) -> None:
        self.malformed[bad.reason] += 1
        log.warning(
            "skipping malformed record %s[%d]@%d: %s",
            self.topic,
            bad.partition,
            bad.offset,
            bad.error,
        )

    def take(self, max_records: int, timeout_s: float) -> list[FreshRecord]:
        out: list[FreshRecord] = []
        for rec in self._reader.take(max_records, timeout_s):
            if isinstance(rec, _Malformed):
                self._skip(rec)
            else:
                out.append(rec)
        return out

    def position(self) -> dict[int, int]:
        return self._reader.position()

    def close(self) -> None:
        self._reader.close()
