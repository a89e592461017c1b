"""The PyFlink job: watches -> co-occurrence pairs, reward-sampled SFT examples, dead letters.

Graph (operator uids in brackets; they are stable so checkpoints and savepoints survive
changes to the job):

    Kafka source, SQL connector, JVM [src-watches]
      value as raw bytes + partition + offset metadata; event time = JSON `ts` extracted
      in the JVM (JSON_VALUE) only to drive watermarks: bounded out-of-orderness and
      idleness, generated per Kafka partition inside the source; the key (`user_id`)
      extracted in the JVM too
    -> keyBy user_id in the JVM -> validate + user timeline, Python [user-timeline]
      the shared schema (streams.contracts.schema.decode_watch) so every component rejects the same
      records for the same reasons; per-user state with TTL: lateness, event-time
      ordering, sessions, history, pairs, reward + deterministic sampling
      (streams.flink.timeline, streams.flink.reward). One output stream of tuples
      (kind, user, value, video, others, ts), split again in SQL:
         |-- kind EXAMPLE: SFT example JSON -----------------> Kafka sink, EXACTLY_ONCE
         |-- kind DEAD: dead letters (schema, `late`) -------> Kafka sink, EXACTLY_ONCE
         `-- kind EXAMPLE/RELEASED: released watch + the videos it pairs with
              -> UNNEST to (LEAST, GREATEST, rt) pairs, SQL window TVF (TUMBLE or HOP on
                 rt), COUNT(*) GROUP BY a, b, window, HAVING COUNT(*) >= min_count,
                 JVM ------------------------------------------> Kafka sink, EXACTLY_ONCE

Why this shape (measured with bench/flink.py and py-spy on the job's JVM, 2 cores):
the Python operator's thread is the bottleneck, so everything that needs no Python runs
in the JVM: Kafka I/O, the `ts` and `user_id` extraction, keying, pair expansion, window
assignment, counting, the min_count filter and the JSON encoding of pairs. Validation
must be the shared Python schema (one definition of "valid" for the whole system) and the
per-user logic (ordering, sessions, history, blake2b sampling) is not expressible in SQL
without a Java UDF, so those stay in Python, in ONE operator: PyFlink's `key_by` would
add a second Python operator (its key selector) and a separate validation operator a
third, each with its own per-record conversions; they would also contend for the one
GIL the embedded interpreter has. Side outputs are avoided: in thread mode a side-output
record is pushed through its downstream JVM operators inside the Python call, holding the
GIL (38% of the Python thread's time when pairs and dead letters were side outputs);
main-output tuples return to the JVM between calls. State is split so a record's cost
does not grow with the watches its user has buffered (see UserTimeline). Python runs in
`thread` mode (PEMJA, in the JVM; no gRPC hop): process mode measured several times
slower (335 events/s when first measured; `plum bench flink --modes thread,process`).

Exactly-once: checkpoints (EXACTLY_ONCE mode, retained on cancellation, local file
system here, any Flink file system at scale), Kafka sinks with
`sink.delivery-guarantee = exactly-once` and one transactional-id prefix per output
topic; downstream consumers read `read_committed`. Output becomes visible when the
checkpoint that covers it completes, so end-to-end latency >= checkpoint interval.

Lateness and ordering semantics are in streams.flink.timeline; in short: lateness is
decided per user against that user's newest event time (deterministic, independent of
partition interleaving), and released watches are processed in (ts, event_id) order
when the watermark passes them. Pair timestamps are therefore never behind the
watermark seen by the window operator, so no pair is ever dropped there.

Running on a cluster: the same module runs with
`flink run -py streams/flink/cli.py -pyfs streams,plum,monitoring --jarfile <kafka connector jar> run ...`
(or the Flink Kubernetes Operator with a PyFlink image); the checkpoint dir then points
at a shared file system (s3://, hdfs://) and parallelism at the number of slots.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from plum.config import DEFAULT_KAFKA_BOOTSTRAP, load_section, state_dir
from streams.contracts import schema
from streams.contracts.topics import TopicNames
from streams.flink.reward import RewardWeights
from streams.flink.timeline import CONTEXT, EVENT_ID, TS, VIDEO_ID, TimelineParams, watch_tuple

log = logging.getLogger(__name__)

COMPONENT = "flink"
# The job watermark ignores `ts` values further in the future than this when driving
# event time (they are dead-lettered as future_timestamp by validation anyway); without
# it, one bogus far-future record would move every partition's watermark past all data.
WATERMARK_FUTURE_GUARD_MS = schema.DEFAULT_MAX_FUTURE_MS


@dataclass(frozen=True)
class FlinkConfig:
    """`[flink]` of the config TOML; env overrides PLUM_FLINK__FIELD."""

    bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP  # filled from [kafka] by the loader
    topic_prefix: str = ""
    group_id: str = "plum-flink"
    starting_offsets: str = "earliest"  # earliest | latest | committed (first start only)
    job_name: str = "plum-flink"
    parallelism: int = 1
    # Python execution: "thread" (PEMJA, in the JVM) or "process" (separate workers, gRPC).
    python_execution_mode: str = "thread"
    bundle_size: int = 1000
    bundle_time_ms: int = 100
    # Checkpointing and exactly-once output.
    checkpoint_interval_ms: int = 10_000
    checkpoint_dir: Path | None = None  # None: $PLUM_STATE_DIR/flink/checkpoints
    transactional_id_prefix: str = "plum-flink"
    transaction_timeout_ms: int = 15 * 60_000  # must stay under the broker's 1 h ceiling
    restart_attempts: int = 3
    # Event time.
    out_of_orderness_ms: int = 60_000
    idleness_ms: int = 30_000
    # How often sources emit watermarks. Output becomes visible only at checkpoints, so
    # anything well under checkpoint_interval_ms adds no visible latency; a longer interval
    # releases watches in fewer, larger timer calls, yet measured no faster than 200 ms.
    watermark_interval_ms: int = 200
    allowed_lateness_ms: int = 60_000
    # Per-user state.
    state_ttl_ms: int = 7 * 24 * 3_600_000
    session_gap_ms: int = 30 * 60_000
    history_len: int = 20
    pair_prev_k: int = 3
    # Co-occurrence windows (event time). window: tumbling | sliding.
    window: str = "tumbling"
    window_size_ms: int = 3_600_000
    window_slide_ms: int = 600_000
    min_count: int = 2
    # Reward (streams.flink.reward) and sampling.
    w_click: float = 1.0
    w_ratio: float = 1.0
    w_satisfaction: float = 0.5
    ratio_cap: float = 1.0
    satisfaction_default: float = 0.5
    sample_salt: str = ""
    # Prometheus /metrics from the Python workers; 0 = off.
    metrics_port: int = 0
    # Flink's REST endpoint (local mode: the MiniCluster's, on 127.0.0.1); 0 = a free port
    # picked at start; -1 = leave Flink's REST settings alone (a cluster submission: the
    # client must reach the cluster's JobManager), no job metrics then.
    # `plum flink run` polls it for the job's state and checkpoints.
    rest_port: int = 0
    # /metrics of that poll (streams/flink/job_metrics.py) from the driver: -1 = none,
    # 0 = a free port; polled every job_metrics_interval_s.
    job_metrics_port: int = -1
    job_metrics_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if self.python_execution_mode not in ("thread", "process"):
            raise ValueError(
                f"python_execution_mode must be thread or process, got {self.python_execution_mode!r}"
            )
        if self.window not in ("tumbling", "sliding"):
            raise ValueError(f"window must be tumbling or sliding, got {self.window!r}")
        if self.starting_offsets not in ("earliest", "latest", "committed"):
            raise ValueError(
                f"starting_offsets must be earliest|latest|committed, got {self.starting_offsets!r}"
            )
        for name in ("window_size_ms", "window_slide_ms"):
            value = getattr(self, name)
            # Window ends leave the JVM as epoch seconds * 1000, so windows are whole seconds.
            if value <= 0 or value % 1000:
                raise ValueError(f"{name} must be a positive multiple of 1000 ms, got {value}")
        if self.window == "sliding" and self.window_size_ms % self.window_slide_ms:
            raise ValueError("window_size_ms must be a multiple of window_slide_ms")
        if self.min_count < 1 or self.parallelism < 1 or self.checkpoint_interval_ms <= 0:
            raise ValueError("min_count, parallelism and checkpoint_interval_ms must be positive")
        if self.out_of_orderness_ms < 0 or self.idleness_ms < 0:
            raise ValueError("out_of_orderness_ms and idleness_ms must be >= 0")
        if not -1 <= self.rest_port <= 65535:
            raise ValueError(
                f"rest_port must be -1, 0 (a free port) .. 65535, got {self.rest_port}"
            )
        if self.rest_port < 0 and self.job_metrics_port >= 0:
            raise ValueError("job_metrics_port needs Flink's REST endpoint: rest_port >= 0")
        if self.job_metrics_port < -1 or self.job_metrics_interval_s <= 0:
            raise ValueError(
                "job_metrics_port must be >= -1 and job_metrics_interval_s positive, got "
                f"{self.job_metrics_port} and {self.job_metrics_interval_s}"
            )
        if self.watermark_interval_ms <= 0:
            raise ValueError(
                f"watermark_interval_ms must be positive, got {self.watermark_interval_ms}"
            )
        self.timeline_params()  # validates the rest

    def weights(self) -> RewardWeights:
        return RewardWeights(
            click=self.w_click,
            ratio=self.w_ratio,
            satisfaction=self.w_satisfaction,
            ratio_cap=self.ratio_cap,
            satisfaction_default=self.satisfaction_default,
        )

    def timeline_params(self) -> TimelineParams:
        return TimelineParams(
            allowed_lateness_ms=self.allowed_lateness_ms,
            session_gap_ms=self.session_gap_ms,
            history_len=self.history_len,
            pair_prev_k=self.pair_prev_k,
            weights=self.weights(),
            sample_salt=self.sample_salt,
        )

    def resolved_checkpoint_dir(self) -> Path:
        return (
            Path(self.checkpoint_dir)
            if self.checkpoint_dir
            else state_dir() / "flink" / "checkpoints"
        )


def load_flink_config(path: Path | str | None = None, **overrides) -> FlinkConfig:
    return load_section(FlinkConfig, path, "flink", **overrides)


@dataclass(frozen=True)
class RunOptions:
    """What one run reads and writes (the CLI fills it from flags)."""

    backfill: bool = False
    from_ms: int | None = None  # backfill: event time range [from_ms, to_ms)
    to_ms: int | None = None
    output_suffix: str = ""
    restore_path: str | None = None  # a retained checkpoint (or savepoint) to resume from
    topics: TopicNames = field(default_factory=TopicNames)

    @property
    def source_topic(self) -> str:
        return self.topics.watches_replay if self.backfill else self.topics.watches

    def out(self, name: str) -> str:
        return f"{name}{self.output_suffix}"


# ------------------------------------------------------------------ Python operators
# These classes run inside the Flink Python workers; they import what they need lazily
# so pickling the job graph stays cheap.


class _WorkerMetrics:
    """Process-wide prometheus metrics of the Python workers (one /metrics per worker)."""

    metrics = None
    server = None

    @classmethod
    def get(cls, port: int):
        if cls.metrics is None:
            from monitoring.metrics import Metrics, serve_metrics

            cls.metrics = Metrics.for_component(COMPONENT)
            if port:
                try:
                    cls.server = serve_metrics(cls.metrics, port, host="127.0.0.1")
                except OSError as exc:  # a second worker on one host: the first one serves
                    log.warning("flink metrics port %s busy: %s", port, exc)
        return cls.metrics


# The user-timeline operator has one output (side outputs would cost more, see the module
# docstring); SQL splits it again. A row is a tuple (kind, key, value, video, others, ts):
#   EXAMPLE:  a released, sampled watch: key = user, value = its SFT example JSON,
#             video + others = the videos it pairs with (others may be empty),
#             ts = its event time
#   RELEASED: a released watch with pairs but no example: value = b""
#   DEAD:     a dead letter: value = the DeadLetter JSON, the rest "" / empty / 0
# No field is ever None: Flink tuples cannot hold nulls (and PyFlink's thread-mode array
# converter cannot pass a None array).
EXAMPLE, DEAD, RELEASED = 0, 1, 2
# The tuple's fields are f0..f5 in SQL.
OUT_SQL_TYPES = ("INT", "STRING", "BYTES", "STRING", "ARRAY<STRING>", "BIGINT")


def OUT_TYPE():
    from pyflink.common import Types

    return Types.TUPLE(
        [
            Types.INT(),
            Types.STRING(),
            Types.PRIMITIVE_ARRAY(Types.BYTE()),
            Types.STRING(),
            Types.BASIC_ARRAY(Types.STRING()),
            Types.LONG(),
        ]
    )


def validate_keyed_watch(key: str, raw: bytes, now_ms: int) -> tuple:
    """The accepted-watch tuple (streams.flink.timeline) of a record the JVM keyed by `key`.

    Raises schema.ValidationError: the shared schema's reasons, or `ambiguous_user_id`
    when the JVM's JSON reading of `user_id` (the key) is not the schema's, so one user's
    state never receives another user's watch.
    """
    w = schema.decode_watch(raw, schema.ValidationLimits(now_ms=now_ms))
    if w.user_id != key:
        raise schema.ValidationError(
            schema.AMBIGUOUS_USER_ID,
            f"user_id {w.user_id!r} was read as {key!r} when the record was keyed",
        )
    return watch_tuple(w)


def _dead_letter_row(topic, partition, offset, err, raw) -> tuple:
    dl = schema.DeadLetter.of(topic, partition, offset, err, bytes(raw), int(time.time() * 1000))
    return (DEAD, "", schema.encode(dl), "", (), 0)


def _make_timeline_fn(
    params: TimelineParams, ttl_ms: int, source_topic: str, sft_topic: str, metrics_port: int
):
    from pyflink.common import Time, Types
    from pyflink.datastream import KeyedProcessFunction
    from pyflink.datastream.state import (
        ListStateDescriptor,
        StateTtlConfig,
        ValueStateDescriptor,
    )

    from streams.flink import timeline as ut

    class UserTimeline(KeyedProcessFunction):
        """Validation, then the per-user timeline (streams.flink.timeline), in one operator.

        Input: (user key, raw, partition, offset), keyed in the JVM by the `user_id` that
        SQL read from the JSON (validation then checks it is the same user). Validation
        is the shared schema (streams.contracts.schema.decode_watch), so every component rejects the
        same records for the same reasons.

        State (streams.flink.timeline): `head`, a few numbers read and written per record;
        `pending`, a ListState a record only appends to; `history`, the last `keep_len`
        released watches, read and written only when something is released. So a
        record's cost does not grow with how much its user has buffered (a backfill, where
        the watermark trails the data by minutes, buffers dozens of watches per user). The
        `timeline` state of earlier versions is converted on a user's first record.

        Timers: one event-time timer per user at the earliest pending ts (re-registered
        after each release) instead of one per watch; a firing releases everything up to
        the current watermark. When the watermark passes several pending watches of a user
        they are released in one call, in the same (ts, event_id) order, before any further
        record is processed, i.e. exactly what one timer per watch released.
        """

        def open(self, runtime_context):
            descriptors = {
                "head": ValueStateDescriptor("head", Types.PICKLED_BYTE_ARRAY()),
                "pending": ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()),
                "history": ValueStateDescriptor("history", Types.PICKLED_BYTE_ARRAY()),
                "legacy": ValueStateDescriptor("timeline", Types.PICKLED_BYTE_ARRAY()),
            }
            if ttl_ms > 0:
                ttl = (
                    StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
                    .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
                    .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                    .build()
                )
                for d in descriptors.values():
                    d.enable_time_to_live(ttl)
            self.head_state = runtime_context.get_state(descriptors["head"])
            self.pending_state = runtime_context.get_list_state(descriptors["pending"])
            self.hist_state = runtime_context.get_state(descriptors["history"])
            self.legacy_state = runtime_context.get_state(descriptors["legacy"])
            self.r_max = params.weights.max_reward()
            m = _WorkerMetrics.get(metrics_port)
            self.m_in = m.counter("plum_flink_records_in_total").labels(topic=source_topic)
            self.m_dl = m.counter("plum_deadletter_total")
            self.m_accepted = m.counter("plum_flink_records_accepted_total").labels(
                topic=source_topic
            )
            self.m_late = m.counter("plum_deadletter_total").labels(
                component=COMPONENT, source_topic=source_topic, reason=schema.LATE
            )
            self.m_out = m.counter("plum_flink_records_out_total").labels(topic=sft_topic)
            self.m_sampled = m.counter("plum_flink_examples_sampled_total")
            self.m_pairs = m.counter("plum_flink_pairs_total")
            self.m_users = m.counter("plum_flink_state_users_created_total")
            self.m_pending = m.gauge("plum_flink_pending_watches")
            self.m_lag = m.gauge("plum_flink_watermark_lag_ms")
            self.lag_at = None  # event time of the last watermark-lag sample

        def _new_user_head(self):
            """A user's first record here: an earlier version's state, or a new user."""
            legacy = self.legacy_state.value()
            if legacy is None:
                self.m_users.inc()
                return ut.new_head()
            head, pending, history = ut.from_legacy(legacy, self.hist_state.value())
            self.pending_state.update(pending)
            self.hist_state.update(history)
            self.legacy_state.clear()
            return head

        def process_element(self, value, ctx):
            key, raw, partition, offset = value
            self.m_in.inc()
            try:
                ev = validate_keyed_watch(key, raw, int(time.time() * 1000))
            except schema.ValidationError as err:
                self.m_dl.labels(
                    component=COMPONENT, source_topic=source_topic, reason=err.reason
                ).inc()
                yield _dead_letter_row(source_topic, partition, offset, err, raw)
                return
            head = self.head_state.value()
            if head is None:
                head = self._new_user_head()
            if not ut.accept(head, ev, params.allowed_lateness_ms):
                err = schema.ValidationError(
                    schema.LATE,
                    f"ts={ev[ut.TS]} of user {key!r} is late: newest accepted ts {head[ut.MAX_TS]}, "
                    f"allowed lateness {params.allowed_lateness_ms} ms, released up to {head[ut.RELEASED_MAX]}",
                )
                self.m_late.inc()
                yield _dead_letter_row(source_topic, partition, offset, err, raw)
                return
            self.m_accepted.inc()
            self.m_pending.inc()
            self.pending_state.add(ev)
            self.head_state.update(head)
            ts = ev[ut.TS]
            if head[ut.MIN_PENDING] == ts:  # a new earliest pending ts: its timer
                ctx.timer_service().register_event_time_timer(ts)
            if self.lag_at is None or ts > self.lag_at + 1000:  # sampled: one JVM call
                self.lag_at = ts
                wm = ctx.timer_service().current_watermark()
                if wm is not None and wm > -(2**62):
                    self.m_lag.set(ts - wm)

        def on_timer(self, timestamp, ctx):
            head = self.head_state.value()
            if head is None or head[ut.MIN_PENDING] is None:  # expired by TTL / nothing left
                return
            upto = timestamp
            wm = ctx.timer_service().current_watermark()
            if wm is not None and wm > upto:
                upto = wm
            if head[ut.MIN_PENDING] > upto:  # a stale timer (its watches were released earlier)
                return
            pending = list(self.pending_state.get())
            history = self.hist_state.value() or []
            released, rest = ut.release_ready(head, pending, history, upto, params, self.r_max)
            if rest:
                self.pending_state.update(rest)
            else:
                self.pending_state.clear()
            self.hist_state.update(history)
            self.head_state.update(head)
            self.m_pending.dec(len(released))
            if head[ut.MIN_PENDING] is not None:
                ctx.timer_service().register_event_time_timer(head[ut.MIN_PENDING])
            user_id = ctx.get_current_key()
            n_pairs = n_examples = 0
            for ev, others, example in released:
                if example is not None:
                    text = _encode_example(ev, user_id, example[0], example[1])
                    n_examples += 1
                    yield (EXAMPLE, user_id, text, ev[VIDEO_ID], others, ev[TS])
                elif others:
                    yield (RELEASED, user_id, b"", ev[VIDEO_ID], others, ev[TS])
                n_pairs += len(others)
            self.m_pairs.inc(n_pairs)
            self.m_sampled.inc(n_examples)
            self.m_out.inc(n_examples)

    return UserTimeline()


def _encode_example(ev, user_id, r, hist) -> bytes:
    """The JSON of `SftExample(...)` without the dataclass round trip, with orjson.

    The same fields, keys in the same order and the same values as `schema.encode`; the
    text may differ where JSON allows (UTF-8 instead of \\u escapes, 1e-7 for 1e-07).
    tests/unit/test_user_timeline.py checks that it decodes to the same example. Every
    number here is finite (validated inputs), so orjson's NaN-as-null never applies.
    """
    return orjson.dumps(
        {
            "event_id": ev[EVENT_ID],
            "user_id": user_id,
            "history": [
                {"video_id": h[0], "watch_ratio": h[1], "watch_time_s": h[2], "hours_since": h[3]}
                for h in hist
            ],
            "context_video_id": ev[CONTEXT],
            "target_video_id": ev[VIDEO_ID],
            "reward": r,
            "ts": ev[TS],
            "schema": schema.SCHEMA_VERSION,
        }
    )


# ------------------------------------------------------------------ graph


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def sql_interval(ms: int) -> str:
    """A Flink SQL interval literal for ``ms`` milliseconds.

    ``INTERVAL 'n' SECOND`` has a leading precision of 2 digits in Flink SQL, so an hour
    (3600 s) fails to parse; DAY TO SECOND(3) takes any non-negative duration.
    """
    if ms < 0:
        raise ValueError(f"interval must be >= 0 ms, got {ms}")
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return (
        f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}' DAY TO SECOND(3)"
    )


def _with(options: dict[str, str]) -> str:
    return ",\n  ".join(f"{_sql_str(k)} = {_sql_str(v)}" for k, v in options.items())


def export_python_path() -> None:
    """Let thread-mode Python (PEMJA, embedded in the JVM) import the venv and this repo.

    The embedded interpreter starts from the base Python's default sys.path, not the
    venv's, so without this it cannot even import `pemja`. The JVM that local mode starts
    inherits this process's environment, hence PYTHONPATH.
    """
    import os
    import sysconfig

    from plum.config import REPO_ROOT

    wanted = [str(REPO_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    have = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(wanted + have))


def keyed_by_first_field(stream, value_type):
    """`stream` of Row(key STRING, value) keyed in the JVM by the key, as PyFlink's `key_by`
    keys a stream after running its Python key selector (same key type, and the keyed
    Python operator sees the same (key, value) input), without that extra Python operator
    per record. `value_type` is the value's type (PyFlink keeps it for reduce/filter)."""
    from pyflink.common import Types
    from pyflink.datastream import KeyedStream
    from pyflink.java_gateway import get_gateway

    j_keyed = stream._j_data_stream.keyBy(
        get_gateway().jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info()
    )
    return KeyedStream(j_keyed, value_type, stream)


def source_group(cfg: FlinkConfig, run: RunOptions) -> str:
    """The consumer group the Kafka source commits its positions to at checkpoints."""
    return cfg.group_id + ("-backfill" if run.backfill else "")


def flink_configuration(cfg: FlinkConfig, run: RunOptions, checkpoint_dir: Path):
    """The Flink Configuration of one run (local mini-cluster or client)."""
    from pyflink.common import Configuration

    from plum.jvm import flink_kafka_connector_jar

    c = Configuration()
    c.set_string("pipeline.jars", flink_kafka_connector_jar().as_uri())
    c.set_string("pipeline.name", cfg.job_name + ("-backfill" if run.backfill else ""))
    c.set_string("parallelism.default", str(cfg.parallelism))
    c.set_string("execution.runtime-mode", "STREAMING")
    c.set_string("execution.checkpointing.interval", f"{cfg.checkpoint_interval_ms} ms")
    c.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
    c.set_string("execution.checkpointing.dir", checkpoint_dir.resolve().as_uri())
    c.set_string(
        "execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"
    )
    c.set_string("execution.checkpointing.num-retained", "3")
    c.set_string("execution.checkpointing.min-pause", f"{min(cfg.checkpoint_interval_ms, 500)} ms")
    c.set_string("pipeline.auto-watermark-interval", f"{cfg.watermark_interval_ms} ms")
    c.set_string("state.backend.type", "hashmap")
    c.set_string("pipeline.object-reuse", "true")
    c.set_string("restart-strategy.type", "fixed-delay")
    c.set_string("restart-strategy.fixed-delay.attempts", str(cfg.restart_attempts))
    c.set_string("restart-strategy.fixed-delay.delay", "1 s")
    c.set_string("python.execution-mode", cfg.python_execution_mode)
    c.set_string("python.fn-execution.bundle.size", str(cfg.bundle_size))
    c.set_string("python.fn-execution.bundle.time", str(cfg.bundle_time_ms))
    c.set_string("python.executable", sys.executable)
    c.set_string("python.client.executable", sys.executable)
    c.set_string("table.local-time-zone", "UTC")
    if cfg.rest_port > 0:  # 0: Flink's own (run_job picks a free port first); -1: untouched
        c.set_string("rest.bind-address", "127.0.0.1")
        c.set_string("rest.address", "127.0.0.1")
        c.set_string("rest.bind-port", str(cfg.rest_port))
        c.set_string("rest.port", str(cfg.rest_port))
    if run.restore_path:
        c.set_string("execution.state-recovery.path", run.restore_path)
    return c


def build(cfg: FlinkConfig, run: RunOptions, checkpoint_dir: Path):
    """Build the job graph; returns (env, statement_set). `statement_set.execute()` runs it."""
    from pyflink.common import Types
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import Schema, StreamTableEnvironment

    export_python_path()
    env = StreamExecutionEnvironment.get_execution_environment(
        flink_configuration(cfg, run, checkpoint_dir)
    )
    env.set_parallelism(cfg.parallelism)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    t_env.get_config().set("table.exec.source.idle-timeout", f"{cfg.idleness_ms} ms")

    topics = run.topics
    src_topic = run.source_topic
    sft_topic, dl_topic, cooc_topic = (
        run.out(topics.sft_examples),
        run.out(topics.deadletter),
        run.out(topics.cooccurrence),
    )

    # ---- source (JVM): raw bytes + metadata; `ts` only for the watermark.
    ts_expr = "TRY_CAST(JSON_VALUE(CAST(`raw` AS STRING), '$.ts') AS BIGINT)"
    guard = f"(UNIX_TIMESTAMP() * 1000 + {WATERMARK_FUTURE_GUARD_MS})"
    src_opts = {
        "connector": "kafka",
        "topic": src_topic,
        "properties.bootstrap.servers": cfg.bootstrap,
        "properties.group.id": source_group(cfg, run),
        "properties.isolation.level": "read_committed",
        "format": "raw",
        "scan.startup.mode": "earliest-offset"
        if run.backfill
        else {
            "earliest": "earliest-offset",
            "latest": "latest-offset",
            "committed": "group-offsets",
        }[cfg.starting_offsets],
        "scan.watermark.idle-timeout": f"{cfg.idleness_ms} ms",
    }
    if cfg.starting_offsets == "committed" and not run.backfill:
        src_opts["properties.auto.offset.reset"] = "earliest"
    if run.backfill:
        src_opts["scan.bounded.mode"] = "latest-offset"
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE watches_src (
          `raw` BYTES,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          `ts_raw` AS {ts_expr},
          `rt` AS TO_TIMESTAMP_LTZ(CASE WHEN {ts_expr} BETWEEN 0 AND {guard} THEN {ts_expr} ELSE 0 END, 3),
          WATERMARK FOR `rt` AS `rt` - {sql_interval(cfg.out_of_orderness_ms)}
        ) WITH (
          {_with(src_opts)}
        )""")
    where = ""
    if run.backfill:
        # A backfill re-runs the records whose event time is in [from, to); records with
        # no readable ts were dead-lettered by the live run and are not re-sent.
        where = f"WHERE ts_raw >= {int(run.from_ms)} AND ts_raw < {int(run.to_ms)}"
    # The key (user_id) is read in the JVM so the keyBy needs no Python operator; records
    # without a readable user_id share the key '' and are dead-lettered by validation, as
    # is a record with no value at all (read as empty bytes: tuples hold no nulls).
    user_key = "COALESCE(JSON_VALUE(CAST(`raw` AS STRING), '$.user_id'), '')"
    keyed_table = t_env.sql_query(f"""
        SELECT {user_key} AS k,
               ROW({user_key}, COALESCE(`raw`, X''), `partition`, `offset`) AS v
        FROM watches_src {where}""")

    # ---- Python: validation + per-user timeline, one operator.
    value_type = Types.TUPLE(
        [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.INT(), Types.LONG()]
    )
    timeline = (
        keyed_by_first_field(
            t_env.to_append_stream(keyed_table, Types.ROW([Types.STRING(), value_type])),
            value_type,
        )
        .process(
            _make_timeline_fn(
                cfg.timeline_params(), cfg.state_ttl_ms, src_topic, sft_topic, cfg.metrics_port
            ),
            output_type=OUT_TYPE(),
        )
        .name("user-timeline")
        .uid("user-timeline")
    )

    # ---- sinks (JVM): one exactly-once Kafka sink per output topic.
    def kafka_sink(
        name: str, topic: str, columns: str, value_format: str, key_field: str = "k"
    ) -> None:
        opts = {
            "connector": "kafka",
            "topic": topic,
            "properties.bootstrap.servers": cfg.bootstrap,
            "key.format": "raw",
            "key.fields": key_field,
            "value.format": value_format,
            "value.fields-include": "EXCEPT_KEY",
            "sink.delivery-guarantee": "exactly-once",
            "sink.transactional-id-prefix": f"{cfg.transactional_id_prefix}-{topic}",
            "properties.transaction.timeout.ms": str(cfg.transaction_timeout_ms),
        }
        t_env.execute_sql(f"CREATE TEMPORARY TABLE {name} ({columns}) WITH ({_with(opts)})")

    kafka_sink("sft_sink", sft_topic, "`k` STRING, `v` BYTES", "raw")
    kafka_sink("dl_sink", dl_topic, "`k` STRING, `v` BYTES", "raw")
    kafka_sink(
        "cooc_sink",
        cooc_topic,
        "`k` STRING, `a` STRING, `b` STRING, `count` BIGINT, `window_end` BIGINT, `schema` INT",
        "json",
    )

    out_schema = Schema.new_builder()
    for i, sql_type in enumerate(OUT_SQL_TYPES):
        out_schema.column(f"f{i}", sql_type)
    t_env.create_temporary_view(
        "timeline_out",
        t_env.from_data_stream(
            timeline,
            out_schema.column_by_expression("rt", "TO_TIMESTAMP_LTZ(f5, 3)")
            .watermark("rt", "SOURCE_WATERMARK()")
            .build(),
        ),
    )
    # One row per pair: the released watch's video with each video it pairs with, in
    # canonical order (LEAST/GREATEST compare UTF-8 bytes, i.e. code points, as Python's
    # `<` on str does), keeping the watch's event time attribute for the window.
    t_env.create_temporary_view(
        "pairs",
        t_env.sql_query(f"""
            SELECT LEAST(f3, o) AS a, GREATEST(f3, o) AS b, rt
            FROM timeline_out CROSS JOIN UNNEST(f4) AS t (o)
            WHERE f0 IN ({EXAMPLE}, {RELEASED})"""),
    )
    if cfg.window == "tumbling":
        window = f"TUMBLE(TABLE pairs, DESCRIPTOR(rt), {sql_interval(cfg.window_size_ms)})"
    else:
        window = (
            f"HOP(TABLE pairs, DESCRIPTOR(rt), {sql_interval(cfg.window_slide_ms)}, "
            f"{sql_interval(cfg.window_size_ms)})"
        )

    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(
        f"INSERT INTO sft_sink SELECT f1, f2 FROM timeline_out WHERE f0 = {EXAMPLE}"
    )
    stmts.add_insert_sql(
        f"INSERT INTO dl_sink SELECT CAST(NULL AS STRING), f2 FROM timeline_out WHERE f0 = {DEAD}"
    )
    stmts.add_insert_sql(f"""
        INSERT INTO cooc_sink
        SELECT CONCAT(a, '|', b), a, b, COUNT(*),
               UNIX_TIMESTAMP(CAST(window_end AS STRING)) * 1000, {schema.SCHEMA_VERSION}
        FROM TABLE({window})
        GROUP BY a, b, window_start, window_end
        HAVING COUNT(*) >= {cfg.min_count}""")
    return env, t_env, stmts


# ------------------------------------------------------------------ checkpoints


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """Newest completed (has `_metadata`) retained checkpoint under `checkpoint_dir`."""
    if not checkpoint_dir.is_dir():
        return None
    done = [p.parent for p in checkpoint_dir.glob("*/chk-*/_metadata")]
    if not done:
        return None
    return max(done, key=lambda p: (p.stat().st_mtime, int(p.name.split("-")[1])))
