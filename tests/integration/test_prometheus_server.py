"""A real Prometheus (the Debian binary) scraping a real component /metrics endpoint:
targets up, samples through the HTTP API, a recording rule evaluated, an alert firing
for a target that does not answer, and a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from deploy.local.demo import DemoConfig
from deploy.prometheus.targets import stack_targets
from monitoring.metrics import Metrics, serve_metrics
from monitoring.prometheus.config import load_alert_thresholds, load_prometheus_config
from monitoring.prometheus.scrape import ScrapeTarget
from monitoring.prometheus.server import PrometheusError, PrometheusServer
from plum.config import REPO_ROOT
from plum.ports import free_port
from tests.prometheus_support import tool, wait_for

TEST_TOML = REPO_ROOT / "configs" / "test.toml"
TIMEOUT_S = 20.0  # scrape and evaluation every 0.5 s: anything takes a few of those


@pytest.fixture(scope="module")
def serving_metrics():
    """A serving /metrics with a model age and uploads servable after 45 s each, observed
    continuously (a rate needs the histogram to grow between scrapes)."""
    metrics = Metrics.for_component("serving")
    metrics.gauge("plum_serving_model_age_seconds").set(123.0)
    server = serve_metrics(metrics, 0)
    stop = threading.Event()

    def observe() -> None:
        while not stop.wait(0.1):
            metrics.histogram("plum_serving_upload_to_servable_seconds").observe(45.0)

    feeder = threading.Thread(target=observe, daemon=True)
    feeder.start()
    try:
        yield server.port
    finally:
        stop.set()
        feeder.join(5)
        server.close()


@pytest.fixture(scope="module")
def prometheus(serving_metrics, tmp_path_factory):
    tool("prometheus")
    silent = free_port()  # nothing listens here: the "trainer" is down
    targets = [
        ScrapeTarget("serving", "127.0.0.1", serving_metrics),
        ScrapeTarget("trainer", "127.0.0.1", silent),
    ]
    server = PrometheusServer(
        load_prometheus_config(TEST_TOML, env={}),
        targets,
        tmp_path_factory.mktemp("state"),
        thresholds=load_alert_thresholds(TEST_TOML, env={}),
    )
    with server:
        yield server


def _values(server: PrometheusServer, expr: str) -> dict[str, float]:
    return {r["metric"].get("job", ""): r["value"] for r in server.query(expr)}


def test_a_scraped_component_is_up_and_its_samples_arrive(prometheus):
    def all_three():
        values = _values(prometheus, "up")
        return values if len(values) == 3 else None

    up = wait_for(
        all_three,
        TIMEOUT_S,
        "up for serving, trainer and prometheus itself",
    )
    assert up == {"serving": 1.0, "trainer": 0.0, "prometheus": 1.0}
    age = wait_for(
        lambda: _values(prometheus, "plum_serving_model_age_seconds"),
        TIMEOUT_S,
        "plum_serving_model_age_seconds",
    )
    assert age == {"serving": 123.0}


def test_a_recording_rule_evaluates_over_the_scraped_histogram(prometheus):
    # every observation is 45 s, in the (30, 60] bucket: p95 interpolates to 58.5 s
    p95 = wait_for(
        lambda: prometheus.query("plum:upload_to_servable_seconds:p95_5m"),
        TIMEOUT_S,
        "the recorded upload -> servable p95",
    )
    assert p95[0]["value"] == pytest.approx(58.5)
    groups = {g["name"]: g for g in prometheus.rule_groups()}
    assert set(groups) == {"plum_recording", "plum_alerts"}
    assert all(r["health"] != "err" for g in groups.values() for r in g["rules"])


def test_a_component_that_does_not_answer_fires_component_down(prometheus):
    def firing():
        return [
            a
            for a in prometheus.alerts()
            if a["state"] == "firing" and a["labels"]["alertname"] == "ComponentDown"
        ]

    alerts = wait_for(firing, TIMEOUT_S, "ComponentDown firing")
    assert [a["labels"]["job"] for a in alerts] == ["trainer"]
    assert alerts[0]["labels"]["severity"] == "page"
    instance = alerts[0]["labels"]["instance"]
    assert alerts[0]["annotations"]["summary"] == f"trainer: /metrics at {instance} does not answer"
    # the freshness SLO holds its breach for freshness_for (2 s in test.toml): it fires too
    breached = wait_for(
        lambda: [
            a
            for a in prometheus.alerts()
            if a["state"] == "firing" and a["labels"]["alertname"] == "UploadToServableSloBreached"
        ],
        TIMEOUT_S,
        "UploadToServableSloBreached firing",
    )
    assert "58.5 s" in breached[0]["annotations"]["summary"]


def test_start_and_stop_without_a_with_block(serving_metrics, tmp_path):
    server = PrometheusServer(
        load_prometheus_config(TEST_TOML, env={}),
        [ScrapeTarget("serving", "127.0.0.1", serving_metrics)],
        tmp_path,
    )
    server.start()
    try:
        assert server.running
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert (tmp_path / "prometheus" / "prometheus.yml").is_file()
        assert (tmp_path / "prometheus" / "data").is_dir()
    finally:
        code = server.stop()
    assert code == 0  # SIGTERM: Prometheus shuts down cleanly
    assert not server.running
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0, "port still listening"


def test_plum_prometheus_up_serves_the_stack_targets_and_exits_0_on_sigterm(tmp_path):
    tool("prometheus")
    port = free_port()
    env = {**os.environ, "PLUM_STATE_DIR": str(tmp_path), "PLUM_CONFIG": str(TEST_TOML)}
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "plum.cli", "prometheus", "up", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        server = PrometheusServer(
            load_prometheus_config(TEST_TOML, env={}, port=port), [], tmp_path
        )
        server.port = port  # a client of the server the command started

        def jobs():
            try:
                return {t["labels"]["job"] for t in server.active_targets()}
            except PrometheusError:
                return None

        expected = {t.job for t in stack_targets(TEST_TOML, DemoConfig, env={})} | {"prometheus"}
        assert wait_for(jobs, 60.0, "plum prometheus up answering") == expected
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "up.log").read_text()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "prometheus still listening"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
