"""The Flink job as Flink reports it: REST bodies -> the flink_job gauges, served on a
/metrics port by a poller that survives an endpoint that is not up (yet) or gone.

The bodies are trimmed copies of what Flink 2.3's MiniCluster answered to
GET /jobs/<id> and GET /jobs/<id>/checkpoints (the fields the poller reads, same shapes);
tests/integration/test_metrics_emitted.py runs the real endpoint. The operator's
counters (read from the same endpoint, served as the `flink` component) are checked
against the reference's counts in tests/integration/test_flink_job.py."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.flink.job import FlinkConfig, RunOptions, flink_configuration
from streams.flink.job_metrics import (
    FlinkRest,
    JobMetrics,
    JobPoller,
    OperatorMetrics,
    operator_metric_ids,
    parse_operator_metrics,
    parse_report,
)

JOB_ID = "1e42a832fbb8b1a259bf27e8497aeb26"
JOB = {"jid": JOB_ID, "state": "RUNNING", "start-time": 1796008387731, "end-time": -1}
CHECKPOINTS = {
    "counts": {"restored": 0, "total": 5, "in_progress": 1, "completed": 2, "failed": 2},
    "latest": {
        "completed": {
            "className": "completed",
            "id": 2,
            "status": "COMPLETED",
            "trigger_timestamp": 1796008404832,
            "latest_ack_timestamp": 1796008406129,
            "end_to_end_duration": 1297,
        },
        "savepoint": None,
        "failed": None,
        "restored": None,
    },
}
NONE_YET = {
    "counts": {"restored": 0, "total": 1, "in_progress": 1, "completed": 0, "failed": 0},
    "latest": {"completed": None, "savepoint": None, "failed": None, "restored": None},
}


def test_a_report_reads_state_counts_and_the_newest_completed_checkpoint():
    r = parse_report(JOB, CHECKPOINTS)
    assert r.running and (r.completed, r.failed) == (2, 2)
    assert r.last_checkpoint_ts_ms == 1796008404832  # its trigger time
    assert r.last_checkpoint_duration_s == pytest.approx(1.297)


def test_before_any_checkpoint_completes_the_times_are_unknown_not_zero():
    r = parse_report(JOB | {"state": "INITIALIZING"}, NONE_YET)
    assert not r.running and (r.completed, r.failed) == (0, 0)
    assert math.isnan(r.last_checkpoint_ts_ms) and math.isnan(r.last_checkpoint_duration_s)


class FakeFlink:
    """A REST endpoint answering the two GETs from `job` / `checkpoints` (swappable)."""

    def __init__(self) -> None:
        self.job, self.checkpoints = JOB, NONE_YET
        self.jobs: list[dict] = [{"jid": JOB_ID, "state": "RUNNING"}]
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                body = {
                    "/jobs/overview": {"jobs": fake.jobs},
                    f"/jobs/{JOB_ID}": fake.job,
                    f"/jobs/{JOB_ID}/checkpoints": fake.checkpoints,
                }.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body or {"errors": ["not found"]}).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def fake_flink() -> Iterator[FakeFlink]:
    server = FakeFlink()
    try:
        yield server
    finally:
        server.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def poll_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_the_poller_serves_every_flink_job_gauge_and_follows_the_job(caplog):
    caplog.set_level("INFO", logger="streams.flink.job_metrics")
    with fake_flink() as flink, JobPoller(FlinkRest(flink.url), 0.05, 0) as poller:
        port = poller.server.port
        assert f"flink job: metrics on http://127.0.0.1:{port}/metrics" in caplog.text
        # served before any job is followed (the port is bound before the job is submitted)
        assert scrape(port)[("plum_flink_job_running", ())] == 0
        assert poller.poll_once() is None and flink.requests == []
        poller.follow(JOB_ID)
        poll_until(lambda: len(flink.requests) >= 2)
        got = scrape(port)
        assert got[("plum_flink_job_running", ())] == 1
        assert got[("plum_flink_job_checkpoints", (("status", "completed"),))] == 0
        assert got[("plum_flink_job_checkpoints", (("status", "failed"),))] == 0
        assert math.isnan(got[("plum_flink_job_last_checkpoint_ts", ())])
        flink.checkpoints = CHECKPOINTS
        poll_until(lambda: scrape(port)[("plum_flink_job_last_checkpoint_ts", ())] > 0)
        got = scrape(port)
        assert got[("plum_flink_job_last_checkpoint_ts", ())] == 1796008404832
        assert got[("plum_flink_job_checkpoint_duration_seconds", ())] == pytest.approx(1.297)
        assert got[("plum_flink_job_checkpoints", (("status", "completed"),))] == 2
        flink.job = JOB | {"state": "CANCELED"}
        poll_until(lambda: scrape(port)[("plum_flink_job_running", ())] == 0)


def test_an_endpoint_that_does_not_answer_reads_as_not_running_and_keeps_the_last_checkpoint(
    caplog,
):
    gauges = JobMetrics()
    with fake_flink() as flink:
        flink.checkpoints = CHECKPOINTS
        poller = JobPoller(FlinkRest(flink.url, timeout_s=1.0), 3600, -1, gauges)
        poller.follow(JOB_ID)
        try:
            assert poller.server is None  # -1: no /metrics server
            poll_until(lambda: gauges.metrics.value("plum_flink_job_running") == 1)
            flink.close()  # Flink went away
            assert poller.poll_once() is None
            assert poller.poll_once() is None
        finally:
            poller.close()
    assert gauges.metrics.value("plum_flink_job_running") == 0
    assert gauges.metrics.value("plum_flink_job_last_checkpoint_ts") == 1796008404832
    assert caplog.text.count("job state unknown") == 1  # logged once, not every poll


def test_source_records_are_the_source_vertices_write_records_summed():
    with fake_flink() as flink:
        rest = FlinkRest(flink.url)
        flink.jobs = []
        assert rest.source_records_out() is None  # no job listed yet
        flink.jobs = [{"jid": JOB_ID, "state": "RUNNING"}]
        flink.job = {
            **JOB,
            "vertices": [
                {"name": "Source: KafkaSource-watches", "metrics": {"write-records": 700}},
                {"name": "Source: KafkaSource-uploads", "metrics": {"write-records": 5}},
                {"name": "ProcessTableFunction[4]", "metrics": {"write-records": 9000}},
            ],
        }
        assert rest.source_records_out() == 705
        # a session cluster lists every job it ran: the newest one is counted
        flink.jobs = [
            {"jid": "0" * 32, "state": "FINISHED", "start-time": 1796008400000},
            {"jid": JOB_ID, "state": "RUNNING", "start-time": 1796008500000},
        ]
        assert rest.source_records_out() == 705
        # a caller waiting for a job it submitted at t counts no job started before t
        assert rest.source_records_out(started_from_ms=1796008500000) == 705
        assert rest.source_records_out(started_from_ms=1796008500001) is None


def test_a_jobs_seconds_are_flinks_own_duration():
    with fake_flink() as flink:
        flink.job = {**JOB, "duration": 12761}
        assert FlinkRest(flink.url).job_seconds(JOB_ID) == pytest.approx(12.761)


def test_a_rest_port_binds_flinks_endpoint_to_localhost_on_that_port(tmp_path):
    conf = flink_configuration(FlinkConfig(rest_port=18081), RunOptions(), tmp_path).to_dict()
    assert conf["rest.bind-port"] == conf["rest.port"] == "18081"
    assert conf["rest.bind-address"] == conf["rest.address"] == "127.0.0.1"
    for untouched in (FlinkConfig(), FlinkConfig(rest_port=-1)):  # run_job picks; a cluster's
        conf = flink_configuration(untouched, RunOptions(), tmp_path).to_dict()
        assert "rest.port" not in conf and "rest.bind-port" not in conf


# ---- the operator's counters (the JVM operator counts, Flink's REST reports, we serve)

OP = "ProcessTableFunction[4]"  # Flink's metric ids: <operator>[.<group>.<value>].<metric>
ROWS = [
    {"id": f"{OP}.plum_flink_records_in_total", "sum": 10.0, "max": 10.0},
    {"id": f"{OP}.plum_flink_records_accepted_total", "sum": 7.0, "max": 7.0},
    {"id": f"{OP}.plum_flink_watermark_lag_ms", "sum": 900.0, "max": 500.0},
    {"id": f"{OP}.reason.late.plum_deadletter_total", "sum": 2.0, "max": 2.0},
    {"id": f"{OP}.reason.not_json.plum_deadletter_total", "sum": 1.0, "max": 1.0},
]


def test_operator_metric_ids_are_picked_from_a_vertex_listing():
    listed = [r["id"] for r in ROWS] + [f"{OP}.numRecordsIn", "Source__x.numBytesOut"]
    assert operator_metric_ids(listed) == [r["id"] for r in ROWS]


def test_operator_metrics_sum_over_subtasks_and_the_lag_is_the_largest():
    s = parse_operator_metrics(ROWS)
    assert s.values["plum_flink_records_in_total"] == 10
    assert s.values["plum_flink_watermark_lag_ms"] == 500  # max, not the sum over subtasks
    assert s.dead_by_reason == {"late": 2.0, "not_json": 1.0}


def test_the_operator_counters_are_served_under_the_catalogue_names_and_labels():
    m = OperatorMetrics("w.v1", "sft.v1")
    m.update(parse_operator_metrics(ROWS))
    v = m.metrics.value
    assert v("plum_flink_records_in_total", topic="w.v1") == 10
    assert v("plum_flink_records_accepted_total", topic="w.v1") == 7
    assert v("plum_flink_records_out_total", topic="sft.v1") == 0  # present from the start
    late = dict(component="flink", source_topic="w.v1", reason="late")
    assert v("plum_deadletter_total", **late) == 2
    # the next poll adds what was counted since
    rows = [dict(r, sum=r["sum"] + 5) for r in ROWS]
    m.update(parse_operator_metrics(rows))
    assert v("plum_flink_records_in_total", topic="w.v1") == 15
    assert v("plum_deadletter_total", **late) == 7
    # a restarted job counts from 0 again: the served counter never goes back
    m.update(parse_operator_metrics([{"id": f"{OP}.plum_flink_records_in_total", "sum": 3.0}]))
    assert v("plum_flink_records_in_total", topic="w.v1") == 18
