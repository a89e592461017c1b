"""Copy a time range of a source topic into its replay topic, exactly once.

The range [from_ms, to_ms) is found per partition with Kafka's time index
(`offsets_for_times`): it runs from the first record with timestamp >= from_ms to the
first record with timestamp >= to_ms, or to the partition's end (last stable offset) when
no record has reached to_ms yet, as seen when the copy starts. Records are copied whole
(key, value, headers, original timestamp) to the SAME partition number of the replay
topic, in offset order, each with one extra header `plum.replay.origin` =
`<source topic>/<partition>/<offset>`.

Exactly once: every batch is one Kafka transaction holding its copied records AND the
next source offsets of the copy's own consumer group (`PositionGroup`), so the copy's
progress is committed with, and only with, the records it accounts for. The transactional
id and the group are both the copy's id, `plum-replay.<source>.<from_ms>-<to_ms>`, so a
rerun of the same range

- fences a producer of an earlier run still alive (a zombie) and aborts the transaction
  it left open: those records never become visible to `read_committed` readers;
- resumes at the committed offsets: records copied by an earlier run are not copied again.

A crashed or interrupted copy is finished by running the same command again. Two copies
of *different, overlapping* ranges of the same topic each copy the overlap (they are
different copies); `copy_id` names what makes a copy the same one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from plum.batch_cycle import Record
from plum.runtime import Runtime, RuntimeConfig, Step
from plum.times import format_time_ms
from streams.kafka.admin import existing_topics, partition_counts
from streams.kafka.source import TopicEnds, TopicSource, offsets_for_times
from streams.kafka.transactional import PositionGroup, TransactionalProducer

log = logging.getLogger(__name__)

ORIGIN_HEADER = "plum.replay.origin"
DEFAULT_BATCH_RECORDS = 5000
STALL_TIMEOUT_S = 120.0  # no partition moves for this long: the copy fails, naming them


class ReplayError(RuntimeError):
    """The copy cannot run here (a topic missing, too few partitions) or stalled."""


@dataclass(frozen=True)
class CopyRequest:
    """Copy records of `source` with timestamps in [from_ms, to_ms) into `target`."""

    source: str  # topic names as on the broker (prefixed in tests)
    target: str
    from_ms: int
    to_ms: int

    def __post_init__(self) -> None:
        if self.from_ms >= self.to_ms:
            raise ValueError(
                f"the range is empty: from {format_time_ms(self.from_ms)} ({self.from_ms})"
                f" is not before to {format_time_ms(self.to_ms)} ({self.to_ms})"
            )
        if self.source == self.target:
            raise ValueError(f"source and target are the same topic {self.source!r}")

    @property
    def copy_id(self) -> str:
        """The transactional id and the position group of this copy: the same range of the
        same topic is always the same copy."""
        return f"plum-replay.{self.source}.{self.from_ms}-{self.to_ms}"


@dataclass
class CopyResult:
    request: CopyRequest
    ranges: dict[int, tuple[int, int]]  # partition -> [first offset, end offset)
    earlier: int = 0  # offsets of the range an earlier run had committed
    copied: int = 0  # records this run copied
    transactions: int = 0
    finished: bool = False
    seconds: float = 0.0

    @property
    def offsets(self) -> int:
        return sum(end - first for first, end in self.ranges.values())


def origin(record: Record) -> bytes:
    return f"{record.topic}/{record.partition}/{record.offset}".encode()


def plan_ranges(
    bootstrap: str, topic: str, partitions: list[int], from_ms: int, to_ms: int
) -> dict[int, tuple[int, int]]:
    """partition -> [first, end) offsets of the records Kafka's time index puts in
    [from_ms, to_ms), bounded by the partition's last stable offset now."""
    ends_of = TopicEnds(bootstrap, topic, client_id="plum-replay-ends")
    try:
        ends = ends_of(partitions)
    finally:
        ends_of.close()
    firsts = offsets_for_times(bootstrap, topic, partitions, from_ms)
    stops = offsets_for_times(bootstrap, topic, partitions, to_ms)
    out = {}
    for p in partitions:
        end = ends[p]
        first = end if firsts[p] is None else min(firsts[p], end)
        stop = end if stops[p] is None else min(stops[p], end)
        out[p] = (first, max(first, stop))
    return out


class ReplayCopy:
    """The copy as a `plum.runtime.Component`: one transaction per step.

    `before_commit(copy)` runs inside each transaction after its records were sent and
    before the commit (fault injection in tests). `max_rate` (records/s) throttles the
    copy so that it does not starve the live consumers of the broker.
    """

    def __init__(
        self,
        bootstrap: str,
        request: CopyRequest,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        max_rate: float | None = None,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        before_commit: Callable[[ReplayCopy], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_records < 1:
            raise ValueError(f"batch_records must be >= 1, got {batch_records}")
        if max_rate is not None and max_rate <= 0:
            raise ValueError(f"max_rate must be > 0 records/s, got {max_rate}")
        self.bootstrap = bootstrap
        self.request = request
        self.batch_records = batch_records
        if max_rate is not None:  # about four transactions a second when throttled
            self.batch_records = max(1, min(batch_records, int(max_rate / 4)))
        self.max_rate = max_rate
        self.stall_timeout_s = stall_timeout_s
        self.before_commit = before_commit
        self._clock = clock
        self.producer: TransactionalProducer | None = None
        self._group: PositionGroup | None = None
        self._source: TopicSource[Record] | None = None
        self.result: CopyResult | None = None
        self._committed: dict[int, int] = {}
        self._todo: set[int] = set()
        self._moved_at = clock()
        self._t0 = clock()

    # ------------------------------------------------------------ Component

    def start(self) -> None:
        req = self.request
        have = existing_topics(self.bootstrap)
        missing = [t for t in (req.source, req.target) if t not in have]
        if missing:
            raise ReplayError(
                f"topics {missing} do not exist on {self.bootstrap}; create them with"
                " `plum kafka topics`"
            )
        counts = partition_counts(self.bootstrap, [req.source, req.target])
        if counts[req.target] < counts[req.source]:
            raise ReplayError(
                f"{req.target} has {counts[req.target]} partitions, fewer than the"
                f" {counts[req.source]} of {req.source}: partition p is copied to partition p"
            )
        # The producer first: creating it fences an earlier run of this copy and aborts the
        # transaction it left open, so the committed positions read next are final.
        self.producer = TransactionalProducer(
            self.bootstrap, req.copy_id, client_id="plum-replay-copy"
        )
        self._group = PositionGroup(self.bootstrap, req.copy_id, client_id="plum-replay-copy")
        partitions = list(range(counts[req.source]))
        ranges = plan_ranges(self.bootstrap, req.source, partitions, req.from_ms, req.to_ms)
        committed = self._group.committed(req.source, partitions)
        # A rerun never goes back before its own committed position; a later range end
        # (records with timestamps < to_ms appended since) only extends what is left.
        start = {
            p: first if committed[p] is None else max(first, committed[p])
            for p, (first, _) in ranges.items()
        }
        self._committed = dict(start)
        self.result = CopyResult(
            req, ranges, earlier=sum(start[p] - ranges[p][0] for p in partitions)
        )
        self._todo = {p for p in partitions if start[p] < ranges[p][1]}
        log.info(
            "replay copy %s %s [%s, %s) -> %s: %d offsets in %d partitions%s",
            req.copy_id,
            req.source,
            format_time_ms(req.from_ms),
            format_time_ms(req.to_ms),
            req.target,
            self.result.offsets,
            len(partitions),
            f", {self.result.earlier} of them committed by an earlier run"
            if self.result.earlier
            else "",
        )
        if self._todo:
            self._source = TopicSource(
                self.bootstrap,
                req.source,
                start=start,
                client_id="plum-replay-copy",
                max_poll_records=self.batch_records,
            )
            self._source.pause(sorted(set(partitions) - self._todo))
        self._t0 = self._moved_at = self._clock()

    def step(self, stop: threading.Event) -> Step:
        assert self.result is not None and self.producer is not None
        if not self._todo:
            self.result.finished = True
            return Step(finished=True)
        assert self._source is not None and self._group is not None
        ranges = self.result.ranges
        batch = self._source.take(self.batch_records, 0.5)
        keep = [r for r in batch if r.offset < ranges[r.partition][1]]
        positions = self._source.position()
        nxt = {p: min(positions[p], ranges[p][1]) for p in self._todo}
        if keep or any(nxt[p] > self._committed[p] for p in nxt):
            self._commit(keep, nxt)
            self._moved_at = self._clock()
        elif self._clock() - self._moved_at > self.stall_timeout_s:
            behind = {p: (self._committed[p], ranges[p][1]) for p in sorted(self._todo)}
            raise ReplayError(
                f"copy of {self.request.source} stalled: partitions (position, end) {behind}"
                f" did not move for {self.stall_timeout_s:.0f} s"
            )
        done = sorted(p for p in self._todo if self._committed[p] >= ranges[p][1])
        if done:
            self._source.pause(done)
            self._todo.difference_update(done)
        self._throttle(stop)
        self.result.finished = not self._todo
        return Step(done=len(keep), active=True, finished=self.result.finished)

    def _commit(self, records: list[Record], next_offsets: dict[int, int]) -> None:
        assert self.producer is not None and self._group is not None
        assert self.result is not None
        target, source = self.request.target, self.request.source
        with self.producer.transaction() as tx:
            for r in records:
                tx.send_record(
                    target,
                    r.partition,
                    r.key,
                    r.value,
                    r.timestamp,
                    (*r.headers, (ORIGIN_HEADER, origin(r))),
                )
            tx.send_offsets({(source, p): o for p, o in next_offsets.items()}, self._group.metadata)
            if self.before_commit is not None:
                self.before_commit(self)
        self._committed.update(next_offsets)
        self.result.copied += len(records)
        self.result.transactions += 1

    def _throttle(self, stop: threading.Event) -> None:
        if self.max_rate is None or self.result is None:
            return
        due = self._t0 + self.result.copied / self.max_rate
        wait = due - self._clock()
        if wait > 0:
            stop.wait(wait)

    def checkpoint(self) -> None:
        """Nothing to do: every step committed its records and positions together."""

    def close(self) -> None:
        for closeable in (self._source, self._group, self.producer):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception as exc:  # close the others all the same
                    log.warning("replay copy: closing %r: %s", closeable, exc)
        if self.result is not None:
            self.result.seconds = self._clock() - self._t0

    def describe(self) -> str:
        if self.result is None:
            return ""
        done = self.offsets_done()
        return f"{done}/{self.result.offsets} offsets, {self.result.transactions} transactions"

    # ------------------------------------------------------------ progress

    def offsets_done(self) -> int:
        if self.result is None:
            return 0
        return sum(self._committed[p] - first for p, (first, _) in self.result.ranges.items())

    def fraction(self) -> float | None:
        if self.result is None:
            return None
        total = self.result.offsets
        return 1.0 if total == 0 else self.offsets_done() / total


@dataclass(frozen=True)
class CopyOptions:
    batch_records: int = DEFAULT_BATCH_RECORDS
    max_rate: float | None = None
    progress_every_s: float = 5.0
    stall_timeout_s: float = STALL_TIMEOUT_S
    before_commit: Callable[[ReplayCopy], None] | None = field(default=None, compare=False)


def copy_range(
    bootstrap: str,
    request: CopyRequest,
    options: CopyOptions | None = None,
    stop: threading.Event | None = None,
) -> CopyResult:
    """Run the copy to its end (or until `stop`/SIGTERM: the transaction in hand commits,
    and `finished` is False); returns what it did."""
    options = options or CopyOptions()
    copy = ReplayCopy(
        bootstrap,
        request,
        options.batch_records,
        options.max_rate,
        options.stall_timeout_s,
        options.before_commit,
    )
    runtime = Runtime(
        copy,
        RuntimeConfig(
            name="replay copy", unit="records", progress_every_s=options.progress_every_s
        ),
        stop=stop,
        fraction=copy.fraction,
    )
    runtime.run()
    assert copy.result is not None
    return copy.result
