"""The dashboard app: the page and its assets from this origin only, the panel definitions
as JSON, and a bounded proxy to Prometheus (faked here with httpx.MockTransport) whose
failures are problem documents with the reason."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from monitoring.dashboards.app import STATIC_DIR, create_app, panel_queries, plotly_js_path
from monitoring.dashboards.config import MAX_POINTS, DashboardConfig, load_dashboard_config
from monitoring.panels import PANELS, ROWS
from plum.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PROM = "http://prom.test:9090"
EXPR = PANELS[0].queries[0].expr
MATRIX = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [{"metric": {"job": "serving"}, "values": [[1700000000, "4.2"]]}],
    },
}
ALERTS = {
    "status": "success",
    "data": {
        "alerts": [
            {
                "labels": {"alertname": "ComponentDown", "severity": "page", "job": "trainer"},
                "annotations": {"summary": "trainer is down"},
                "state": "firing",
                "value": "0e+00",
            }
        ]
    },
}


class FakePrometheus:
    """Records every request; answers with `handler(request)`."""

    def __init__(self, handler):
        self.requests: list[httpx.Request] = []
        self.handler = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def ok(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/api/v1/query_range":
        return httpx.Response(200, json=MATRIX)
    if request.url.path == "/api/v1/alerts":
        return httpx.Response(200, json=ALERTS)
    return httpx.Response(404, text="404 page not found")


def client_for(handler, **config) -> tuple[TestClient, FakePrometheus]:
    fake = FakePrometheus(handler)
    cfg = DashboardConfig(prometheus_url=PROM, **config)
    return TestClient(create_app(cfg, httpx.MockTransport(fake))), fake


def range_params(query: str = EXPR, start: float = 1000, end: float = 4600, step: float = 18):
    return {"query": query, "start": start, "end": end, "step": step}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["demo.toml", "test.toml"])
def test_repo_configs_load(name):
    cfg = load_dashboard_config(REPO / "configs" / name, env={})
    assert cfg.prometheus_url.startswith("http://")


def test_env_and_flags_override_the_file():
    cfg = load_dashboard_config(
        REPO / "configs" / "demo.toml",
        env={"PLUM_DASHBOARD__REFRESH_S": "30"},
        prometheus_url="http://10.0.0.5:9090",
        port=None,
    )
    assert (cfg.refresh_s, cfg.prometheus_url, cfg.port) == (30.0, "http://10.0.0.5:9090", 8500)


@pytest.mark.parametrize(
    "bad",
    [
        {"prometheus_url": "127.0.0.1:9090"},
        {"prometheus_url": ""},
        {"port": 70000},
        {"refresh_s": 0.5},
        {"range_s": 10},
        {"timeout_s": 0},
        {"host": ""},
    ],
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        DashboardConfig(**bad)


@pytest.mark.parametrize("range_s", [600, 3600, 3700, 86400])
def test_the_step_gives_about_two_hundred_points(range_s):
    points = range_s / DashboardConfig(range_s=range_s).step_s
    assert 190 <= points <= 210


def test_the_step_is_never_under_a_second():
    assert DashboardConfig(range_s=60).step_s == 1


# ---------------------------------------------------------------- the page and assets


def test_the_page_loads_plotly_and_its_script_from_this_origin_only():
    client, fake = client_for(ok)
    with client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert "/static/plotly.min.js" in sources and "/static/dashboard.js" in sources
        for name in ("dashboard.js", "dashboard.css"):
            asset = client.get(f"/static/{name}")
            assert asset.status_code == 200 and asset.text == (STATIC_DIR / name).read_text()
        plotly = client.get("/static/plotly.min.js")
        assert plotly.status_code == 200
        assert plotly.content == plotly_js_path().read_bytes()
        assert plotly_js_path().parts[-3:] == ("plotly", "package_data", "plotly.min.js")
    assert not fake.requests  # the page itself never needs Prometheus
    for path in STATIC_DIR.iterdir():  # no CDN, no font or script from elsewhere
        assert not re.search(r"https?://", path.read_text()), path.name


def test_healthz_answers_without_prometheus():
    client, _ = client_for(lambda r: httpx.Response(500))
    with client:
        assert client.get("/healthz").json() == {"status": "ok"}


def test_panels_are_served_as_defined_in_monitoring_panels():
    client, _ = client_for(ok, range_s=3600, refresh_s=15)
    with client:
        doc = client.get("/api/panels").json()
    assert [r["key"] for r in doc["rows"]] == list(ROWS)
    assert [p["key"] for p in doc["panels"]] == [p.key for p in PANELS]
    for got, panel in zip(doc["panels"], PANELS, strict=True):
        assert [(q["expr"], q["legend"]) for q in got["queries"]] == [
            (q.expr, q.legend) for q in panel.queries
        ]
        assert (got["unit"], got["slo"], got["slo_label"], got["jobs"]) == (
            panel.unit,
            panel.slo,
            panel.slo_label,
            list(panel.jobs),
        )
    assert (doc["range_s"], doc["refresh_s"], doc["step_s"]) == (3600, 15, 18)


# ---------------------------------------------------------------- the proxy


def test_query_range_is_forwarded_to_prometheus_and_answered_as_is():
    client, fake = client_for(ok)
    with client:
        got = client.get("/api/query_range", params=range_params())
    assert got.status_code == 200 and got.json() == MATRIX
    (request,) = fake.requests
    assert str(request.url).startswith(f"{PROM}/api/v1/query_range?")
    assert dict(request.url.params) == {
        "query": EXPR,
        "start": "1000.0",
        "end": "4600.0",
        "step": "18.0",
    }


def test_every_panel_query_is_allowed_and_nothing_else():
    assert panel_queries() == {q.expr for p in PANELS for q in p.queries}
    client, fake = client_for(ok)
    with client:
        for expr in sorted(panel_queries()):
            assert client.get("/api/query_range", params=range_params(expr)).status_code == 200
        got = client.get("/api/query_range", params=range_params('count({__name__=~".+"})'))
    assert got.status_code == 400
    assert got.headers["content-type"] == "application/problem+json"
    assert "not one of the panels' queries" in got.json()["detail"]
    assert len(fake.requests) == len(panel_queries())  # the refused one never left


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (range_params(start=5000, end=4000), "end - start"),
        (range_params(start=0, end=MAX_POINTS + 10, step=1), f"more than {MAX_POINTS} points"),
        (range_params(step=0), "step"),
        ({"query": EXPR, "start": 1, "end": 2}, "step"),
        (range_params(start="yesterday"), "start"),
    ],
)
def test_bad_ranges_are_400_problems_and_never_reach_prometheus(params, reason):
    client, fake = client_for(ok)
    with client:
        got = client.get("/api/query_range", params=params)
    assert got.status_code == 400, got.text
    assert got.headers["content-type"] == "application/problem+json"
    assert reason in got.json()["detail"]
    assert not fake.requests


def test_alerts_are_forwarded():
    client, fake = client_for(ok)
    with client:
        got = client.get("/api/alerts")
    assert got.status_code == 200 and got.json() == ALERTS
    assert fake.requests[0].url.path == "/api/v1/alerts"


def test_prometheus_down_is_a_502_problem_naming_it():
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a real refusal
    with TestClient(create_app(DashboardConfig(prometheus_url=closed, timeout_s=2))) as client:
        for got in (
            client.get("/api/alerts"),
            client.get("/api/query_range", params=range_params()),
        ):
            assert got.status_code == 502
            assert got.headers["content-type"] == "application/problem+json"
            body = got.json()
            assert body["status"] == 502 and body["title"] == "Bad Gateway"
            assert closed in body["detail"] and "unreachable" in body["detail"]


def test_a_slow_prometheus_is_a_504_within_the_timeout():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client, _ = client_for(slow, timeout_s=1.5)
    with client:
        got = client.get("/api/query_range", params=range_params())
    assert got.status_code == 504
    assert "did not answer within 1.5 s" in got.json()["detail"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            httpx.Response(
                400, json={"status": "error", "errorType": "bad_data", "error": "parse error"}
            ),
            "answered 400: bad_data: parse error",
        ),
        (httpx.Response(503, text="Service Unavailable"), "answered 503: Service Unavailable"),
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, json={"status": "error", "error": "boom"}), "'error': boom"),
    ],
)
def test_a_prometheus_error_answer_is_a_502_with_its_reason(answer, reason):
    client, _ = client_for(lambda r: answer)
    with client:
        got = client.get("/api/query_range", params=range_params())
    assert got.status_code == 502
    assert reason in got.json()["detail"]
