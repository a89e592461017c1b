"""The streaming SID assignment service: uploads in, Semantic IDs out, exactly once.

The service is a `plum.batch_cycle.BatchProcessor`, run as `plum.runtime.Runtime(
BatchCycle(service))` (`service_runtime`: what `plum tokenizer serve` and
`plum bench sid-service` run). Each cycle polls a batch of `plum.uploads.v1` records (by
size or time); the service validates them (bad ones become dead letters with their
reason), encodes the new videos with the frozen tokenizer and gives each a SID in the
local index (tokenizer codes + disambiguation code), inside an open index transaction.
The cycle then writes the assignments and dead letters and commits the consumer offsets
in ONE Kafka transaction; only after that transaction commits does the local index
commit (`Processed.on_committed`), and if it fails the index rolls back (`on_aborted`).

Why that order is safe:
- crash before the Kafka commit: nothing is visible (read_committed), the offsets are not
  committed and the index rolls back; the batch is processed again, giving the same SIDs
  for videos already known and the same next-free codes otherwise;
- crash after the Kafka commit but before the index commit: at start-up `sync_index`
  reads the assignments topic from the offsets the index last saw, so the index learns
  what was published; those videos then keep their published SIDs.
A video that already has a SID under this version is never re-published, so a replay of
the uploads topic changes nothing and duplicates nothing. The consumer group and the
transactional id carry the tokenizer version: a reindexed service reads every upload
again, and a zombie of the same version is fenced.

The Kafka side (consumer, transactional producer) is `streams.kafka.transactional`:
librdkafka (confluent-kafka) by default, kafka-python as a fallback (`kafka_client`).
With librdkafka a batch's Kafka transaction runs in a worker thread while the next batch
is polled (its commit is ~75 ms of broker round trips); the next batch touches the index
only after that commit and the index commit that follows it, so the order above holds.

The service never stops on a bad record: decode errors, records with no value
(tombstones), wrong or missing modalities, NaN/inf and a full disambiguation space all
become dead letters. SIGTERM finishes the
batch in hand, commits it and exits 0; `/metrics`, the progress line and idle-exit are
the runtime's.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from monitoring.metrics import Metrics
from plum.batch_cycle import BatchCycle, CycleConfig, Output, Processed, Record, TransactionalIO
from plum.config import DEFAULT_KAFKA_BOOTSTRAP
from plum.runtime import Progress, Runtime, RuntimeConfig
from streams.contracts import schema
from streams.contracts.sid import disambiguation_size_field
from streams.contracts.topics import TopicNames
from streams.kafka.reader import TopicReader
from streams.kafka.transactional import KAFKA_CLIENTS, TransactionalProducer, open_io
from tokenizer.index import SidIndex, SidSpaceExhausted, topic_key

log = logging.getLogger(__name__)


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
    metrics_port: int = 9103  # 0: a free port (the runtime logs which)
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
    """Uploads -> SIDs as a `BatchProcessor` (see the module docstring)."""

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
        self.transactional_id = f"{config.transactional_id}-{self.version}"
        self.totals = BatchStats()
        # perf_counter() when the first batch reached the service and when the last
        # batch's index commit (after its Kafka commit) finished: the busy span.
        self.first_batch_at: float | None = None
        self.last_committed_at: float | None = None
        self._index_size = 0  # kept up to date rather than COUNT(*)-ed on every batch
        self.metrics.gauge("plum_sid_version_info").labels(version=self.version).set(1)

    # ------------------------------------------------------------------ BatchProcessor

    def start(self) -> None:
        self.sync_index()
        self._index_size = self.index.size(self.version)
        self.metrics.gauge("plum_sid_index_size").labels(version=self.version).set(self._index_size)
        self.warm_up()
        # Everything alive now (JAX, the model) lives as long as the service: move it out
        # of the collector's view, so the gen-2 collections that a batch of thousands of
        # decoded uploads triggers do not re-scan it every time.
        gc.freeze()
        log.info("SID service %s on %s", self.version, self.config.kafka_client)

    def open_io(self) -> TransactionalIO:
        """The consumer (this version's group) and transactional producer of the cycle."""
        return open_io(
            self.config.kafka_client,
            self.config.bootstrap,
            self.source_topics,
            group_id=self.group_id,
            transactional_id=self.transactional_id,
            max_poll_records=self.config.batch_size,
        )

    @property
    def cycle_config(self) -> CycleConfig:
        # Overlapped commits need a thread-safe IO: BatchCycle uses them with librdkafka only.
        return CycleConfig(
            batch_size=self.config.batch_size,
            batch_time_ms=self.config.batch_time_ms,
            poll_timeout_ms=self.config.poll_timeout_ms,
            overlap_commit=True,
        )

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

    def process(self, records: Sequence[Record]) -> Processed:
        """Validate, assign in an open index transaction; what the cycle must publish.

        The index transaction stays open until the cycle's Kafka transaction ends:
        `on_committed` commits it, `on_aborted` rolls it back.
        """
        started = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = started
        now_ms = int(time.time() * 1000)
        stats = BatchStats(consumed=len(records))
        limits = schema.ValidationLimits(
            now_ms=now_ms, max_future_ms=self.config.max_future_ms, embedding_dims=self.dims
        )
        uploads: dict[str, tuple[schema.UploadEvent, Record]] = {}
        letters: list[schema.DeadLetter] = []
        decode = schema.decode_upload
        for rec in records:
            # A record with no value (a tombstone) is read as empty bytes, as the Flink
            # job reads it: not_json, a dead letter like any other bad upload.
            raw = rec.value if rec.value is not None else b""
            try:
                event = decode(raw, limits)
            except schema.ValidationError as err:
                letters.append(
                    schema.DeadLetter.of(rec.topic, rec.partition, rec.offset, err, raw, now_ms)
                )
                continue
            uploads[event.video_id] = (event, rec)  # the last upload of a video in a batch wins
        outputs: list[Output] = []
        latencies: list[float] = []
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
        deadletter = self.topics.deadletter
        outputs.extend((deadletter, None, schema.encode(letter)) for letter in letters)

        def committed() -> None:
            self.index.commit()
            self._index_size += stats.assigned
            for letter in letters:
                stats.dead_letters[letter.reason] += 1
            self.last_committed_at = time.perf_counter()
            self._account(stats, latencies, self.last_committed_at - started)

        return Processed(outputs, on_committed=committed, on_aborted=self.index.rollback)

    def describe(self) -> str:
        t = self.totals
        return (
            f"{t.assigned} assigned, {t.collisions} collisions,"
            f" {sum(t.dead_letters.values())} dead letters, index {self._index_size}"
        )

    def close(self) -> None:
        """Nothing to release: the cycle owns the Kafka clients, the caller the index."""

    def _assign(
        self, fresh: list[str], uploads: dict, letters: list, stats: BatchStats, now_ms: int
    ) -> tuple[list[Output], list[float]]:
        """Encode the new videos, give each a SID in the index; the records to publish."""
        inputs = {
            name: np.asarray([uploads[v][0].embeddings[name] for v in fresh], np.float32)
            for name in self.dims
        }  # {modality: [len(fresh), dim]}
        codes = np.asarray(self.tokenizer.encode(inputs)).tolist()  # [len(fresh), L]
        results = self.index.assign_many(self.version, zip(fresh, codes, strict=True), now_ms)
        outputs: list[Output] = []
        latencies: list[float] = []
        kept: list[int] = []  # rows of `fresh` that got a SID
        wall_ms = time.time() * 1000
        version, topic = self.version, self.topics.sid_assignments
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
            upload_ts = rec.timestamp if rec.timestamp is not None and rec.timestamp > 0 else 0
            value = encode(
                assignment_cls(
                    video_id=vid,
                    sid=result.sid,
                    sid_version=version,
                    ts=now_ms,
                    upload_ts=upload_ts,
                )
            )
            outputs.append((topic, topic_key(version, vid), value))
            if upload_ts:
                latencies.append(max(0.0, (wall_ms - upload_ts) / 1000))
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


def service_runtime(
    service: SidService,
    idle_exit_s: float = 0.0,
    stop: threading.Event | None = None,
) -> Runtime:
    """The SID service as it is served: `Runtime(BatchCycle(service))`.

    `plum tokenizer serve` and `plum bench sid-service` both run this, so the benchmark
    measures the production path (overlapped commits included). `idle_exit_s` 0 runs
    until stopped (SIGTERM/SIGINT or `stop`).
    """
    cycle = BatchCycle(service, open_io=service.open_io, config=service.cycle_config)
    return Runtime(
        cycle,
        RuntimeConfig(
            name=f"sid-service {service.version}",
            unit="uploads",
            metrics_port=service.config.metrics_port,
            progress_every_s=service.config.progress_every_s,
            idle_exit_s=idle_exit_s,
        ),
        registry=service.metrics.registry,
        stop=stop,
    )


def sync_index_from_topic(
    index: SidIndex, bootstrap: str, topic: str, timeout_s: float = 60.0
) -> int:
    """Read `topic` from the offsets `index` last saw to its end (read_committed) into it.

    With an empty or missing index file this is the full rebuild from the compacted topic.
    """
    count = 0
    with TopicReader(bootstrap, topic, index.topic_offsets(topic), timeout_s) as reader:
        with index.transaction():
            for batch in reader:
                for rec in batch:
                    if rec.value is None:
                        continue  # tombstone
                    a = schema.decode_sid_assignment(rec.value)
                    index.record(a.sid_version, a.video_id, a.sid, a.ts)
                    count += 1
            index.set_topic_offsets(topic, reader.positions)
    if count:
        log.info("synced %d SID assignments from %s into %s", count, topic, index.path)
    return count


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
    pending = [
        (vid, ts, emb) for vid, ts, emb in index.items() if index.lookup(version, vid) is None
    ]
    progress = Progress(f"reindex {version}", unit="videos", total=len(pending), logger=log)
    producer = TransactionalProducer(
        bootstrap, f"plum-sid-reindex-{version}", client_id="plum-sid-reindex"
    )
    total = 0
    try:
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            progress.add(len(part))
            part = [(v, t, e) for v, t, e in part if set(e) == set(dims)]
            if part:
                codes = np.asarray(
                    tokenizer.encode({n: np.stack([e[n] for _, _, e in part]) for n in dims})
                )
                now_ms = int(time.time() * 1000)
                # The index commits only if the Kafka transaction did (it is the inner one).
                with index.transaction(), producer.transaction():
                    for (vid, _, _), row in zip(part, codes, strict=True):
                        a = index.assign(version, vid, row.tolist(), now_ms)
                        value = schema.encode(schema.SidAssignment(vid, a.sid, version, now_ms))
                        producer.send(topics.sid_assignments, topic_key(version, vid), value)
                total += len(part)
            progress.maybe_report()
    finally:
        producer.close()
    progress.report(final=True)
    return total
