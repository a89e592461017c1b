"""Catch up on a topic: read it from given offsets to its committed end, then stop.

For local state that is a copy of a topic (the SID index is the local copy of
`plum.sid-assignments.v1`): read from the offsets the copy last saw up to the end offsets
at the start of the read, then store the offsets the read ended at, so the next catch-up
reads only what is new. Built on `streams.kafka.source` (`TopicSource` for the records and
our own positions, `TopicEnds` for the last stable offsets), so it is `read_committed`:
records of open or aborted transactions are never returned, and the positions step over
transaction markers.

    with TopicReader(bootstrap, topic, start=seen) as reader:
        for batch in reader:
            ...
        seen = reader.positions
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from plum.batch_cycle import Record
from streams.kafka.source import TopicEnds, TopicSource

log = logging.getLogger(__name__)
T = TypeVar("T")


class TopicReader:
    """Every record of `topic` from `start` (partition -> offset; a partition it does not
    name from its beginning) up to the end offsets seen when iteration begins.

    Iterate for batches of records; afterwards `positions` holds, per partition, the
    offset the next catch-up starts at. Not caught up within `timeout_s`: TimeoutError
    naming the partitions behind.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start: Mapping[int, int] | None = None,
        timeout_s: float = 60.0,
        batch_size: int = 10_000,
        client_id: str = "plum-topic-reader",
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self._deadline = time.monotonic() + timeout_s
        self._source: TopicSource[Record] = _retry_transient(
            lambda: TopicSource(
                bootstrap,
                topic,
                start=dict(start or {}),
                client_id=client_id,
                metadata_timeout_s=min(timeout_s, 30.0),
                max_poll_records=batch_size,
            ),
            self._deadline,
        )
        try:
            self._ends = TopicEnds(bootstrap, topic, client_id=f"{client_id}-ends")
        except BaseException:
            self._source.close()
            raise
        self.positions: dict[int, int] = self._source.position()

    @property
    def partitions(self) -> list[int]:
        return self._source.partitions

    def __iter__(self) -> Iterator[list[Record]]:
        ends = _retry_transient(lambda: self._ends(self.partitions), self._deadline)
        deadline = time.monotonic() + self.timeout_s
        while True:
            self.positions = self._source.position()
            behind = {
                p: (self.positions[p], end) for p, end in ends.items() if self.positions[p] < end
            }
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {self.topic!r}: partitions (position, end) {behind} not caught"
                    f" up after {self.timeout_s} s"
                )
            batch = self._source.take(self.batch_size, 0.2)
            if batch:
                yield batch

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            self._ends.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Errors of a broker still settling (a topic just created, a leader just elected).
_TRANSIENT = (
    "NOT_LEADER_FOR_PARTITION",
    "LEADER_NOT_AVAILABLE",
    "UNKNOWN_TOPIC_OR_PART",
    "_TRANSPORT",
    "_TIMED_OUT",
)


def _retry_transient(call: Callable[[], T], deadline: float) -> T:
    """`call()`, again after a transient broker error until `deadline` (monotonic)."""
    from confluent_kafka import KafkaException

    while True:
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            transient = err is not None and (err.retriable() or err.name() in _TRANSIENT)
            if not transient or time.monotonic() > deadline:
                raise
            log.info("broker not ready (%s); retrying", err.name())
            time.sleep(0.2)


def read_to_end(
    bootstrap: str, topic: str, start: Mapping[int, int] | None = None, timeout_s: float = 60.0
) -> list[Record]:
    """Every committed record of `topic` from `start` to its end, in one list (small topics)."""
    with TopicReader(bootstrap, topic, start, timeout_s) as reader:
        return [rec for batch in reader for rec in batch]
