"""The consume -> process -> produce + commit cycle of a Kafka service, exactly once.

`BatchCycle` is a `plum.runtime.Component`. Each step polls a batch (until `batch_size`
records or `batch_time_ms`), hands it to the component's `BatchProcessor`, and publishes
the processor's outputs together with the input offsets in ONE transaction of the
`TransactionalIO` (consumer + transactional producer; `streams.kafka.transactional` has
the librdkafka and kafka-python ones). Only after that transaction commits does the
processor's own state commit (`Processed.on_committed`, e.g. a local index); if it
fails, `on_aborted` rolls that state back and the error stops the service, whose restart
reads the batch again from the last committed offsets.

With `overlap_commit` a batch's transaction runs in a worker thread while the next batch
is polled (a commit is several broker round trips). The next batch is handed to the
processor only after the previous transaction and its `on_committed` have finished, so
"local state commits only after Kafka" holds all the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from plum.runtime import Step


class Record(NamedTuple):
    """One consumed record; kafka-python's ConsumerRecord has the same attributes."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int | None  # producer/broker timestamp, epoch ms
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()  # in record order


# (topic, key, value) of a record to publish inside the batch's transaction.
Output = tuple[str, bytes | None, bytes]
# (topic, partition) -> the next offset to consume, committed with the transaction.
NextOffsets = Mapping[tuple[str, int], int]


class TransactionalIO(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> Sequence[Record]:
        """Up to `max_records` records, waiting at most `timeout_s` (may return fewer)."""
        ...

    def commit(self, outputs: Sequence[Output], next_offsets: NextOffsets) -> None:
        """Publish `outputs` and commit `next_offsets` for the group in one transaction."""
        ...

    @property
    def assigned(self) -> bool:
        """Whether the group has given this consumer partitions yet (joining takes seconds)."""
        ...

    @property
    def thread_safe(self) -> bool:
        """Whether poll and commit may run in two threads at once (overlapped commits)."""
        ...

    def close(self) -> None: ...


def _nothing() -> None:
    return None


@dataclass
class Processed:
    """A processed batch: what to publish, and what to do once that is (or is not) committed."""

    outputs: list[Output]
    on_committed: Callable[[], None] = _nothing
    on_aborted: Callable[[], None] = _nothing


class BatchProcessor(Protocol):
    def start(self) -> None:
        """Restore or sync local state; called before the Kafka clients open."""
        ...

    def process(self, records: Sequence[Record]) -> Processed: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def next_offsets(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> 1 + the highest offset consumed in `records`."""
    out: dict[tuple[str, int], int] = {}
    for rec in records:
        tp = (rec.topic, rec.partition)
        if rec.offset >= out.get(tp, 0):
            out[tp] = rec.offset + 1
    return out


@dataclass(frozen=True)
class CycleConfig:
    batch_size: int = 2048
    batch_time_ms: int = 200
    poll_timeout_ms: int = 100
    overlap_commit: bool = True  # used only when the IO is thread-safe
    # A consumer that has not been given partitions this long after start is stuck (a
    # group join that never completes): fail with that reason rather than wait forever,
    # since joining does not count as idleness.
    join_timeout_s: float = 120.0


class GroupJoinTimeout(RuntimeError):
    """The consumer group did not assign this consumer any partition in time."""


@dataclass
class _InFlight:
    """A processed batch whose transaction runs (inline, or in a worker thread)."""

    processed: Processed
    thread: threading.Thread | None = None
    error: BaseException | None = field(default=None)

    def commit(self, io: TransactionalIO, offsets: NextOffsets) -> None:
        try:
            io.commit(self.processed.outputs, offsets)
        except BaseException as err:  # re-raised by the polling thread in _finish
            self.error = err


class BatchCycle:
    """A Kafka service as a runtime component: a processor between a poll and a commit."""

    def __init__(
        self,
        processor: BatchProcessor,
        open_io: Callable[[], TransactionalIO],
        config: CycleConfig = CycleConfig(),
    ) -> None:
        self.processor = processor
        self.config = config
        self._open_io = open_io
        self.io: TransactionalIO | None = None
        self._in_flight: _InFlight | None = None
        self.batches = 0
        self._joined = False
        self._join_deadline = 0.0

    # ---- runtime.Component
    def start(self) -> None:
        self.processor.start()
        self.io = self._open_io()
        self._join_deadline = time.monotonic() + self.config.join_timeout_s

    def step(self, stop: threading.Event) -> Step:
        records = self._poll_batch(stop)
        # The previous batch's transaction (overlapped with this poll) and its local
        # commit must finish before the processor touches this batch.
        self._finish()
        if records:
            self._joined = True
            self.submit(records, overlap=self._overlap)
            return Step(done=len(records), active=True)
        assert self.io is not None
        if self._joined or self.io.assigned:
            self._joined = True
            return Step(done=0, active=False)
        if time.monotonic() > self._join_deadline:
            raise GroupJoinTimeout(
                f"no partition assigned {self.config.join_timeout_s:.0f} s after start: "
                "the consumer group join did not complete"
            )
        return Step(done=0, active=True)  # still joining the group: not idle yet

    def checkpoint(self) -> None:
        self._finish()

    def close(self) -> None:
        try:
            self._abandon()
        finally:
            try:
                if self.io is not None:
                    self.io.close()
            finally:
                self.processor.close()

    def describe(self) -> str:
        return self.processor.describe()

    # ---- the cycle
    @property
    def _overlap(self) -> bool:
        return self.config.overlap_commit and self.io is not None and self.io.thread_safe

    def process_now(self, records: Sequence[Record]) -> None:
        """Process and commit one batch synchronously (tests, and replays of a fixed batch)."""
        self._finish()
        self.submit(records, overlap=False)

    def submit(self, records: Sequence[Record], overlap: bool) -> None:
        assert self.io is not None, "start() first"
        processed = self.processor.process(records)
        flight = _InFlight(processed)
        offsets = next_offsets(records)
        self.batches += 1
        if overlap:
            flight.thread = threading.Thread(
                target=flight.commit, args=(self.io, offsets), name="kafka-commit", daemon=True
            )
            self._in_flight = flight
            flight.thread.start()
        else:
            self._in_flight = flight
            flight.commit(self.io, offsets)
            self._finish()

    def _poll_batch(self, stop: threading.Event) -> list[Record]:
        """Records until the batch is full or `batch_time_ms` passed (checking `stop`)."""
        assert self.io is not None
        cfg = self.config
        deadline = time.monotonic() + cfg.batch_time_ms / 1000
        records: list[Record] = []
        while len(records) < cfg.batch_size and not stop.is_set():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0.001:
                break
            records.extend(
                self.io.poll(
                    cfg.batch_size - len(records), min(remaining_s, cfg.poll_timeout_ms / 1000)
                )
            )
            flight = self._in_flight
            if flight is not None and flight.thread is not None and not flight.thread.is_alive():
                # Its transaction ended during this poll: commit local state now rather
                # than when the poll window closes (the index and metrics catch up sooner).
                self._finish()
        return records

    def _finish(self) -> None:
        """Wait for the in-flight transaction, then commit (or roll back) local state."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        if flight.thread is not None:
            flight.thread.join()
        if flight.error is not None:
            flight.processed.on_aborted()
            raise flight.error
        flight.processed.on_committed()

    def _abandon(self) -> None:
        """On the way out after an error: let an in-flight commit end, keep local state
        only if Kafka committed (else the batch is redone after a restart)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        if flight.thread is not None:
            flight.thread.join()
        if flight.error is None:
            flight.processed.on_committed()
        else:
            flight.processed.on_aborted()
