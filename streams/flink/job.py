"""The PyFlink job: watches -> co-occurrence pairs, reward-sampled SFT examples, dead letters.

Graph (operator uids in brackets; they are stable so checkpoints and savepoints survive
changes to the job). PyFlink defines and launches it; every record is handled in the JVM:

    Kafka source, SQL connector [src-watches]
      value as raw bytes + partition + offset metadata; event time = JSON `ts` extracted
      by a Java scalar function of the operator's jar (the reference's JSON rules) only to
      drive watermarks: bounded out-of-orderness and idleness, generated per Kafka
      partition inside the source; the key (`user_id`) read the same way
    -> PARTITION BY user key -> plum_timeline, a Java Process Table Function [user-timeline-jvm]
      (streams/flink/jvm, dev.plum.flink.UserTimelineFunction): validation of each record
      with the reason codes of the Python schema (streams.contracts.schema.decode_watch),
      then the per-user timeline of streams.flink.timeline: lateness, event-time ordering,
      sessions, history, pairs, reward + deterministic sampling (streams.flink.reward).
      ListView state (a record appends, only a release reads), one event-time timer per
      user. One output table (kind, v, a, b, window_end, shard), split again in SQL:
         |-- kind EXAMPLE: SFT example JSON -----------------> Kafka sink, EXACTLY_ONCE
         |-- kind DEAD: dead letters (schema, `late`) -------> Kafka sink, EXACTLY_ONCE
         `-- kind PAIR: one row per pair (a < b) and event-time window of the released
             watch's ts (window_ends in streams.flink.reference: tumbling or sliding)
              -> PARTITION BY (window_end, shard) -> plum_pair_counts, a second PTF of the
                 jar [pair-counts-jvm] (dev.plum.flink.PairCountFunction): a MapView of the
                 window's counts per key, one timer at the window's end; emits the pairs
                 counted >= min_count when the watermark passes it
                 ----------------------------------------------> Kafka sink, EXACTLY_ONCE

The Python code stays the reference definition of what is valid and what an example is
(streams.contracts.schema, streams.flink.timeline, streams.flink.reward; `_encode_example`
below is the example's JSON); the JVM operator is held to it record for record by the
shared conformance vectors in tests/vectors/flink (JUnit in streams/flink/jvm and pytest
read the same files). Issue 13 measured the previous Python operator (thread-mode PyFlink)
at 0.7x a plain kafka-python loop; it was removed rather than kept selectable.

Pair windows: the timeline operator assigns each pair its windows from the released watch's
`ts` (a row emitted from a timer carries the timer's time as its rowtime, so an SQL window
on that rowtime would count pairs in other windows than the reference). The pair counter
keeps one window's counts under (window end, shard) keys, PAIR_SHARDS of them per window,
so one timer per key and window replaces the window aggregate's timer per pair and window,
and a window's counting spreads over up to PAIR_SHARDS subtasks. The job is SQL and Java
only: no DataStream conversion, no Python at run time.

Exactly-once: checkpoints (EXACTLY_ONCE mode, retained on cancellation, local file
system here, any Flink file system at scale), Kafka sinks with
`sink.delivery-guarantee = exactly-once` and one transactional-id prefix per output
topic; downstream consumers read `read_committed`. Output becomes visible when the
checkpoint that covers it completes, so end-to-end latency >= checkpoint interval. A
marker file (OPERATOR_MARKER) in the checkpoint dir names the operator that wrote the
checkpoints; `plum flink run` refuses to restore one an earlier job version wrote (the
Python operator, or the JVM operator with an SQL window aggregate: other state layouts).

Lateness and ordering semantics are in streams.flink.timeline; in short: lateness is
decided per user against that user's newest event time (deterministic, independent of
partition interleaving), and released watches are processed in (ts, event_id) order
when the watermark passes them. A pair's window is therefore never behind the watermark
the pair counter has seen, so no pair is dropped there (one that were would be counted in
plum_flink_pairs_late_total, a Flink metric of the counter, not dropped silently).

Metrics: the PTF counts into Flink's metric groups (plum_flink_*, plum_deadletter_total
per reason); `plum flink run` reads them from Flink's REST API and serves them under the
catalogue's names (streams/flink/job_metrics.py).

Running on a cluster: `plum flink run --cluster HOST:PORT` ([flink] cluster_rest) submits
the same job to a Flink session cluster's REST endpoint (execution.target remote); the
job is SQL plus the Java operators, so the TaskManagers need no Python, only the two jars
the client ships with the job (pipeline.jars). `plum flink cluster` runs a standalone
session cluster on this machine (streams/flink/session_cluster.py); the integration test
runs the job there at parallelism 2 across two TaskManagers. The checkpoint dir must be
one every TaskManager sees (s3://, hdfs:// at scale); parallelism up to the cluster's
slots. On Kubernetes, the Flink Kubernetes Operator with an image holding both jars.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
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

# The JVM operator (streams/flink/jvm): its class, its uid (state), the global job
# parameter it reads its settings from, and its output kinds (UserTimelineFunction's).
PTF_CLASS = "dev.plum.flink.UserTimelineFunction"
PTF_UID = "user-timeline-jvm"
PARAMS_KEY = "plum.flink.timeline"
# Scalar functions of the same jar that read `ts` and `user_id` before the operator.
PROBE_FUNCTIONS = {
    "plum_watch_ts": "dev.plum.flink.WatchTs",
    "plum_watch_key": "dev.plum.flink.WatchKey",
}
EXAMPLE, DEAD, PAIR = 0, 1, 2  # UserTimelineFunction's output kinds
# The pair counter of the same jar: counts per (window end, shard), emits at the window's end.
PAIR_COUNT_CLASS = "dev.plum.flink.PairCountFunction"
PAIR_COUNT_UID = "pair-counts-jvm"
# Shards of one window's pair counts (PairWindows in the jar): up to this many subtasks
# count one window. Part of the state's layout: changing it needs a backfill.
PAIR_SHARDS = 128
# Which operator wrote a checkpoint dir's checkpoints (`plum flink run` writes it).
OPERATOR_MARKER = "OPERATOR"
OPERATOR = "jvm-ptf-2"


@dataclass(frozen=True)
class FlinkConfig:
    """`[flink]` of the config TOML; env overrides PLUM_FLINK__FIELD."""

    bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP  # filled from [kafka] by the loader
    topic_prefix: str = ""
    group_id: str = "plum-flink"
    starting_offsets: str = "earliest"  # earliest | latest | committed (first start only)
    job_name: str = "plum-flink"
    parallelism: int = 1
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
    # Prometheus /metrics of the operator's counters (component "flink": records in,
    # accepted, dead letters by reason, ...), read from Flink's REST API by `plum flink run`
    # and served by it on this port; 0 = off.
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
    # Options of the JVM local mode starts (the MiniCluster runs in it), e.g. the garbage
    # collector; "" = the JVM's defaults. Ignored for a cluster submission.
    jvm_options: str = ""
    # "" = run in a local MiniCluster; "HOST:PORT" = submit to the REST endpoint of a
    # Flink session cluster (streams/flink/session_cluster.py, `flink run`'s --jobmanager),
    # which then runs the job at `parallelism` across its TaskManagers; its REST endpoint
    # is then the one polled for the job's state (rest_port follows it).
    cluster_rest: str = ""

    def __post_init__(self) -> None:
        if self.window not in ("tumbling", "sliding"):
            raise ValueError(f"window must be tumbling or sliding, got {self.window!r}")
        if self.starting_offsets not in ("earliest", "latest", "committed"):
            raise ValueError(
                f"starting_offsets must be earliest|latest|committed, got {self.starting_offsets!r}"
            )
        for name in ("window_size_ms", "window_slide_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_count < 1 or self.parallelism < 1 or self.checkpoint_interval_ms <= 0:
            raise ValueError("min_count, parallelism and checkpoint_interval_ms must be positive")
        if self.out_of_orderness_ms < 0 or self.idleness_ms < 0:
            raise ValueError("out_of_orderness_ms and idleness_ms must be >= 0")
        if not -1 <= self.rest_port <= 65535:
            raise ValueError(
                f"rest_port must be -1, 0 (a free port) .. 65535, got {self.rest_port}"
            )
        if self.cluster_rest and not _is_host_port(self.cluster_rest):
            raise ValueError(f"cluster_rest must be '' or HOST:PORT, got {self.cluster_rest!r}")
        if self.rest_port < 0 and self.job_metrics_port >= 0:
            raise ValueError("job_metrics_port needs Flink's REST endpoint: rest_port >= 0")
        if self.rest_port < 0 and self.metrics_port > 0:
            raise ValueError("metrics_port needs Flink's REST endpoint: rest_port >= 0")
        if self.metrics_port < 0:
            raise ValueError(f"metrics_port must be >= 0 (0 = off), got {self.metrics_port}")
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


# ------------------------------------------------------------------ the Python reference
# What the JVM operator is held to (the conformance vectors are generated from these and
# from streams.contracts.schema / streams.flink.timeline / streams.flink.reward).


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


def operator_params(cfg: FlinkConfig, run: RunOptions) -> str:
    """The JVM operator's settings (its job parameter PARAMS_KEY): base64 of a JSON object
    with the timeline params and the source topic (base64: Flink's map syntax for
    pipeline.global-job-parameters reserves ',' and ':')."""
    params = {
        **cfg.timeline_params().as_dict(),
        "pair_windows": {
            "window": cfg.window,
            "window_size_ms": cfg.window_size_ms,
            "window_slide_ms": cfg.window_slide_ms,
            "min_count": cfg.min_count,
            "shards": PAIR_SHARDS,
        },
        "source_topic": run.source_topic,
    }
    return base64.b64encode(json.dumps(params).encode("utf-8")).decode("ascii")


def use_jvm_options(options: str) -> None:
    """Pass `options` to the JVM PyFlink's local mode starts (its launcher reads JVM_ARGS);
    only before that JVM has started, i.e. before anything of pyflink ran here."""
    import os

    if options:
        os.environ["JVM_ARGS"] = " ".join(filter(None, (os.environ.get("JVM_ARGS"), options)))


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def source_group(cfg: FlinkConfig, run: RunOptions) -> str:
    """The consumer group the Kafka source commits its positions to at checkpoints."""
    return cfg.group_id + ("-backfill" if run.backfill else "")


def job_jars() -> tuple[Path, Path]:
    """The jars every run ships with the job: the Kafka connector and our operators."""
    from plum.jvm import flink_kafka_connector_jar, plum_flink_jar

    return flink_kafka_connector_jar(), plum_flink_jar()


def flink_configuration(cfg: FlinkConfig, run: RunOptions, checkpoint_dir: Path):
    """The Flink Configuration of one run (local mini-cluster or client)."""
    from pyflink.common import Configuration

    c = Configuration()
    c.set_string("pipeline.jars", ";".join(j.as_uri() for j in job_jars()))
    c.set_string("pipeline.global-job-parameters", f"{PARAMS_KEY}:{operator_params(cfg, run)}")
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
    c.set_string("python.client.executable", sys.executable)
    # Operator metrics reach the REST API through this fetcher (default every 10 s).
    c.set_string("metrics.fetcher.update-interval", "1000")
    c.set_string("table.local-time-zone", "UTC")
    if cfg.cluster_rest:  # a session cluster: the client submits to its REST endpoint
        host, port = cfg.cluster_rest.rsplit(":", 1)
        c.set_string("execution.target", "remote")
        c.set_string("rest.address", host)
        c.set_string("rest.port", port)
    elif cfg.rest_port > 0:  # 0: Flink's own (run_job picks a free port first); -1: untouched
        c.set_string("rest.bind-address", "127.0.0.1")
        c.set_string("rest.address", "127.0.0.1")
        c.set_string("rest.bind-port", str(cfg.rest_port))
        c.set_string("rest.port", str(cfg.rest_port))
    if run.restore_path:
        c.set_string("execution.state-recovery.path", run.restore_path)
    return c


def _remote_environment(cluster_rest: str, config):
    """An environment that submits to the session cluster at `cluster_rest` (its REST
    endpoint) and ships our two jars with the job. PyFlink has no remote factory (its
    `get_execution_environment` is always local outside `flink run`), so this is the JVM's
    `StreamExecutionEnvironment.createRemoteEnvironment`."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    gateway = get_gateway()
    jars = [str(j) for j in job_jars()]
    j_jars = gateway.new_array(gateway.jvm.String, len(jars))
    for i, jar in enumerate(jars):
        j_jars[i] = jar
    host, port = cluster_rest.rsplit(":", 1)
    j_env = gateway.jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment
    return StreamExecutionEnvironment(
        j_env.createRemoteEnvironment(host, int(port), config._j_configuration, j_jars)
    )


def _table_settings():
    """The table environment's settings (Flink's defaults) with a user class loader that
    holds our two jars, so the planner finds the operator's classes on any JVM thread.

    Left to PyFlink, the jars reach the planner through the context class loader of the
    JVM thread serving the py4j call that set `pipeline.jars`. py4j serves each of its
    connections on its own JVM thread, and a second connection (another Python thread's
    call, or py4j releasing a garbage-collected object while this thread holds the first)
    can leave the next call on a thread without them: CREATE FUNCTION then failed with
    ClassNotFoundException for dev.plum.flink.WatchTs (once, in CI)."""
    from pyflink.java_gateway import get_gateway
    from pyflink.table import EnvironmentSettings

    gateway = get_gateway()
    jvm = gateway.jvm
    jars = job_jars()
    urls = gateway.new_array(jvm.java.net.URL, len(jars))
    for i, jar in enumerate(jars):
        urls[i] = jvm.java.net.URL(jar.as_uri())
    flink_loader = jvm.org.apache.flink.table.api.EnvironmentSettings._java_lang_class
    loader = jvm.java.net.URLClassLoader(urls, flink_loader.getClassLoader())
    j_settings = jvm.org.apache.flink.table.api.EnvironmentSettings.newInstance()
    return EnvironmentSettings(j_settings.withClassLoader(loader).build())


def build(cfg: FlinkConfig, run: RunOptions, checkpoint_dir: Path):
    """Build the job graph; returns (env, t_env, statement_set). `statement_set.execute()`
    runs it."""
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    use_jvm_options(cfg.jvm_options)
    config = flink_configuration(cfg, run, checkpoint_dir)
    if cfg.cluster_rest:
        env = _remote_environment(cfg.cluster_rest, config)
    else:
        env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(cfg.parallelism)
    t_env = StreamTableEnvironment.create(env, environment_settings=_table_settings())
    t_env.get_config().set("table.local-time-zone", "UTC")
    t_env.get_config().set("table.exec.source.idle-timeout", f"{cfg.idleness_ms} ms")
    # The PTF's per-user state (head, pending, history) expires like the old operator's.
    if cfg.state_ttl_ms > 0:
        t_env.get_config().set("table.exec.state.ttl", f"{cfg.state_ttl_ms} ms")

    topics = run.topics
    src_topic = run.source_topic
    sft_topic, dl_topic, cooc_topic = (
        run.out(topics.sft_examples),
        run.out(topics.deadletter),
        run.out(topics.cooccurrence),
    )

    # ---- source (JVM): raw bytes + metadata; `ts` only for the watermark, read (as the
    # user key below) by the operator's jar with the reference's JSON rules.
    for name, cls in PROBE_FUNCTIONS.items():
        t_env.execute_sql(f"CREATE TEMPORARY FUNCTION {name} AS '{cls}' LANGUAGE JAVA")
    ts_expr = "plum_watch_ts(`raw`)"
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
    # The key (user_id) is read before the operator so records can be partitioned by user;
    # records without a string user_id share the key '' and are dead-lettered by
    # validation, as is a record with no value at all (read as empty bytes). The operator
    # checks that its own reading of user_id is the key (ambiguous_user_id otherwise).
    user_key = "plum_watch_key(`raw`)"
    t_env.create_temporary_view(
        "keyed_watches",
        t_env.sql_query(f"""
            SELECT {user_key} AS k, COALESCE(`raw`, X'') AS `raw`, `partition`, `offset`, rt
            FROM watches_src {where}"""),
    )

    # ---- JVM: validation + per-user timeline, one Process Table Function.
    t_env.execute_sql(f"CREATE TEMPORARY FUNCTION plum_timeline AS '{PTF_CLASS}' LANGUAGE JAVA")
    timeline = t_env.sql_query(f"""
        SELECT k, kind, v, a, b, window_end, shard, rowtime
        FROM plum_timeline(input => TABLE keyed_watches PARTITION BY k,
                           on_time => DESCRIPTOR(rt), uid => '{PTF_UID}')""")
    t_env.create_temporary_view("timeline_out", timeline)

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

    # Pairs, one row per pair and window, counted per (window end, shard) by the jar's pair
    # counter: one timer per key and window, emitted when the watermark passes the end.
    t_env.execute_sql(
        f"CREATE TEMPORARY FUNCTION plum_pair_counts AS '{PAIR_COUNT_CLASS}' LANGUAGE JAVA"
    )
    t_env.create_temporary_view(
        "pair_rows",
        t_env.sql_query(f"""
            SELECT window_end, shard, a, b, rowtime FROM timeline_out WHERE kind = {PAIR}"""),
    )
    pair_counts = t_env.sql_query(f"""
        SELECT window_end, a, b, n
        FROM plum_pair_counts(input => TABLE pair_rows PARTITION BY (window_end, shard),
                              on_time => DESCRIPTOR(rowtime), uid => '{PAIR_COUNT_UID}')""")
    t_env.create_temporary_view("pair_counts", pair_counts)

    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(
        f"INSERT INTO sft_sink SELECT k, v FROM timeline_out WHERE kind = {EXAMPLE}"
    )
    stmts.add_insert_sql(
        f"INSERT INTO dl_sink SELECT CAST(NULL AS STRING), v FROM timeline_out WHERE kind = {DEAD}"
    )
    stmts.add_insert_sql(f"""
        INSERT INTO cooc_sink
        SELECT CONCAT(a, '|', b), a, b, n, window_end, {schema.SCHEMA_VERSION}
        FROM pair_counts""")
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


class IncompatibleCheckpoint(RuntimeError):
    """A checkpoint this job version cannot restore; the message names what to do."""


def mark_operator(checkpoint_dir: Path) -> None:
    """Record in `checkpoint_dir` which operator writes its checkpoints."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / OPERATOR_MARKER).write_text(OPERATOR + "\n")


def check_restorable(restore_path: str) -> None:
    """Refuse a checkpoint that this job version did not write (earlier versions kept other
    state under other uids: the Python operator's users, the SQL window aggregate's pair
    counts; restoring one would silently drop users' buffered watches and history, or a
    window's counts).

    The marker is looked for in the checkpoint's directory and the two above it
    (<dir>/<job id>/chk-N); a savepoint or checkpoint elsewhere without one is refused
    too. Raises IncompatibleCheckpoint naming the fix."""
    path = Path(restore_path.removeprefix("file://"))
    for parent in (path, *list(path.parents)[:2]):
        marker = parent / OPERATOR_MARKER
        if marker.is_file():
            found = marker.read_text().strip()
            if found == OPERATOR:
                return
            break
    else:
        found = "the Python operator (no marker)"
    raise IncompatibleCheckpoint(
        f"checkpoint {restore_path} was written by {found}, not by this job's JVM operator "
        f"({OPERATOR}); its state cannot be restored. Either rebuild the outputs with a "
        "backfill from the replay topic (plum flink run --backfill --from T1 --to T2) and "
        "start the live job with --fresh (starting_offsets = committed resumes where the "
        "old job's group stopped), or start it with --fresh from the topic's start."
    )
