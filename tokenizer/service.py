"""The streaming SID assignment service: uploads in, Semantic IDs out, exactly once.

Each cycle polls a batch of `plum.uploads.v1` records (by size or time), validates them
(bad ones become dead letters with their reason), encodes the new videos with the frozen
tokenizer, gives each a SID in the local index (tokenizer codes + disambiguation code),
and then, in ONE Kafka transaction, writes the assignments and dead letters and commits
the consumer offsets. Only after that transaction commits does the local index commit.

Why that order is safe:
- crash before the Kafka commit: nothing is visible (read_committed), the offsets are not
  committed and the index rolls back; the batch is processed again, giving the same SIDs
  for videos already known and the same next-free codes otherwise;
- crash after the Kafka commit but before the index commit: at start-up `sync_index`
  reads the assignments topic from the offsets the index last saw, so the index learns
  what was published; those videos then keep their published SIDs.
A video that already has a SID under this version is never re-published, so a replay of
the uploads topic changes nothing and duplicates nothing.

The Kafka side (consumer, transactional producer) is `streams.kafka.transactional`: librdkafka
(confluent-kafka) by default, kafka-python as a fallback (`kafka_client`). With librdkafka
a batch's Kafka transaction runs in a worker thread while the next batch is polled (its
commit is ~75 ms of broker round trips); the next batch touches the index only after that
commit and the index commit that follows it, so the order above holds.

The service never stops on a bad record: decode errors, wrong or missing modalities,
NaN/inf and a full disambiguation space all become dead letters.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from monitoring.metrics import Metrics
from plum.config import DEFAULT_KAFKA_BOOTSTRAP
from streams.contracts import schema
from streams.contracts.sid import disambiguation_size_field
from streams.contracts.topics import TopicNames
from streams.kafka.clients import make_producer
from streams.kafka.transactional import KAFKA_CLIENTS, Output, Record, TransactionalIO, open_io
from tokenizer.index import SidIndex, SidSpaceExhausted, topic_key

log = logging.getLogger(__name__)


@dataclass
class _PendingBatch:
    """A batch whose index writes are done but not committed, waiting for its Kafka
    transaction (run inline, or in a worker thread while the next batch is polled)."""

    stats: BatchStats
    letters: list
    latencies: list[float]
    started: float
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def run(self, commit, *args) -> None:
        try:
            commit(*args)
        except BaseException as err:  # re-raised by the main thread in _finish_pending
            self.error = err


class SidEncoder(Protocol):
    """What the service needs of a tokenizer (tokenizer.frozen.TrainedTokenizer is one)."""

    @property
    def sid_version(self) -> str: ...

    @property
    def modalities(self) -> tuple[tuple[str, int], ...]: ...

    def encode(self, item_embeddings: Mapping[str, Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class SidServiceConfig:
    bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP  # filled from [kafka] by the loader
    topic_prefix: str = ""
    include_replay: bool = False  # also consume plum.uploads.replay.v1 (backfills)
    batch_size: int = 2048
    batch_time_ms: int = 200
    poll_timeout_ms: int = 100
    group_id: str = "plum-sid-service"
    transactional_id: str = "plum-sid-service"
    disambiguation_size: int = disambiguation_size_field()  # from [sid]
    max_future_ms: int = schema.DEFAULT_MAX_FUTURE_MS
    index_path: str = ""  # "" -> $PLUM_STATE_DIR/tokenizer/sid-index.sqlite
    checkpoint: str = ""  # tokenizer checkpoint directory
    metrics_port: int = 9103
    progress_every_s: float = 10.0
    # Kafka client of the consume/transaction cycle: "confluent" (librdkafka, ~3x the
    # assignments/s on 2 cores, see bench/results/sid-service.json) or "kafka-python".
    kafka_client: str = "confluent"

    def __post_init__(self) -> None:
        if self.kafka_client not in KAFKA_CLIENTS:
            raise ValueError(f"kafka_client={self.kafka_client!r}; expected one of {KAFKA_CLIENTS}")


@dataclass
class BatchStats:
    consumed: int = 0
    assigned: int = 0
    reused: int = 0
    collisions: int = 0
    dead_letters: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class SidService:
    def __init__(
        self,
        config: SidServiceConfig,
        tokenizer: SidEncoder,
        index: SidIndex,
        metrics: Metrics | None = None,
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.version = tokenizer.sid_version
        self.index = index
        self.topics = TopicNames.with_prefix(config.topic_prefix)
        self.metrics = metrics or Metrics.for_component("sid_service")
        self.dims = dict(tokenizer.modalities)
        self.source_topics = [self.topics.uploads] + (
            [self.topics.uploads_replay] if config.include_replay else []
        )
        # One group and one transactional id per tokenizer version: a reindexed service
        # reads every upload again, and a zombie of the same version is fenced.
        self.group_id = f"{config.group_id}-{self.version}"
        self.totals = BatchStats()
        self._io: TransactionalIO | None = None
        self._pending: _PendingBatch | None = None
        self._index_size = 0  # kept up to date rather than COUNT(*)-ed on every batch
        self.metrics.gauge("plum_sid_version_info").labels(version=self.version).set(1)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.sync_index()
        self._index_size = self.index.size(self.version)
        self.warm_up()
        self._io = open_io(
            self.config.kafka_client,
            self.config.bootstrap,
            self.source_topics,
            group_id=self.group_id,
            transactional_id=f"{self.config.transactional_id}-{self.version}",
            max_poll_records=self.config.batch_size,
        )
        # Everything alive now (JAX, the model, the clients) lives as long as the service:
        # move it out of the collector's view, so the gen-2 collections that a batch of
        # thousands of decoded uploads triggers do not re-scan it every time.
        gc.freeze()
        log.info("SID service %s on %s", self.version, self.config.kafka_client)

    def warm_up(self) -> None:
        """Compile the encoder for every batch shape it can see before taking traffic.

        The tokenizer pads batches to powers of two; without this, the first batch of
        each new size stalls for a JIT compile of a second or more, which is exactly
        the upload→SID latency tail a live service must not have.
        """
        started = time.perf_counter()
        rows = 1
        while True:
            self.tokenizer.encode(
                {name: np.zeros((rows, dim), np.float32) for name, dim in self.dims.items()}
            )
            if rows >= self.config.batch_size:
                break
            rows = min(rows * 2, self.config.batch_size)
        log.info(
            "encoder warmed up for batches up to %d in %.1f s",
            self.config.batch_size,
            time.perf_counter() - started,
        )

    def close(self) -> None:
        if self._io is not None:
            self._io.close()
            self._io = None

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> BatchStats:
        """Process batches until `stop` is set (or no input for `idle_exit_s`)."""
        self.start()
        started = last_log = time.monotonic()
        last_input = started
        try:
            while not stop.is_set():
                records = self._poll_batch(stop)
                # The previous batch's Kafka commit ran while this batch was polled; it
                # must finish (and the index commit after it) before this one touches
                # the index.
                self._finish_pending()
                if records:
                    last_input = time.monotonic()
                    self._pending = self._begin(records, background=self._pipelined)
                    if not self._pipelined:
                        self._finish_pending()
                elif not self._io.assigned:
                    last_input = time.monotonic()  # still joining the group: not idle yet
                elif idle_exit_s is not None and time.monotonic() - last_input > idle_exit_s:
                    log.info("no uploads for %.1f s: exiting", idle_exit_s)
                    break
                now = time.monotonic()
                if now - last_log > self.config.progress_every_s:
                    last_log = now
                    rate = self.totals.consumed / max(now - started, 1e-9)
                    log.info(
                        "sid service %s: %d uploads (%.0f/s), %d assigned, %d collisions, %d dead letters, index %d",
                        self.version,
                        self.totals.consumed,
                        rate,
                        self.totals.assigned,
                        self.totals.collisions,
                        sum(self.totals.dead_letters.values()),
                        self._index_size,
                    )
            self._finish_pending()
        finally:
            self._abandon_pending()
            self.close()
        return self.totals

    # ------------------------------------------------------------------ the cycle

    def _poll_batch(self, stop: threading.Event) -> list[Record]:
        """Records until the batch is full or `batch_time_ms` passed (checking `stop`)."""
        assert self._io is not None
        deadline = time.monotonic() + self.config.batch_time_ms / 1000
        records: list[Record] = []
        while len(records) < self.config.batch_size and not stop.is_set():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0.001:
                break
            records.extend(
                self._io.poll(
                    self.config.batch_size - len(records),
                    min(remaining_s, self.config.poll_timeout_ms / 1000),
                )
            )
        return records

    def process(self, records: list[Record]) -> BatchStats:
        """Assign SIDs for one batch of consumed upload records and commit it atomically."""
        self._pending = self._begin(records, background=False)
        return self._finish_pending()

    @property
    def _pipelined(self) -> bool:
        # librdkafka handles may be used from two threads; kafka-python's consumer may not
        return self.config.kafka_client == "confluent"

    def _begin(self, records: list[Record], background: bool) -> _PendingBatch:
        """Validate, assign in an open index transaction, and start the Kafka transaction
        (in a worker thread when `background`, so the next poll overlaps its commit)."""
        assert self._io is not None
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        stats = BatchStats(consumed=len(records))
        limits = schema.ValidationLimits(
            now_ms=now_ms, max_future_ms=self.config.max_future_ms, embedding_dims=self.dims
        )
        uploads: dict[str, tuple[schema.UploadEvent, Record]] = {}
        letters: list[schema.DeadLetter] = []
        decode = schema.decode_upload
        for rec in records:
            try:
                event = decode(rec.value, limits)
            except schema.ValidationError as err:
                letters.append(
                    schema.DeadLetter.of(
                        rec.topic, rec.partition, rec.offset, err, rec.value, now_ms
                    )
                )
                continue
            uploads[event.video_id] = (event, rec)  # the last upload of a video in a batch wins
        outputs: list[tuple[bytes, bytes]] = []
        latencies: list[float] = []
        # The index commits in _finish_pending, only after the Kafka transaction
        # committed; any exception rolls it back (see the module docstring).
        self.index.begin()
        try:
            known = self.index.lookup_many(self.version, uploads)
            fresh = [vid for vid in uploads if vid not in known]
            stats.reused = len(uploads) - len(fresh)
            if fresh:
                outputs, latencies = self._assign(fresh, uploads, letters, stats, now_ms)
        except BaseException:
            self.index.rollback()
            raise
        pending = _PendingBatch(stats, letters, latencies, started)
        if background:
            pending.thread = threading.Thread(
                target=pending.run,
                args=(self._commit_to_kafka, records, outputs, letters),
                name="sid-kafka-commit",
                daemon=True,
            )
            pending.thread.start()
        else:
            pending.run(self._commit_to_kafka, records, outputs, letters)
        return pending

    def _finish_pending(self) -> BatchStats | None:
        """Wait for the pending batch's Kafka commit, then commit (or roll back) the index."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if pending.thread is not None:
            pending.thread.join()
        if pending.error is not None:
            self.index.rollback()
            raise pending.error
        self.index.commit()
        stats = pending.stats
        self._index_size += stats.assigned
        for letter in pending.letters:
            stats.dead_letters[letter.reason] += 1
        self._account(stats, pending.latencies, time.perf_counter() - pending.started)
        return stats

    def _abandon_pending(self) -> None:
        """On the way out after an error: let an in-flight commit end, keep the index
        only if Kafka committed (else the batch is redone after a restart)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.thread is not None:
            pending.thread.join()
        if pending.error is None:
            self.index.commit()
        else:
            self.index.rollback()

    def _assign(
        self, fresh: list[str], uploads: dict, letters: list, stats: BatchStats, now_ms: int
    ) -> tuple[list[tuple[bytes, bytes]], list[float]]:
        """Encode the new videos, give each a SID in the index; the records to publish."""
        inputs = {
            name: np.asarray([uploads[v][0].embeddings[name] for v in fresh], np.float32)
            for name in self.dims
        }  # {modality: [len(fresh), dim]}
        codes = np.asarray(self.tokenizer.encode(inputs)).tolist()  # [len(fresh), L]
        results = self.index.assign_many(self.version, zip(fresh, codes, strict=True), now_ms)
        outputs: list[tuple[bytes, bytes]] = []
        latencies: list[float] = []
        kept: list[int] = []  # rows of `fresh` that got a SID
        wall_ms = time.time() * 1000
        version = self.version
        encode, assignment_cls = schema.encode_sid_assignment, schema.SidAssignment
        for row, (vid, result) in enumerate(zip(fresh, results, strict=True)):
            event, rec = uploads[vid]
            if isinstance(result, SidSpaceExhausted):
                err = schema.ValidationError(schema.SID_SPACE_EXHAUSTED, str(result))
                letters.append(
                    schema.DeadLetter.of(
                        rec.topic, rec.partition, rec.offset, err, rec.value, now_ms
                    )
                )
                continue
            kept.append(row)
            stats.collisions += result.sid[-1] > 0
            value = encode(
                assignment_cls(video_id=vid, sid=result.sid, sid_version=version, ts=now_ms)
            )
            outputs.append((topic_key(version, vid), value))
            if rec.timestamp is not None and rec.timestamp > 0:
                latencies.append(max(0.0, (wall_ms - rec.timestamp) / 1000))
        stats.assigned = len(kept)
        # The items table keeps float32 embeddings for a reindex; the matrix built for
        # the encoder already holds them, one row per video in `self.dims` order.
        kept_ids = [fresh[row] for row in kept]
        self.index.remember_items(
            self.dims,
            kept_ids,
            [uploads[vid][0].ts for vid in kept_ids],
            np.concatenate([inputs[name] for name in self.dims], axis=1)[kept],
        )
        return outputs, latencies

    def _commit_to_kafka(
        self, records: list[Record], outputs: list[tuple[bytes, bytes]], letters: list
    ) -> None:
        """One transaction: the assignments, the dead letters and the next offsets."""
        assert self._io is not None
        sends: list[Output] = [(self.topics.sid_assignments, k, v) for k, v in outputs]
        sends.extend((self.topics.deadletter, None, schema.encode(letter)) for letter in letters)
        next_offsets: dict[tuple[str, int], int] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset >= next_offsets.get(tp, 0):
                next_offsets[tp] = rec.offset + 1
        self._io.commit(sends, next_offsets)

    def _account(self, stats: BatchStats, latencies: Iterable[float], seconds: float) -> None:
        m = self.metrics
        m.counter("plum_sid_uploads_consumed_total").inc(stats.consumed)
        m.counter("plum_sid_assignments_total").labels(version=self.version).inc(stats.assigned)
        m.counter("plum_sid_collisions_total").labels(version=self.version).inc(stats.collisions)
        m.histogram("plum_sid_batch_seconds").observe(seconds)
        hist = m.histogram("plum_sid_upload_to_sid_seconds")
        for latency in latencies:
            hist.observe(latency)
        for reason, n in stats.dead_letters.items():
            m.counter("plum_deadletter_total").labels(
                component="sid_service", source_topic=self.topics.uploads, reason=reason
            ).inc(n)
            self.totals.dead_letters[reason] += n
        m.gauge("plum_sid_index_size").labels(version=self.version).set(self._index_size)
        self.totals.consumed += stats.consumed
        self.totals.assigned += stats.assigned
        self.totals.reused += stats.reused
        self.totals.collisions += stats.collisions

    # ------------------------------------------------------------------ index sync

    def sync_index(self, timeout_s: float = 60.0) -> int:
        """Bring the local index up to the assignments topic's committed end; returns records read."""
        return sync_index_from_topic(
            self.index, self.config.bootstrap, self.topics.sid_assignments, timeout_s
        )


def sync_index_from_topic(
    index: SidIndex, bootstrap: str, topic: str, timeout_s: float = 60.0
) -> int:
    """Read `topic` from the offsets `index` last saw to the end (read_committed) into it.

    With an empty or missing index file this is the full rebuild from the compacted topic.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="plum-sid-sync",
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return 0
        consumer.assign(tps)
        seen = index.topic_offsets(topic)
        for tp in tps:
            consumer.seek(tp, seen.get(tp.partition, 0))
        ends = consumer.end_offsets(tps)
        count = 0
        deadline = time.monotonic() + timeout_s
        with index.transaction():
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"syncing the SID index from {topic} took over {timeout_s} s"
                    )
                for batch in consumer.poll(timeout_ms=200).values():
                    for rec in batch:
                        if rec.value is None:
                            continue  # tombstone
                        a = schema.decode_sid_assignment(rec.value)
                        index.record(a.sid_version, a.video_id, a.sid, a.ts)
                        count += 1
            index.set_topic_offsets(topic, {tp.partition: consumer.position(tp) for tp in tps})
        if count:
            log.info("synced %d SID assignments from %s into %s", count, topic, index.path)
        return count
    finally:
        consumer.close()


def reindex(
    index: SidIndex,
    tokenizer: SidEncoder,
    bootstrap: str,
    topics: TopicNames,
    chunk: int = 4096,
) -> int:
    """Assign every video the index knows under `tokenizer`'s (new) version and publish.

    The old version's SIDs stay in the index and the topic (keys differ by version) and
    stay active until `SidIndex.switch`. Safe to re-run: videos already assigned under the
    new version are skipped. Returns the number of new assignments.
    """
    version = tokenizer.sid_version
    dims = dict(tokenizer.modalities)
    producer = make_producer(bootstrap, transactional_id=f"plum-sid-reindex-{version}")
    producer.init_transactions()
    total = 0
    started = time.monotonic()
    pending = [
        (vid, ts, emb) for vid, ts, emb in index.items() if index.lookup(version, vid) is None
    ]
    try:
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            part = [(v, t, e) for v, t, e in part if set(e) == set(dims)]
            if not part:
                continue
            codes = np.asarray(
                tokenizer.encode({n: np.stack([e[n] for _, _, e in part]) for n in dims})
            )
            now_ms = int(time.time() * 1000)
            with index.transaction():
                producer.begin_transaction()
                for (vid, _, _), row in zip(part, codes, strict=True):
                    a = index.assign(version, vid, row.tolist(), now_ms)
                    value = schema.encode(schema.SidAssignment(vid, a.sid, version, now_ms))
                    producer.send(topics.sid_assignments, key=topic_key(version, vid), value=value)
                producer.commit_transaction()
            total += len(part)
            elapsed = time.monotonic() - started
            rate = total / max(elapsed, 1e-9)
            log.info(
                "reindex %s: %d/%d (%.0f/s, ETA %.0f s)",
                version,
                total,
                len(pending),
                rate,
                (len(pending) - total) / max(rate, 1e-9),
            )
    finally:
        producer.close()
    return total
