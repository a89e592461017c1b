"""`plum dashboard`: the dashboard app served by uvicorn, as a component of plum.runtime.

    start   uvicorn in a background thread on a socket bound here (port 0 is known at
            once); once it listens, "dashboard on http://HOST:PORT" goes to the log
    step    waits (or until stopped) and checks the server thread is alive
    close   stops uvicorn and joins its thread

`DashboardServer` is also a context manager, for the demo and tests that run the page
beside other things: `with DashboardServer(config) as server: server.url`.
The runtime owns SIGTERM/SIGINT (uvicorn outside the main thread installs no handler):
a signal ends the step, close() runs, the exit code is 0.
"""

from __future__ import annotations

import argparse
import logging
import threading
from types import TracebackType

import httpx

from monitoring.dashboards.app import create_app
from monitoring.dashboards.config import DashboardConfig, load_dashboard_config
from plum.http_server import ThreadedServer
from plum.ports import http_url
from plum.runtime import Runtime, RuntimeConfig, Step

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
CHECK_EVERY_S = 5.0


class DashboardServer:
    """The dashboard page served in a background thread (see the module docstring)."""

    def __init__(
        self, config: DashboardConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self.port: int | None = None
        self._http: ThreadedServer | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the dashboard is not started")
        return http_url(self.config.host, self.port)

    def start(self) -> None:
        self._http = ThreadedServer(
            create_app(self.config, self._transport),
            self.config.host,
            self.config.port,
            "dashboard-http",
            lifespan="on",  # the app's Prometheus client opens and closes with it
            shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
        )
        self.port = self._http.start()
        log.info("dashboard on %s (Prometheus %s)", self.url, self.config.prometheus_url)

    def step(self, stop: threading.Event) -> Step:
        stop.wait(CHECK_EVERY_S)
        if self._http is not None and not self._http.alive():
            raise RuntimeError("the dashboard's HTTP server thread exited")
        return Step(done=0, active=True)

    def checkpoint(self) -> None:
        """Nothing to keep: the page holds no state."""

    def close(self) -> None:
        if self._http is not None:
            self._http.stop()

    def describe(self) -> str:
        return f"{self.url} reading {self.config.prometheus_url}" if self.port else "starting"

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def dashboard_runtime(server: DashboardServer, stop: threading.Event | None = None) -> Runtime:
    """The page as `plum dashboard` runs it (tests run it in a thread with their own `stop`)."""
    return Runtime(
        server,
        RuntimeConfig(name="dashboard", unit="checks", progress_every_s=3600.0),
        stop=stop,
    )


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum dashboard",
        description="Serve the monitoring page: firing alerts, components up, every panel.",
    )
    parser.add_argument("--config", help="TOML config (default $PLUM_CONFIG or configs/demo.toml)")
    parser.add_argument("--prometheus", help="Prometheus base URL ([dashboard].prometheus_url)")
    parser.add_argument("--host", help="listen address ([dashboard].host)")
    parser.add_argument("--port", type=int, help="listen port; 0 = a free one ([dashboard].port)")
    args = parser.parse_args(argv)
    config = load_dashboard_config(
        args.config, prometheus_url=args.prometheus, host=args.host, port=args.port
    )
    result = dashboard_runtime(DashboardServer(config)).run()
    log.info("dashboard stopped (%s)", result.reason)
    return 0
