"""Play the replay topics into the live topics, in record-timestamp order, exactly once.

A data set imported into the replay topics (`plum data import movielens`) or a range
copied there (`plum replay copy`) becomes live traffic again: the player reads every
replay topic it is given from its committed position to the end offsets seen at start,
merges their partitions by record timestamp (the event time the import wrote) and
produces each record into its live topic, so the stack downstream (the Flink job, the
SID service, the probe) sees the data as it would have arrived.

- Order: the smallest Kafka timestamp first across every partition of every topic; a
  tie goes to the topic given first (uploads before watches), then the smaller
  partition, then the smaller offset. A record with no timestamp sorts first.
- What is kept: key, value (byte for byte, so the event's own `ts` is unchanged and the
  Flink job's event-time logic sees exactly the original timeline), headers, and the
  partition number (the replay topic was written with the live topic's partitioner and
  partition count). One header is added: `plum.replay.origin` = `topic/partition/offset`.
- What changes: the record's Kafka timestamp is the wall time it is played at. Freshness
  (upload -> servable) is measured on Kafka timestamps, and the live topics' time-based
  retention would delete records stamped with a 1998 event time at once.
- Pace: `speed` plays event time that many times faster than wall time (0: no event-time
  pacing; MovieLens-100k's 215 days take 31 minutes at 10,000x) and `max_rate` caps
  records per second; both may be set, the slower wins.
- Exactly once: each batch is one Kafka transaction holding the played records AND the
  next replay offsets of the player's own position group, both named `play_id`. A
  restarted player fences the earlier one and resumes where the last commit ended; the
  pacing starts afresh from there.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from monitoring.metrics import Metrics
from plum.batch_cycle import Record
from plum.runtime import Runtime, RuntimeConfig, Step
from streams.kafka.admin import existing_topics, partition_counts
from streams.kafka.source import TopicEnds, TopicSource
from streams.kafka.transactional import PositionGroup, TransactionalProducer
from streams.replay.copy import ORIGIN_HEADER, ReplayError, origin

log = logging.getLogger(__name__)

DEFAULT_PLAY_ID = "plum-replay-play"
DEFAULT_BATCH_RECORDS = 500
MAX_WAIT_S = 0.25  # a step waits at most this long for its next record to fall due
STALL_TIMEOUT_S = 120.0  # a partition short of its end that yields nothing for this long

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class PlayRequest:
    """Play each `(replay topic, live topic)` of `routes` from `play_id`'s committed
    position to the replay topic's end offsets at start."""

    routes: tuple[tuple[str, str], ...]  # in tie-break order (uploads before watches)
    play_id: str = DEFAULT_PLAY_ID
    speed: float = 0.0  # event-time seconds per wall second; 0: no event-time pacing
    max_rate: float | None = None  # records per second
    batch_records: int = DEFAULT_BATCH_RECORDS

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError("nothing to play: no (replay topic, live topic) routes")
        for replay, live in self.routes:
            if replay == live:
                raise ValueError(f"replay and live topic are the same topic {replay!r}")
        if len({r for r, _ in self.routes}) != len(self.routes):
            raise ValueError(f"a replay topic is named twice in {self.routes}")
        if self.speed < 0:
            raise ValueError(f"speed must be >= 0, got {self.speed}")
        if self.max_rate is not None and self.max_rate <= 0:
            raise ValueError(f"max_rate must be > 0 records/s, got {self.max_rate}")
        if self.batch_records < 1:
            raise ValueError(f"batch_records must be >= 1, got {self.batch_records}")


class TimestampMerge:
    """The heads of many partitions, merged by (timestamp, topic rank, partition, offset).

    A record can be released only when every partition that is not at its end has a
    buffered head: otherwise an earlier record may still be on its way. `ends` are the
    offsets each partition is read to; `positions` the first offset not handed out."""

    def __init__(self, ranks: dict[str, int], ends: dict[TopicPartition, int]) -> None:
        self._rank = ranks
        self._topic_of = {rank: topic for topic, rank in ranks.items()}
        self.ends = dict(ends)
        self._buffers: dict[TopicPartition, deque[Record]] = {tp: deque() for tp in ends}
        self._heap: list[tuple[int, int, int, int]] = []  # heads only
        self._read_to: dict[TopicPartition, int] = {}  # offset after the last record pushed

    def start_at(self, positions: dict[TopicPartition, int]) -> None:
        self._read_to = dict(positions)

    def _key(self, r: Record) -> tuple[int, int, int, int]:
        ts = r.timestamp if r.timestamp is not None else -1
        return (ts, self._rank[r.topic], r.partition, r.offset)

    def push(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        if record.offset >= self.ends[tp]:
            return  # appended after the play started: not this play's
        buf = self._buffers[tp]
        if not buf:
            heapq.heappush(self._heap, self._key(record))
        buf.append(record)
        self._read_to[tp] = record.offset + 1

    def advance_to(self, tp: TopicPartition, offset: int) -> None:
        """The source stands at `offset` (past markers or aborted records)."""
        self._read_to[tp] = max(self._read_to.get(tp, 0), min(offset, self.ends[tp]))

    def missing(self) -> list[TopicPartition]:
        """Partitions short of their end with nothing buffered: the merge waits for them."""
        return [
            tp
            for tp, buf in self._buffers.items()
            if not buf and self._read_to.get(tp, 0) < self.ends[tp]
        ]

    def finished(self) -> bool:
        return not self._heap and not self.missing()

    def peek(self) -> Record | None:
        """The next record in merged order, or None until it can be known."""
        if not self._heap or self.missing():
            return None
        _, rank, partition, _ = self._heap[0]
        return self._buffers[(self._topic_of[rank], partition)][0]

    def pop(self) -> Record:
        head = self.peek()
        if head is None:
            raise LookupError("no record can be released yet")
        heapq.heappop(self._heap)
        buf = self._buffers[(head.topic, head.partition)]
        buf.popleft()
        if buf:
            heapq.heappush(self._heap, self._key(buf[0]))
        return head

    def positions(self) -> dict[TopicPartition, int]:
        """(topic, partition) -> the offset of the first record not popped yet."""
        out = {}
        for tp, buf in self._buffers.items():
            out[tp] = buf[0].offset if buf else self._read_to.get(tp, self.ends[tp])
        return out


@dataclass
class PlayResult:
    request: PlayRequest
    ends: dict[TopicPartition, int]
    starts: dict[TopicPartition, int]  # where this run began (committed by earlier runs)
    firsts: dict[TopicPartition, int] = field(default_factory=dict)  # low watermarks
    played: int = 0
    transactions: int = 0
    finished: bool = False
    seconds: float = 0.0
    newest_ts: int | None = None  # Kafka timestamp (event time) of the last record played

    @property
    def earlier(self) -> int:
        return sum(self.starts[tp] - self.firsts.get(tp, 0) for tp in self.starts)

    @property
    def total(self) -> int:
        return sum(self.ends[tp] - self.firsts.get(tp, 0) for tp in self.ends)


class ReplayPlayer:
    """The play as a `plum.runtime.Component`: one transaction per step."""

    def __init__(
        self,
        bootstrap: str,
        request: PlayRequest,
        metrics: Metrics | None = None,
        before_commit: Callable[[ReplayPlayer], None] | None = None,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.bootstrap = bootstrap
        self.request = request
        self.metrics = metrics or Metrics.for_component("replay")
        self.before_commit = before_commit
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self._wall_ms = wall_ms
        self._live = dict(request.routes)
        self.producer: TransactionalProducer | None = None
        self._group: PositionGroup | None = None
        self._sources: dict[str, TopicSource[Record]] = {}
        self._paused: dict[str, set[int]] = {}
        self._merge: TimestampMerge | None = None
        self.result: PlayResult | None = None
        self._pace_origin: tuple[float, int] | None = None  # (clock s, event ms) of the first
        self._committed: dict[TopicPartition, int] = {}
        self._t0 = clock()
        self._moved_at = clock()
        self._played = self.metrics.counter("plum_replay_played_total")
        self._event_time = self.metrics.gauge("plum_replay_event_time_ms")

    # ------------------------------------------------------------ Component

    def start(self) -> None:
        req = self.request
        topics = [t for route in req.routes for t in route]
        have = existing_topics(self.bootstrap)
        missing = [t for t in topics if t not in have]
        if missing:
            raise ReplayError(
                f"topics {missing} do not exist on {self.bootstrap}; create them with"
                " `plum kafka topics`"
            )
        counts = partition_counts(self.bootstrap, topics)
        for replay, live in req.routes:
            if counts[live] < counts[replay]:
                raise ReplayError(
                    f"{live} has {counts[live]} partitions, fewer than the {counts[replay]}"
                    f" of {replay}: partition p is played to partition p"
                )
        # The producer first: it fences an earlier run and aborts what that left open, so
        # the committed positions read next are final.
        self.producer = TransactionalProducer(self.bootstrap, req.play_id, "plum-replay-play")
        self._group = PositionGroup(self.bootstrap, req.play_id, "plum-replay-play")
        ends: dict[TopicPartition, int] = {}
        starts: dict[TopicPartition, int] = {}
        firsts: dict[TopicPartition, int] = {}
        for replay, _ in req.routes:
            partitions = list(range(counts[replay]))
            ends_of = TopicEnds(self.bootstrap, replay, client_id="plum-replay-play-ends")
            try:
                bounds = ends_of.bounds(partitions)  # (low: retention may have moved it, end)
            finally:
                ends_of.close()
            committed = self._group.committed(replay, partitions)
            for p in partitions:
                low, end = bounds[p]
                ends[(replay, p)] = end
                firsts[(replay, p)] = low
                start = committed[p] if committed[p] is not None else low
                starts[(replay, p)] = min(max(start, low), end)
        self.result = PlayResult(req, ends, starts, firsts)
        self._merge = TimestampMerge({r: i for i, (r, _) in enumerate(req.routes)}, ends)
        self._merge.start_at(starts)
        self._committed = dict(starts)
        for replay, _ in req.routes:
            start = {p: o for (t, p), o in starts.items() if t == replay}
            source: TopicSource[Record] = TopicSource(
                self.bootstrap,
                replay,
                start=start,
                client_id="plum-replay-play",
                max_poll_records=max(req.batch_records, 500),
            )
            at_end = sorted(p for p, o in start.items() if o >= ends[(replay, p)])
            source.pause(at_end)
            self._paused[replay] = set(at_end)
            self._sources[replay] = source
        log.info(
            "replay play %s: %s; %d records to play%s",
            req.play_id,
            ", ".join(f"{r} -> {lv}" for r, lv in req.routes),
            self.result.total - self.result.earlier,
            f", {self.result.earlier} played by an earlier run" if self.result.earlier else "",
        )
        self._t0 = self._moved_at = self._clock()

    def step(self, stop: threading.Event) -> Step:
        assert self.result is not None and self._merge is not None
        merge = self._merge
        batch: list[Record] = []
        step_ends = self._clock() + MAX_WAIT_S
        while len(batch) < self.request.batch_records and not stop.is_set():
            if merge.missing():
                self._fill(merge.missing())
                if merge.missing():
                    break  # still on its way: commit what is due, try again next step
            head = merge.peek()
            if head is None:
                break  # every partition played to its end
            wait = self._due(head, len(batch)) - self._clock()
            if wait > 0:
                left = step_ends - self._clock()
                if left <= 0:
                    break
                stop.wait(min(wait, left))
                continue
            batch.append(merge.pop())
        positions = merge.positions()
        if batch or (merge.finished() and positions != self._committed):
            # a play whose last records were transaction markers still commits its final
            # positions once, so a rerun knows it is done
            self._commit(batch, positions)
        if batch or not merge.missing():
            self._moved_at = self._clock()  # waiting for a record to fall due is no stall
        elif self._clock() - self._moved_at > self.stall_timeout_s:
            behind = {
                f"{t}/{p}": (positions[(t, p)], merge.ends[(t, p)]) for t, p in merge.missing()
            }
            raise ReplayError(
                f"play stalled: partitions (position, end) {behind} did not move for"
                f" {self.stall_timeout_s:.0f} s"
            )
        self.result.finished = merge.finished()
        return Step(done=len(batch), active=True, finished=self.result.finished)

    def _fill(self, missing: Sequence[TopicPartition]) -> None:
        assert self._merge is not None
        for topic in sorted({t for t, _ in missing}):
            source = self._sources[topic]
            for record in source.take(self.request.batch_records, 0.2):
                self._merge.push(record)
            done = []
            for p, offset in source.position().items():
                self._merge.advance_to((topic, p), offset)
                if offset >= self._merge.ends[(topic, p)] and p not in self._paused[topic]:
                    done.append(p)
            source.pause(done)  # records appended since the start are not this play's
            self._paused[topic].update(done)

    def _due(self, record: Record, queued: int) -> float:
        """The clock time at which `record` may be played, with `queued` records ahead of
        it in the transaction being built."""
        req = self.request
        assert self.result is not None
        sent = self.result.played + queued
        due = self._t0 + (sent / req.max_rate if req.max_rate else 0.0)
        if req.speed > 0 and record.timestamp is not None:
            if self._pace_origin is None:
                self._pace_origin = (self._clock(), record.timestamp)
            at, event_ms = self._pace_origin
            due = max(due, at + (record.timestamp - event_ms) / 1000.0 / req.speed)
        return due

    def _commit(self, records: list[Record], positions: dict[TopicPartition, int]) -> None:
        assert self.producer is not None and self._group is not None
        assert self.result is not None
        now_ms = self._wall_ms()
        with self.producer.transaction() as tx:
            for r in records:
                tx.send_record(
                    self._live[r.topic],
                    r.partition,
                    r.key,
                    r.value,
                    now_ms,
                    (*r.headers, (ORIGIN_HEADER, origin(r))),
                )
            tx.send_offsets(positions, self._group.metadata)
            if self.before_commit is not None:
                self.before_commit(self)
        self._committed = dict(positions)
        self.result.played += len(records)
        self.result.transactions += 1
        for r in records:
            self._played.labels(topic=self._live[r.topic]).inc()
        if records and records[-1].timestamp is not None:
            self.result.newest_ts = records[-1].timestamp
            self._event_time.set(records[-1].timestamp)

    def checkpoint(self) -> None:
        """Nothing to do: every step committed its records and positions together."""

    def close(self) -> None:
        for closeable in (*self._sources.values(), self._group, self.producer):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception as exc:  # close the others all the same
                    log.warning("replay play: closing %r: %s", closeable, exc)
        if self.result is not None:
            self.result.seconds = self._clock() - self._t0

    def describe(self) -> str:
        if self.result is None or self.result.newest_ts is None:
            return ""
        return "event time " + time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime(self.result.newest_ts / 1000)
        )

    def fraction(self) -> float | None:
        if self.result is None or self._merge is None:
            return None
        total = self.result.total
        if total == 0:
            return 1.0
        done = sum(o - self.result.firsts.get(tp, 0) for tp, o in self._merge.positions().items())
        return done / total


@dataclass(frozen=True)
class PlayOptions:
    metrics_port: int | None = None
    progress_every_s: float = 5.0
    stall_timeout_s: float = STALL_TIMEOUT_S
    before_commit: Callable[[ReplayPlayer], None] | None = field(default=None, compare=False)


def play(
    bootstrap: str,
    request: PlayRequest,
    options: PlayOptions | None = None,
    stop: threading.Event | None = None,
    metrics: Metrics | None = None,
) -> PlayResult:
    """Play to the end (or until `stop`/SIGTERM: the transaction in hand commits and
    `finished` is False); returns what it did."""
    options = options or PlayOptions()
    metrics = metrics or Metrics.for_component("replay")
    player = ReplayPlayer(
        bootstrap, request, metrics, options.before_commit, options.stall_timeout_s
    )
    runtime = Runtime(
        player,
        RuntimeConfig(
            name="replay play",
            unit="records",
            metrics_port=options.metrics_port,
            progress_every_s=options.progress_every_s,
        ),
        registry=metrics.registry,
        stop=stop,
        fraction=player.fraction,
    )
    runtime.run()
    assert player.result is not None
    return player.result
