"""The metric catalogue: every metric name, type, labels and unit in one place.

Components never create prometheus_client metrics directly. They build a `Metrics`
object on their own `CollectorRegistry` (no process-global registry: two components in
one test process must not collide) and look metrics up by catalogue name:

    metrics = Metrics.for_component("simulator")
    metrics.counter("plum_simulator_events_total").labels(topic="plum.watches.v1").inc()
    serve_metrics(metrics, port=9101)   # /metrics for Prometheus

Adding a metric means adding a `MetricDef` to `CATALOGUE`; asking for a name that is not
in the catalogue, or one that belongs to another component, is an error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from plum.runtime import MetricsServer

Kind = Literal["counter", "gauge", "histogram", "summary"]

LATENCY_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Kind
    component: str
    help: str
    unit: str = ""
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = field(default=LATENCY_BUCKETS_S)


CATALOGUE: tuple[MetricDef, ...] = (
    # --- kafka (the broker exporter, streams/kafka/exporter.py)
    MetricDef(
        "plum_kafka_broker_up",
        "gauge",
        "kafka",
        "1 when the local broker answers",
        labels=("bootstrap",),
    ),
    MetricDef(
        "plum_kafka_log_end_offset",
        "gauge",
        "kafka",
        "offset the next record of the partition gets (records plus transaction markers)",
        labels=("topic", "partition"),
    ),
    MetricDef(
        "plum_kafka_consumer_lag_records",
        "gauge",
        "kafka",
        "end offset minus committed offset",
        "records",
        ("topic", "partition", "group"),
    ),
    # --- simulator
    MetricDef(
        "plum_simulator_events_total",
        "counter",
        "simulator",
        "events produced, by topic and kind (valid or the bad kind injected)",
        labels=("topic", "kind"),
    ),
    MetricDef(
        "plum_simulator_rate_events_per_second",
        "gauge",
        "simulator",
        "achieved produce rate over the last progress interval",
        "events/s",
    ),
    MetricDef(
        "plum_simulator_event_time_ms",
        "gauge",
        "simulator",
        "event time of the newest produced event",
        "ms",
    ),
    MetricDef("plum_simulator_videos", "gauge", "simulator", "videos uploaded so far"),
    # --- data import
    MetricDef(
        "plum_import_records_total",
        "counter",
        "import",
        "records written by a data import",
        labels=("dataset", "topic"),
    ),
    # --- replay play (`plum replay play`: replay topics -> live topics)
    MetricDef(
        "plum_replay_played_total",
        "counter",
        "replay",
        "records played from a replay topic into a live topic, by live topic",
        labels=("topic",),
    ),
    MetricDef(
        "plum_replay_event_time_ms",
        "gauge",
        "replay",
        "record timestamp (event time) of the newest record played",
        "ms",
    ),
    # --- flink job (counted by the JVM operator, streams/flink/jvm; served by `plum flink run`
    # from Flink's REST API, streams/flink/job_metrics.py)
    MetricDef(
        "plum_flink_records_in_total",
        "counter",
        "flink",
        "watch records read and validated",
        labels=("topic",),
    ),
    MetricDef(
        "plum_flink_records_accepted_total",
        "counter",
        "flink",
        "valid, not-late watches taken into per-user state",
        labels=("topic",),
    ),
    MetricDef(
        "plum_flink_records_out_total",
        "counter",
        "flink",
        "records emitted to an output topic (committed at the next checkpoint)",
        labels=("topic",),
    ),
    MetricDef(
        "plum_flink_examples_sampled_total",
        "counter",
        "flink",
        "clicked watches kept as SFT examples by reward sampling",
    ),
    MetricDef(
        "plum_flink_pairs_total",
        "counter",
        "flink",
        "co-occurrence pairs sent to the window count (before min_count)",
    ),
    MetricDef(
        "plum_flink_state_users_created_total",
        "counter",
        "flink",
        "per-user timeline states created (state size proxy)",
    ),
    MetricDef(
        "plum_flink_pending_watches",
        "gauge",
        "flink",
        "accepted watches buffered until the watermark passes them",
    ),
    MetricDef(
        "plum_flink_watermark_lag_ms",
        "gauge",
        "flink",
        "newest event time seen minus the current watermark",
        "ms",
    ),
    # --- the Flink job as Flink itself reports it (its REST API, polled by `plum flink run`)
    MetricDef(
        "plum_flink_job_running",
        "gauge",
        "flink_job",
        "1 while the Flink job's state is RUNNING",
    ),
    MetricDef(
        "plum_flink_job_last_checkpoint_ts",
        "gauge",
        "flink_job",
        "wall time the newest completed checkpoint was triggered",
        "ms",
    ),
    MetricDef(
        "plum_flink_job_checkpoint_duration_seconds",
        "gauge",
        "flink_job",
        "end-to-end duration of the newest completed checkpoint",
        "seconds",
    ),
    MetricDef(
        "plum_flink_job_checkpoints",
        "gauge",
        "flink_job",
        "checkpoints of the job so far, by status (completed, failed)",
        labels=("status",),
    ),
    # --- SID assignment service (tokenizer/service.py)
    MetricDef(
        "plum_sid_uploads_consumed_total", "counter", "sid_service", "upload records consumed"
    ),
    MetricDef(
        "plum_sid_assignments_total",
        "counter",
        "sid_service",
        "new SIDs assigned and published",
        labels=("version",),
    ),
    MetricDef(
        "plum_sid_collisions_total",
        "counter",
        "sid_service",
        "new SIDs whose tokenizer codes were already taken (disambiguation code > 0)",
        labels=("version",),
    ),
    MetricDef(
        "plum_sid_batch_seconds",
        "histogram",
        "sid_service",
        "time to validate, encode, assign and commit one batch",
        "seconds",
    ),
    MetricDef(
        "plum_sid_upload_to_sid_seconds",
        "histogram",
        "sid_service",
        "upload record timestamp to its SID being committed",
        "seconds",
    ),
    MetricDef(
        "plum_sid_index_size",
        "gauge",
        "sid_service",
        "videos with a SID in the local index",
        labels=("version",),
    ),
    MetricDef(
        "plum_sid_version_info",
        "gauge",
        "sid_service",
        "1 for the tokenizer version this service assigns with",
        labels=("version",),
    ),
    # --- continuous trainer (trainer/loop.py)
    MetricDef("plum_trainer_step", "gauge", "trainer", "optimizer steps taken"),
    MetricDef(
        "plum_trainer_step_seconds",
        "histogram",
        "trainer",
        "wall time of one training step, input wait excluded",
        "seconds",
    ),
    MetricDef(
        "plum_trainer_examples_total",
        "counter",
        "trainer",
        "examples trained on, by source (fresh = Kafka, history = archive)",
        labels=("source",),
    ),
    MetricDef(
        "plum_trainer_examples_skipped_total",
        "counter",
        "trainer",
        "consumed examples not trained on (unknown_target: no SID yet; malformed)",
        labels=("reason",),
    ),
    MetricDef("plum_trainer_tokens_total", "counter", "trainer", "target tokens trained on"),
    MetricDef("plum_trainer_loss", "gauge", "trainer", "weighted cross-entropy of the last step"),
    MetricDef(
        "plum_trainer_input_wait_fraction",
        "gauge",
        "trainer",
        "share of wall time the step loop waited for input since start",
        "ratio",
    ),
    MetricDef(
        "plum_trainer_fresh_fraction",
        "gauge",
        "trainer",
        "share of trained examples that came from Kafka (achieved mix) since start",
        "ratio",
    ),
    MetricDef(
        "plum_trainer_newest_event_ts",
        "gauge",
        "trainer",
        "event time of the newest fresh example trained on",
        "ms",
    ),
    MetricDef(
        "plum_trainer_consumer_lag",
        "gauge",
        "trainer",
        "records of plum.sft-examples.v1 not yet trained on",
        "records",
        labels=("partition",),
    ),
    MetricDef(
        "plum_trainer_last_checkpoint_ts",
        "gauge",
        "trainer",
        "wall time of the last checkpoint saved",
        "ms",
    ),
    MetricDef(
        "plum_trainer_checkpoint_failures_total",
        "counter",
        "trainer",
        "checkpoints that could not be written (disk full, directory unwritable); training "
        "goes on and the last good checkpoint stays the newest",
    ),
    MetricDef(
        "plum_trainer_sid_version_info",
        "gauge",
        "trainer",
        "1 for the SID index version the trainer tokenises with",
        labels=("version",),
    ),
    MetricDef(
        "plum_trainer_unencodable_sids",
        "gauge",
        "trainer",
        "SIDs of the followed version the vocabulary cannot write (read as <unk>, never a "
        "target); > 0 means the vocabulary's disambiguation range is below the SID service's",
    ),
    # --- serving (serving/; `plum serve`)
    MetricDef(
        "plum_serving_requests_total",
        "counter",
        "serving",
        "HTTP requests answered, by route and status code",
        labels=("route", "status"),
    ),
    MetricDef(
        "plum_serving_request_seconds",
        "histogram",
        "serving",
        "time from a request's arrival to its answer",
        "seconds",
        ("route",),
    ),
    MetricDef(
        "plum_serving_batch_size",
        "histogram",
        "serving",
        "retrieval requests searched together in one beam-search call (dynamic batching)",
        "requests",
        buckets=(1, 2, 4, 8, 16, 32, 64),
    ),
    MetricDef(
        "plum_serving_queue_seconds",
        "histogram",
        "serving",
        "time a retrieval request waited for its batch to start",
        "seconds",
    ),
    MetricDef(
        "plum_serving_unknown_history_total",
        "counter",
        "serving",
        "history video ids the served SID index does not know (skipped, never an error)",
    ),
    MetricDef(
        "plum_serving_model_version", "gauge", "serving", "version of the model being served"
    ),
    MetricDef("plum_serving_model_step", "gauge", "serving", "trainer step of the served model"),
    MetricDef(
        "plum_serving_model_age_seconds",
        "gauge",
        "serving",
        "now minus the served artifact's creation time",
        "seconds",
    ),
    MetricDef(
        "plum_serving_model_event_lag_seconds",
        "gauge",
        "serving",
        "event -> servable of the model: now minus the newest event time it trained on",
        "seconds",
    ),
    MetricDef(
        "plum_serving_model_loads_total",
        "counter",
        "serving",
        "model loads by outcome (loaded, failed); a failed load leaves the old model serving",
        labels=("outcome",),
    ),
    MetricDef(
        "plum_serving_index_seq", "gauge", "serving", "SID index delta sequence applied so far"
    ),
    MetricDef("plum_serving_index_items", "gauge", "serving", "videos servable (in the SID index)"),
    MetricDef(
        "plum_serving_deltas_total",
        "counter",
        "serving",
        "SID deltas received, by outcome (applied, duplicate, gap, rejected)",
        labels=("outcome",),
    ),
    MetricDef(
        "plum_serving_sid_to_servable_seconds",
        "histogram",
        "serving",
        "SID assigned (its assignment record's Kafka timestamp) -> applied in serving's index",
        "seconds",
        buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    ),
    MetricDef(
        "plum_serving_upload_to_servable_seconds",
        "histogram",
        "serving",
        "upload (its Kafka timestamp) -> its SID applied in serving's index",
        "seconds",
        buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    ),
    # --- publisher (publisher/; `plum publish`)
    MetricDef(
        "plum_publisher_publishes_total",
        "counter",
        "publisher",
        "checkpoints that passed the gate and were published to the model repository",
    ),
    MetricDef(
        "plum_publisher_rejections_total",
        "counter",
        "publisher",
        "checkpoints the gate refused, by reason",
        labels=("reason",),
    ),
    MetricDef(
        "plum_publisher_push_seconds",
        "histogram",
        "publisher",
        "one push to one endpoint, until its /v1/status confirms it",
        "seconds",
        ("kind",),
    ),
    MetricDef(
        "plum_publisher_push_failures_total",
        "counter",
        "publisher",
        "pushes an endpoint did not accept (retried on the next cycle), by kind",
        labels=("kind",),
    ),
    MetricDef(
        "plum_publisher_served_model_age_seconds",
        "gauge",
        "publisher",
        "now minus the creation time of the version the publisher has serving on",
        "seconds",
    ),
    MetricDef(
        "plum_publisher_gate_recall",
        "gauge",
        "publisher",
        "Recall@K of the last gate run on the freshest held-out slice, by model",
        labels=("model",),
    ),
    MetricDef(
        "plum_publisher_delta_seq",
        "gauge",
        "publisher",
        "SID delta sequence acknowledged by each endpoint",
        labels=("endpoint",),
    ),
    MetricDef(
        "plum_publisher_assignments_pending",
        "gauge",
        "publisher",
        "SID assignments read from Kafka and not yet acknowledged by every endpoint",
    ),
    # --- dead letters (every component that validates input)
    MetricDef(
        "plum_deadletter_total",
        "counter",
        "deadletter",
        "records sent to the dead-letter topic",
        labels=("component", "source_topic", "reason"),
    ),
)

BY_NAME = {m.name: m for m in CATALOGUE}


class Metrics:
    """The metrics of one component, registered on a private registry."""

    def __init__(self, component: str, registry: CollectorRegistry | None = None):
        self.component = component
        self.registry = registry or CollectorRegistry()
        self._made: dict[str, object] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_component(cls, component: str) -> Metrics:
        return cls(component)

    def _get(self, name: str, kind: Kind):
        try:
            spec = BY_NAME[name]
        except KeyError:
            raise KeyError(f"metric {name!r} is not in monitoring.metrics.CATALOGUE") from None
        if spec.kind != kind:
            raise TypeError(f"metric {name!r} is a {spec.kind}, not a {kind}")
        if spec.component not in (self.component, "deadletter"):
            raise KeyError(f"metric {name!r} belongs to {spec.component!r}, not {self.component!r}")
        with self._lock:
            if name not in self._made:
                doc = f"{spec.help} [{spec.unit}]" if spec.unit else spec.help
                common = dict(
                    name=name, documentation=doc, labelnames=spec.labels, registry=self.registry
                )
                if kind == "counter":
                    self._made[name] = Counter(**common)
                elif kind == "gauge":
                    self._made[name] = Gauge(**common)
                elif kind == "histogram":
                    self._made[name] = Histogram(**common, buckets=spec.buckets)
                else:
                    self._made[name] = Summary(**common)
            return self._made[name]

    def counter(self, name: str) -> Counter:
        return self._get(name, "counter")

    def gauge(self, name: str) -> Gauge:
        return self._get(name, "gauge")

    def histogram(self, name: str) -> Histogram:
        return self._get(name, "histogram")

    def summary(self, name: str) -> Summary:
        return self._get(name, "summary")

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter/gauge sample (0.0 when never set); for tests and logs."""
        spec = BY_NAME[name]
        sample = name + ("_total" if spec.kind == "counter" and not name.endswith("_total") else "")
        got = self.registry.get_sample_value(sample, labels or None)
        return 0.0 if got is None else got


def serve_metrics(metrics: Metrics, port: int, host: str | None = None) -> MetricsServer:
    """Start /metrics for `metrics` (port 0 picks a free one; see `.port`; host None:
    $PLUM_METRICS_HOST, else loopback)."""
    return MetricsServer(metrics.registry, port, host)
