"""The dashboard panels: every panel's PromQL, unit and SLO line, defined once.

The Grafana dashboard JSON (`monitoring/dashboards/grafana.py`), the page served by
`plum dashboard` and the Prometheus recording rules (`monitoring/rules/`) all read these
definitions, so a query changed here changes everywhere. Panels are grouped into the four
rows a person reads top to bottom: is the system fresh, is data flowing, is the model
good, is anything broken.

A query is written against the raw series of the metric catalogue
(`monitoring/metrics.py`); where a panel's query is also an SLI it is recorded under
`record` (Prometheus naming `level:metric:operations`) and the alert rules use that name.
Prometheus scrapes each component as its own job, `job` = the catalogue component.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Row = Literal["freshness", "throughput", "quality", "errors"]
ROWS: tuple[Row, ...] = ("freshness", "throughput", "quality", "errors")
ROW_TITLES: dict[Row, str] = {
    "freshness": "Freshness: how old is what users are served",
    "throughput": "Throughput: is data flowing through every stage",
    "quality": "Quality: is the model learning and good",
    "errors": "Errors: is anything rejected, lagging or down",
}

# Units as Grafana names them (the page formats values with the same names).
Unit = Literal["s", "ms", "short", "percentunit", "reqps", "none"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str  # Grafana legend format: "{{label}}" is replaced by the series' label value
    record: str = ""  # the recording rule's name when this query is an SLI


@dataclass(frozen=True)
class Panel:
    key: str  # stable id: the page's DOM id, the Grafana panel's title key
    title: str
    row: Row
    unit: Unit
    description: str  # one line: what the panel answers (the README's panel list uses it)
    queries: tuple[Query, ...]
    slo: float | None = None  # drawn as a horizontal line; above it is bad
    slo_label: str = ""
    jobs: tuple[str, ...] = field(default=())  # the components whose series it shows

    def metrics(self) -> set[str]:
        """Catalogue metric names the queries read (histogram suffixes removed)."""
        names = set()
        for q in self.queries:
            for name in re.findall(r"\bplum_[a-z0-9_]+", q.expr):
                names.add(re.sub(r"_(bucket|sum|count)$", "", name))
        return names


def p95(metric: str, window: str = "5m", by: str = "") -> str:
    """The 95th percentile of a catalogue histogram over `window` across every series."""
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.95, sum by ({labels}) (rate({metric}_bucket[{window}])))"


def zero_while_up(expr: str, job: str) -> str:
    """`expr`, or 0 while `job` is scraped: a counter whose labelled series appear only
    with their first increment (rejections, failures) reads 0, not "no data", while the
    component is up, and no data when it is down."""
    return f'({expr}) or on() (0 * max(up{{job="{job}"}}))'


PANELS: tuple[Panel, ...] = (
    # ------------------------------------------------------------------ freshness
    Panel(
        "upload_to_servable",
        "Upload → servable (p95)",
        "freshness",
        "s",
        "seconds from a video's upload to its SID being retrievable in serving",
        (
            Query(
                p95("plum_serving_upload_to_servable_seconds"),
                "upload → servable",
                "plum:upload_to_servable_seconds:p95_5m",
            ),
            Query(
                p95("plum_sid_upload_to_sid_seconds"),
                "upload → SID",
                "plum:upload_to_sid_seconds:p95_5m",
            ),
            Query(
                p95("plum_serving_sid_to_servable_seconds"),
                "SID → servable",
                "plum:sid_to_servable_seconds:p95_5m",
            ),
        ),
        slo=30.0,
        slo_label="SLO 30 s",
        jobs=("sid_service", "serving"),
    ),
    Panel(
        "model_event_lag",
        "Event → model",
        "freshness",
        "s",
        "age of the newest event inside the trainer's model and inside the served model",
        (
            Query(
                "max(plum_serving_model_event_lag_seconds)",
                "served model",
                "plum:served_model_event_lag_seconds:max",
            ),
            Query(
                "time() - max(plum_trainer_newest_event_ts) / 1000",
                "trained model",
                "plum:trained_model_event_lag_seconds:max",
            ),
        ),
        slo=300.0,
        slo_label="target 5 min",
        jobs=("serving", "trainer"),
    ),
    Panel(
        "model_age",
        "Checkpoint and served-model age",
        "freshness",
        "s",
        "how long ago the trainer saved a checkpoint and the served artifact was made",
        (
            Query("max(plum_serving_model_age_seconds)", "served artifact"),
            Query("time() - max(plum_trainer_last_checkpoint_ts) / 1000", "last checkpoint"),
        ),
        jobs=("serving", "trainer"),
    ),
    Panel(
        "flink_freshness",
        "Flink watermark lag and checkpoint age",
        "freshness",
        "s",
        "event time the Flink job holds back (watermark lag) and since its last checkpoint",
        (
            Query("max(plum_flink_watermark_lag_ms) / 1000", "watermark lag"),
            Query("time() - max(plum_flink_job_last_checkpoint_ts) / 1000", "checkpoint age"),
            Query("max(plum_flink_job_checkpoint_duration_seconds)", "checkpoint duration"),
        ),
        jobs=("flink", "flink_job"),
    ),
    # ------------------------------------------------------------------ throughput
    Panel(
        "events_rate",
        "Events through each stage",
        "throughput",
        "short",
        "events per second produced (or played from the replay topics), read by the Flink"
        " job and turned into examples",
        (
            Query("sum(rate(plum_simulator_events_total[1m]))", "produced"),
            Query("sum(rate(plum_replay_played_total[1m]))", "replayed"),
            Query("sum(rate(plum_flink_records_in_total[1m]))", "Flink in"),
            Query("sum(rate(plum_flink_examples_sampled_total[1m]))", "SFT examples"),
            Query("sum(rate(plum_sid_assignments_total[1m]))", "SIDs assigned"),
        ),
        # the components expected up (a chip each); the replay player (--data movielens)
        # gets its chip when Prometheus scrapes it, and no "not scraped" chip otherwise
        jobs=("simulator", "flink", "sid_service"),
    ),
    Panel(
        "examples_rate",
        "Examples trained per second",
        "throughput",
        "short",
        "training examples per second by source (fresh from Kafka, history from the archive)",
        (
            Query(
                "sum by (source) (rate(plum_trainer_examples_total[1m]))",
                "{{source}}",
                "plum:trainer_examples:rate1m",
            ),
        ),
        jobs=("trainer",),
    ),
    Panel(
        "consumer_lag",
        "Consumer lag",
        "throughput",
        "short",
        "records not yet consumed, per topic and consumer group (the trainer's own offsets too)",
        (
            Query(
                "sum by (topic, group) (plum_kafka_consumer_lag_records)",
                "{{group}} · {{topic}}",
                "plum:consumer_lag_records:sum",
            ),
            Query("sum(plum_trainer_consumer_lag)", "trainer · sft-examples"),
        ),
        jobs=("kafka", "trainer"),
    ),
    Panel(
        "serving_rate",
        "Retrieval requests per second",
        "throughput",
        "reqps",
        "retrieval requests answered per second, by HTTP status",
        (
            Query(
                zero_while_up(
                    'sum by (status) (rate(plum_serving_requests_total{route="/v1/retrieve"}[1m]))',
                    "serving",
                ),
                "{{status}}",
            ),
        ),
        jobs=("serving",),
    ),
    # ------------------------------------------------------------------ quality
    Panel(
        "training_loss",
        "Training loss",
        "quality",
        "none",
        "weighted cross-entropy of the trainer's last step",
        (Query("max(plum_trainer_loss)", "loss"),),
        jobs=("trainer",),
    ),
    Panel(
        "fresh_recall",
        "Recall@K on fresh data",
        "quality",
        "percentunit",
        "the publish gate's Recall@K on the freshest held-out examples, candidate vs served",
        (Query("max by (model) (plum_publisher_gate_recall)", "{{model}}"),),
        jobs=("publisher",),
    ),
    Panel(
        "trainer_steps",
        "Training steps per minute",
        "quality",
        "short",
        "optimizer steps per minute (0 means the trainer is stalled)",
        (Query("60 * max(deriv(plum_trainer_step[5m]))", "steps/min"),),
        jobs=("trainer",),
    ),
    # ------------------------------------------------------------------ errors
    Panel(
        "deadletters",
        "Dead letters per second",
        "errors",
        "short",
        "malformed or late records sent to the dead-letter topic, by component and reason",
        (
            Query(
                "sum by (component, reason) (rate(plum_deadletter_total[1m]))",
                "{{component}} · {{reason}}",
                "plum:deadletters:rate1m",
            ),
        ),
        jobs=("flink", "sid_service"),
    ),
    Panel(
        "publish_rejections",
        "Publish rejections and push failures (15 min)",
        "errors",
        "short",
        "checkpoints the gate refused and pushes serving did not accept, last 15 minutes",
        (
            Query(
                zero_while_up(
                    "sum by (reason) (increase(plum_publisher_rejections_total[15m]))",
                    "publisher",
                ),
                "rejected {{reason}}",
                "plum:publisher_rejections:increase15m",
            ),
            Query(
                zero_while_up(
                    "sum by (kind) (increase(plum_publisher_push_failures_total[15m]))",
                    "publisher",
                ),
                "push failed {{kind}}",
            ),
        ),
        jobs=("publisher",),
    ),
    Panel(
        "serving_latency",
        "Retrieval latency (p99)",
        "errors",
        "s",
        "99th percentile of the time from a retrieval request's arrival to its answer",
        (
            Query(
                'histogram_quantile(0.99, sum by (le) (rate(plum_serving_request_seconds_bucket{route="/v1/retrieve"}[5m])))',
                "p99",
                "plum:serving_retrieve_seconds:p99_5m",
            ),
        ),
        slo=0.25,
        slo_label="p99 target 250 ms",
        jobs=("serving",),
    ),
    Panel(
        "serving_errors",
        "Serving 5xx share",
        "errors",
        "percentunit",
        "share of retrieval answers that were server errors (bad input is a 4xx, never a 5xx; "
        "/readyz's 503 before the first model is not counted)",
        (
            Query(
                zero_while_up(
                    'sum(rate(plum_serving_requests_total{route="/v1/retrieve",status=~"5.."}[5m]))'
                    ' / sum(rate(plum_serving_requests_total{route="/v1/retrieve"}[5m]))',
                    "serving",
                ),
                "5xx share",
                "plum:serving_5xx:ratio_5m",
            ),
        ),
        jobs=("serving",),
    ),
    Panel(
        "components_up",
        "Components up",
        "errors",
        "none",
        "1 for every component Prometheus scrapes, 0 when its /metrics does not answer",
        (Query('up{job!="prometheus"}', "{{job}}"),),
    ),
)

BY_KEY: dict[str, Panel] = {p.key: p for p in PANELS}


def panels_in(row: Row) -> tuple[Panel, ...]:
    return tuple(p for p in PANELS if p.row == row)


def recorded_queries() -> tuple[Query, ...]:
    """Every query that is also a recording rule (the SLIs), in panel order."""
    return tuple(q for p in PANELS for q in p.queries if q.record)
