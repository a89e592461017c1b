"""The dashboard's HTTP app: the page, its assets, the panel definitions and a bounded
proxy to Prometheus.

    GET /                     the page (static/index.html)
    GET /static/plotly.min.js Plotly from the installed plotly wheel (nothing from a CDN)
    GET /static/*             dashboard.js, dashboard.css
    GET /api/panels           monitoring.panels as JSON, with refresh_s, range_s and step_s
    GET /api/query_range      Prometheus /api/v1/query_range, for the panels' queries only
    GET /api/alerts           Prometheus /api/v1/alerts
    GET /healthz              the app answers (says nothing about Prometheus)

The browser talks only to this origin. The proxy runs no PromQL but the panels' own
(anything else is a 400), so the page cannot be turned into a way to run costly queries,
and every call to Prometheus is bounded by `timeout_s`. When Prometheus is down, slow or
answers with an error the answer is a problem document (application/problem+json) with
the reason, which the page shows in place of the chart: 502 (unreachable or an error
answer) or 504 (no answer within timeout_s).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from monitoring.dashboards.config import MAX_POINTS, DashboardConfig
from monitoring.panels import PANELS, ROW_TITLES, ROWS
from plum.problems import ProblemError, problem_response

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_RANGE_S = 7 * 86400


def plotly_js_path() -> Path:
    """plotly.min.js as the plotly wheel installs it (plotly/package_data/plotly.min.js)."""
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the pinned plotly (make setup)")
    return path


def panel_queries() -> frozenset[str]:
    """Every expression the proxy runs: exactly the panels' queries."""
    return frozenset(q.expr for p in PANELS for q in p.queries)


def panels_document(config: DashboardConfig) -> dict[str, Any]:
    """What the page draws: rows in reading order, every panel with its queries, the SLO
    line and the jobs it covers, and the refresh settings."""
    return {
        "refresh_s": config.refresh_s,
        "range_s": config.range_s,
        "step_s": config.step_s,
        "rows": [{"key": row, "title": ROW_TITLES[row]} for row in ROWS],
        "panels": [
            asdict(p) | {"jobs": list(p.jobs), "queries": [asdict(q) for q in p.queries]}
            for p in PANELS
        ],
    }


def _prometheus_error(response: httpx.Response) -> str:
    """Prometheus' own reason from an error answer (its JSON `error`), else the body's start."""
    try:
        body = response.json()
        return f"{body.get('errorType', 'error')}: {body.get('error', '')}".strip()
    except ValueError:
        return response.text[:200]


def create_app(
    config: DashboardConfig, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The dashboard app for `config`; `transport` replaces the network (unit tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=config.prometheus_url, timeout=config.timeout_s, transport=transport
        ) as client:
            app.state.prometheus = client
            yield

    app = FastAPI(
        title="PLUM Stream dashboard",
        description="Freshness, throughput, quality and errors, read from Prometheus.",
        lifespan=lifespan,
    )
    allowed = panel_queries()
    plotly_js = plotly_js_path()
    index_html = STATIC_DIR / "index.html"

    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return problem_response(400, f"{where}: {first['msg']}")

    async def prometheus_get(request: Request, path: str, params: dict[str, Any]) -> Any:
        client: httpx.AsyncClient = request.app.state.prometheus
        where = f"Prometheus at {config.prometheus_url}"
        try:
            response = await client.get(path, params=params)
        except httpx.TimeoutException as exc:
            detail = f"{where} did not answer within {config.timeout_s} s"
            raise ProblemError(504, detail) from exc
        except httpx.HTTPError as exc:
            detail = f"{where} is unreachable: {type(exc).__name__}: {exc}"
            raise ProblemError(502, detail) from exc
        if response.status_code != 200:
            reason = _prometheus_error(response)
            raise ProblemError(502, f"{where} answered {response.status_code}: {reason}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ProblemError(502, f"{where} answered something that is not JSON") from exc
        if body.get("status") != "success":
            raise ProblemError(502, f"{where} answered {body.get('status')!r}: {body.get('error')}")
        return body

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index_html, media_type="text/html")

    @app.get("/static/plotly.min.js", include_in_schema=False)
    async def plotly() -> FileResponse:
        return FileResponse(
            plotly_js,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/panels")
    async def panels() -> dict[str, Any]:
        return panels_document(config)

    @app.get("/api/query_range")
    async def query_range(
        request: Request,
        query: str = Query(max_length=2000),
        start: float = Query(),
        end: float = Query(),
        step: float = Query(gt=0),
    ) -> Any:
        if query not in allowed:
            raise ProblemError(400, "query is not one of the panels' queries (see /api/panels)")
        if not 0 < end - start <= MAX_RANGE_S:
            raise ProblemError(400, f"end - start must be in (0, {MAX_RANGE_S}] s")
        if (end - start) / step > MAX_POINTS:
            raise ProblemError(400, f"more than {MAX_POINTS} points: use a larger step")
        params = {"query": query, "start": start, "end": end, "step": step}
        return await prometheus_get(request, "/api/v1/query_range", params)

    @app.get("/api/alerts")
    async def alerts(request: Request) -> Any:
        return await prometheus_get(request, "/api/v1/alerts", {})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
