"""The dashboard page in a real headless Chromium, reading a real Prometheus that scrapes
real /metrics endpoints: every panel drawn from monitoring/panels.py's queries, the SLO
line and a late value in red, one chip per component (a dead target shows DOWN), the
alerts Prometheus fires listed on top; and, with Prometheus gone, the reason on the page.
A screenshot of each lands in the test's output directory."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator

import pytest

from monitoring.dashboards.config import DashboardConfig
from monitoring.dashboards.server import DashboardServer
from monitoring.metrics import Metrics, serve_metrics
from monitoring.panels import BY_KEY, PANELS
from monitoring.prometheus.config import AlertThresholds, PrometheusConfig
from monitoring.prometheus.scrape import ScrapeTarget
from monitoring.prometheus.server import PrometheusServer
from plum.ports import free_port
from tests.browser_support import chromium, page_error, save_screenshot, wait_for_panels

log = logging.getLogger(__name__)

COMPONENTS = ("simulator", "flink", "sid_service", "trainer", "serving", "publisher", "kafka")
DEAD_JOB = "flink_job"  # a target nobody serves: up == 0, its chip DOWN, ComponentDown fires
LATE_S = 45.0  # every upload takes this long: above the 30 s SLO, the headline turns red


def feed(metrics: dict[str, Metrics], stop: threading.Event) -> None:
    """Samples for every series a panel reads, renewed twice a second (rates and histogram
    quantiles need fresh increments between scrapes)."""
    rng = random.Random(0)
    step = 0
    while not stop.wait(0.5):
        now_ms = 1000 * time.time()
        s = metrics["serving"]
        for _ in range(5):
            s.histogram("plum_serving_upload_to_servable_seconds").observe(LATE_S)
            s.histogram("plum_serving_sid_to_servable_seconds").observe(rng.uniform(0.5, 2))
            s.histogram("plum_serving_request_seconds").labels("/v1/retrieve").observe(0.04)
        s.counter("plum_serving_requests_total").labels("/v1/retrieve", "200").inc(10)
        s.gauge("plum_serving_model_event_lag_seconds").set(120)
        s.gauge("plum_serving_model_age_seconds").set(60)
        sid = metrics["sid_service"]
        sid.histogram("plum_sid_upload_to_sid_seconds").observe(rng.uniform(0.1, 1))
        sid.counter("plum_sid_assignments_total").labels("v2").inc(2)
        tr = metrics["trainer"]
        step += 3
        tr.gauge("plum_trainer_step").set(step)
        tr.gauge("plum_trainer_loss").set(2.5 + rng.random())
        tr.gauge("plum_trainer_newest_event_ts").set(now_ms - 200_000)
        tr.gauge("plum_trainer_last_checkpoint_ts").set(now_ms - 30_000)
        tr.counter("plum_trainer_examples_total").labels("fresh").inc(4)
        tr.gauge("plum_trainer_consumer_lag").labels("0").set(100)
        metrics["simulator"].counter("plum_simulator_events_total").labels("events", "watch").inc(
            20
        )
        fl = metrics["flink"]
        fl.counter("plum_flink_records_in_total").labels("events").inc(20)
        fl.counter("plum_flink_examples_sampled_total").inc(5)
        fl.gauge("plum_flink_watermark_lag_ms").set(30_000)
        fl.counter("plum_deadletter_total").labels("flink", "events", "malformed").inc()
        metrics["kafka"].gauge("plum_kafka_consumer_lag_records").labels(
            "plum.events.v1", "0", "flink"
        ).set(rng.randint(0, 40))
        p = metrics["publisher"]
        p.gauge("plum_publisher_gate_recall").labels("candidate").set(0.21)
        p.counter("plum_publisher_rejections_total").labels("regression").inc(0)


@pytest.fixture
def prometheus(tmp_path) -> Iterator[PrometheusServer]:
    metrics = {c: Metrics(c) for c in COMPONENTS}
    servers = [serve_metrics(metrics[c], 0) for c in COMPONENTS]
    targets = [
        ScrapeTarget(c, "127.0.0.1", s.port) for c, s in zip(COMPONENTS, servers, strict=True)
    ]
    targets.append(ScrapeTarget(DEAD_JOB, "127.0.0.1", free_port()))
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(metrics, stop), name="feed", daemon=True)
    feeder.start()
    server = PrometheusServer(
        PrometheusConfig(port=0, scrape_interval_s=1, evaluation_interval_s=1),
        targets,
        tmp_path / "state",
        AlertThresholds(component_down_for="1s"),
    )
    try:
        with server:
            yield server
    finally:
        stop.set()
        feeder.join(5)
        for s in servers:
            s.close()


def firing(prom: PrometheusServer) -> set[tuple[str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"].get("job", ""))
        for a in prom.alerts()
        if a["state"] == "firing"
    }


def test_the_page_draws_every_panel_chip_and_alert_from_a_real_prometheus(prometheus, tmp_path):
    config = DashboardConfig(port=0, prometheus_url=prometheus.url, refresh_s=1, range_s=300)
    with DashboardServer(config) as dashboard, chromium() as browser:
        browser.get(dashboard.url)
        # Every panel with data: each query's series arrived through the page's proxy.
        counts = wait_for_panels(browser, BY_KEY, timeout_s=60, min_series=1)
        assert counts["components_up"] == len(COMPONENTS) + 1
        assert not page_error(browser)

        # Alerts: the page lists exactly what Prometheus fires (ComponentDown for the dead job).
        def shown() -> set[tuple[str, str]]:
            return {
                tuple(x)
                for x in browser.execute_script(
                    "return [...document.querySelectorAll('#alerts li.alert')]"
                    ".map(li => [li.dataset.alert, li.dataset.job || ''])"
                )
            }

        deadline = time.monotonic() + 60
        while not (want := firing(prometheus)) or shown() != want:
            assert time.monotonic() < deadline, (want, shown())
            time.sleep(0.5)
        assert ("ComponentDown", DEAD_JOB) in want

        chips = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#components .chip')]"
            ".map(c => [c.dataset.job, c.dataset.state]))"
        )
        assert chips == {**{c: "up" for c in COMPONENTS}, DEAD_JOB: "down"}

        # The freshness SLO: the dashed line with its label, the late p95 headline in red;
        # the latency panel under its SLO in green.
        fresh = browser.find_element("id", "panel-upload_to_servable")
        assert BY_KEY["upload_to_servable"].slo_label in fresh.text
        assert "bad" in fresh.find_element("css selector", ".value").get_attribute("class")
        latency = browser.find_element("id", "panel-serving_latency")
        assert "good" in latency.find_element("css selector", ".value").get_attribute("class")

        # Legends are the queries' legends with the series' labels in place of {{label}}.
        names = browser.execute_script(
            "return document.querySelector('#panel-consumer_lag .plot').data.map(t => t.name)"
        )
        assert any(n.startswith("flink · plum.events.v1") for n in names), names
        every = browser.execute_script(
            "return [...document.querySelectorAll('.panel .plot')].flatMap(d => d.data.map(t => t.name))"
        )
        assert len(every) >= len(PANELS) and not any("{{" in n for n in every), every

        shot = save_screenshot(browser, tmp_path / "dashboard.png")
        save_screenshot(browser, tmp_path / "dashboard-full.png", full_page=True)
        log.info("screenshots: %s and %s", shot, tmp_path / "dashboard-full.png")
        assert shot.stat().st_size > 20_000  # a drawn page, not a blank one


def test_with_prometheus_gone_the_page_says_why(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    config = DashboardConfig(port=0, prometheus_url=closed, refresh_s=1, range_s=300)
    with DashboardServer(config) as dashboard, chromium() as browser:
        browser.get(dashboard.url)
        counts = wait_for_panels(browser, BY_KEY, timeout_s=30)
        assert set(counts.values()) == {0}
        assert closed in page_error(browser) and "unreachable" in page_error(browser)
        errors = browser.execute_script(
            "return [...document.querySelectorAll('.panel')].map(p => p.dataset.error || '')"
        )
        assert len(errors) == len(PANELS) and all(closed in e for e in errors)
        alerts = browser.find_element("id", "alerts")
        assert not alerts.find_elements("css selector", "li.alert")
        assert "alerts unavailable" in alerts.text
        chips = browser.execute_script(
            "return [...document.querySelectorAll('#components .chip')].map(c => c.dataset.state)"
        )
        assert chips and set(chips) == {"unknown"}
        save_screenshot(browser, tmp_path / "dashboard-prometheus-down.png")
