"""The Flink job as Flink itself reports it: state and checkpoints from Flink's REST API.

The operator's metrics (`flink` in the catalogue, served beside these) say what it did; they
cannot say whether the job is RUNNING or when its last checkpoint completed, and output
becomes visible only at checkpoints, so a stuck checkpoint is a stuck pipeline. Flink's
REST API knows both. In local mode (`plum flink run`, a MiniCluster in the driver's JVM)
the REST endpoint is up on `[flink] rest_port` (checked against Flink 2.3: /jobs and
/jobs/<id>/checkpoints answer, the web UI files are not needed). The driver polls it in a
thread and serves the `flink_job` metrics of the catalogue on `[flink] job_metrics_port`:

    plum_flink_job_running                       1 while the job's state is RUNNING
    plum_flink_job_last_checkpoint_ts            trigger time of the newest completed one (ms)
    plum_flink_job_checkpoint_duration_seconds   its end-to-end duration
    plum_flink_job_checkpoints{status}           completed / failed so far

Nothing completed yet reads NaN (absent), never 0: "time() - ts" of a 0 would look like
a checkpoint 56 years old. A poll that fails (the endpoint not up yet, or gone) sets
running to 0 and keeps the checkpoint values last read.

The operator's own counters (the `flink` component of the catalogue: records in and
accepted, dead letters by reason, examples, pairs, users, pending watches, watermark lag)
are counted by the JVM operator (streams/flink/jvm, UserTimelineFunction) in Flink's
metric groups. The same poll reads them (GET /jobs/<id>/vertices/<v>/subtasks/metrics,
summed over subtasks) and `OperatorMetrics` serves them under the catalogue's names and
labels on `[flink] metrics_port`, so dashboards and alerts read what they always read.
Counters stay counters: each poll adds what the operator counted since the last one (a
restarted job's counters start again from 0 and are added from there).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from monitoring.metrics import Metrics, serve_metrics
from plum.runtime import MetricsServer

log = logging.getLogger(__name__)

COMPONENT = "flink_job"
STATUSES = ("completed", "failed")
RUNNING = "RUNNING"


@dataclass(frozen=True)
class JobReport:
    """What one poll read: the job's state and its checkpoint statistics."""

    state: str
    completed: int
    failed: int
    last_checkpoint_ts_ms: float  # NaN: none completed yet
    last_checkpoint_duration_s: float  # NaN: none completed yet

    @property
    def running(self) -> bool:
        return self.state == RUNNING


def parse_report(job: dict[str, Any], checkpoints: dict[str, Any]) -> JobReport:
    """A JobReport from the bodies of GET /jobs/<id> and GET /jobs/<id>/checkpoints."""
    counts = checkpoints.get("counts") or {}
    latest = (checkpoints.get("latest") or {}).get("completed") or {}
    ts = latest.get("trigger_timestamp")
    duration_ms = latest.get("end_to_end_duration")
    return JobReport(
        state=str(job.get("state", "UNKNOWN")),
        completed=int(counts.get("completed", 0)),
        failed=int(counts.get("failed", 0)),
        last_checkpoint_ts_ms=float(ts) if ts else math.nan,
        last_checkpoint_duration_s=float(duration_ms) / 1000
        if duration_ms is not None
        else math.nan,
    )


# The operator's metrics as UserTimelineFunction registers them (name = the catalogue's).
OPERATOR_COMPONENT = "flink"
DEADLETTER = "plum_deadletter_total"
IN, ACCEPTED, OUT = (
    "plum_flink_records_in_total",
    "plum_flink_records_accepted_total",
    "plum_flink_records_out_total",
)
OPERATOR_COUNTERS = (
    IN,
    ACCEPTED,
    OUT,
    "plum_flink_examples_sampled_total",
    "plum_flink_pairs_total",
    "plum_flink_state_users_created_total",
)
OPERATOR_GAUGES = ("plum_flink_pending_watches", "plum_flink_watermark_lag_ms")
REASON_GROUP = "reason"


@dataclass(frozen=True)
class OperatorSample:
    """One poll of the operator's metrics: name -> value, dead letters by reason."""

    values: dict[str, float] = field(default_factory=dict)
    dead_by_reason: dict[str, float] = field(default_factory=dict)


def operator_metric_ids(ids: Iterable[str]) -> list[str]:
    """The ids among a vertex's metric ids that are the operator's (Flink writes them as
    `<operator name>.<metric>`, or `<operator>.reason.<reason>.<metric>` for a group)."""
    wanted = {*OPERATOR_COUNTERS, *OPERATOR_GAUGES, DEADLETTER}
    return [i for i in ids if i.rpartition(".")[2] in wanted]


def parse_operator_metrics(rows: Iterable[dict[str, Any]]) -> OperatorSample:
    """An OperatorSample from the body of GET .../subtasks/metrics?get=...&agg=sum,max:
    counters and pending summed over subtasks, the watermark lag as the largest."""
    values: dict[str, float] = {}
    dead: dict[str, float] = {}
    for row in rows:
        parts = str(row.get("id", "")).split(".")
        name = parts[-1]
        agg = "max" if name == "plum_flink_watermark_lag_ms" else "sum"
        if agg not in row:
            continue
        value = float(row[agg])
        if name == DEADLETTER and len(parts) >= 3 and parts[-3] == REASON_GROUP:
            dead[parts[-2]] = dead.get(parts[-2], 0.0) + value
        elif name in OPERATOR_COUNTERS or name in OPERATOR_GAUGES:
            values[name] = values.get(name, 0.0) + value
    return OperatorSample(values, dead)


def is_source(vertex: dict[str, Any]) -> bool:
    """Whether a vertex of GET /jobs/<id> is a source (its name starts with "Source")."""
    return str(vertex.get("name", "")).startswith("Source")


class FlinkRest:
    """The calls of Flink's REST API the poller and a backfill need (bounded in time)."""

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + path, timeout=self.timeout_s) as response:
            return json.load(response)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._get(f"/jobs/{job_id}")

    def report(self, job_id: str) -> JobReport:
        return parse_report(self.job(job_id), self._get(f"/jobs/{job_id}/checkpoints"))

    def source_records_out(self, started_from_ms: int = 0) -> int | None:
        """Records the sources of the newest job started at or after `started_from_ms`
        (epoch ms; a MiniCluster runs one job, a session cluster lists every job it ran, so
        a caller waiting for its own job passes the time it submitted) have emitted so far
        (their vertices' write-records, summed); None when no such job is listed yet."""
        jobs = [
            job
            for job in self._get("/jobs/overview").get("jobs", [])
            if int(job.get("start-time", 0)) >= started_from_ms
        ]
        if not jobs:
            return None
        newest = max(jobs, key=lambda job: int(job.get("start-time", 0)))
        vertices = self.job(newest["jid"]).get("vertices", [])
        return sum(
            int(v.get("metrics", {}).get("write-records", 0)) for v in vertices if is_source(v)
        )

    def job_seconds(self, job_id: str) -> float:
        """The job's duration as Flink counts it (scheduling to its end state)."""
        return int(self.job(job_id)["duration"]) / 1000.0

    def operator_sample(self, job_id: str, known: dict[str, list[str]]) -> OperatorSample:
        """The operator's metrics; `known` (vertex id -> metric ids) caches where they were
        found, looked up again while empty (the operator registers them when it opens)."""
        if not known:
            for vertex in self.job(job_id).get("vertices", []):
                vid = vertex["id"]
                listed = self._get(f"/jobs/{job_id}/vertices/{vid}/subtasks/metrics")
                ids = operator_metric_ids(str(m.get("id", "")) for m in listed)
                if ids:
                    known[vid] = ids
        rows: list[dict[str, Any]] = []
        for vid, ids in known.items():
            query = urllib.parse.urlencode({"get": ",".join(ids), "agg": "sum,max"})
            rows.extend(self._get(f"/jobs/{job_id}/vertices/{vid}/subtasks/metrics?{query}"))
        return parse_operator_metrics(rows)


class JobMetrics:
    """The `flink_job` gauges, set from each JobReport."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics.for_component(COMPONENT)
        g = self.metrics.gauge
        self.running = g("plum_flink_job_running")
        self.last_ts = g("plum_flink_job_last_checkpoint_ts")
        self.duration = g("plum_flink_job_checkpoint_duration_seconds")
        self.checkpoints = g("plum_flink_job_checkpoints")
        self.running.set(0)
        self.last_ts.set(math.nan)
        self.duration.set(math.nan)
        for status in STATUSES:  # every status at 0 from the start
            self.checkpoints.labels(status=status).set(0)

    def update(self, report: JobReport) -> None:
        self.running.set(1 if report.running else 0)
        self.checkpoints.labels(status="completed").set(report.completed)
        self.checkpoints.labels(status="failed").set(report.failed)
        if not math.isnan(report.last_checkpoint_ts_ms):
            self.last_ts.set(report.last_checkpoint_ts_ms)
            self.duration.set(report.last_checkpoint_duration_s)

    def unreachable(self) -> None:
        self.running.set(0)


class OperatorMetrics:
    """The `flink` component's metrics (the operator's counters), set from each sample."""

    def __init__(self, source_topic: str, sft_topic: str, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics.for_component(OPERATOR_COMPONENT)
        self.source_topic = source_topic
        self.sft_topic = sft_topic
        self._last: dict[tuple[str, str], float] = {}
        for name in OPERATOR_COUNTERS:  # every series present (at 0) from the start
            self._counter(name)
        for name in OPERATOR_GAUGES:
            self.metrics.gauge(name).set(0)

    def _counter(self, name: str, reason: str | None = None):
        c = self.metrics.counter(name)
        if reason is not None:
            return c.labels(
                component=OPERATOR_COMPONENT, source_topic=self.source_topic, reason=reason
            )
        if name in (IN, ACCEPTED):
            return c.labels(topic=self.source_topic)
        if name == OUT:
            return c.labels(topic=self.sft_topic)
        return c

    def _add(self, name: str, value: float, reason: str | None = None) -> None:
        key = (name, reason or "")
        last = self._last.get(key, 0.0)
        # what was counted since the last poll; less than before: the job restarted and
        # its counters began again at 0
        delta = value - last if value >= last else value
        self._last[key] = value
        if delta > 0:
            self._counter(name, reason).inc(delta)
        else:
            self._counter(name, reason)  # the series exists from its first sight

    def update(self, sample: OperatorSample) -> None:
        for name in OPERATOR_COUNTERS:
            if name in sample.values:
                self._add(name, sample.values[name])
        for reason, value in sample.dead_by_reason.items():
            self._add(DEADLETTER, value, reason)
        for name in OPERATOR_GAUGES:
            if name in sample.values:
                self.metrics.gauge(name).set(sample.values[name])


class JobPoller:
    """Serves the gauges on `metrics_port` (0: a free one; -1: none) from construction, so
    a busy port fails before any job is submitted; `follow(job_id)` then polls that job
    every `interval_s` in a daemon thread until `close()`."""

    def __init__(
        self,
        rest: FlinkRest,
        interval_s: float,
        metrics_port: int,
        metrics: JobMetrics | None = None,
        operator: OperatorMetrics | None = None,
        operator_port: int = -1,
    ) -> None:
        self.rest = rest
        self.job_id: str | None = None
        self.interval_s = interval_s
        self.gauges = metrics or JobMetrics()
        self.operator = operator
        self._operator_ids: dict[str, list[str]] = {}
        self.server: MetricsServer | None = None
        self.operator_server: MetricsServer | None = None
        if metrics_port >= 0:
            self.server = serve_metrics(self.gauges.metrics, metrics_port)
            log.info("flink job: metrics on http://127.0.0.1:%d/metrics", self.server.port)
        if operator is not None and operator_port >= 0:
            self.operator_server = serve_metrics(operator.metrics, operator_port)
            log.info(
                "flink operator: metrics on http://127.0.0.1:%d/metrics",
                self.operator_server.port,
            )
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="flink-job-poller", daemon=True)

    def follow(self, job_id: str) -> None:
        """Start polling `job_id` (once)."""
        self.job_id = job_id
        self._thread.start()

    def poll_once(self) -> JobReport | None:
        """One poll: the report read (gauges set), or None when the endpoint did not answer
        (or no job is followed yet)."""
        if self.job_id is None:
            return None
        try:
            report = self.rest.report(self.job_id)
        except (OSError, ValueError) as exc:  # URLError/timeouts are OSErrors; bad JSON
            self.gauges.unreachable()
            if not self._failing:
                log.warning("flink REST %s: %s (job state unknown)", self.rest.base_url, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("flink REST %s answers again", self.rest.base_url)
        self._failing = False
        self.gauges.update(report)
        if self.operator is not None and report.running:
            try:
                self.operator.update(self.rest.operator_sample(self.job_id, self._operator_ids))
            except (OSError, ValueError, KeyError) as exc:
                log.debug("flink operator metrics: %s", exc)
        return report

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.rest.timeout_s * 2 + 1)
        if self.server is not None:
            self.server.close()
        if self.operator_server is not None:
            self.operator_server.close()

    def __enter__(self) -> JobPoller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
