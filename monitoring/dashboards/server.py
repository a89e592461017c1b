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
import socket
import threading
import time
from types import TracebackType

import httpx

from monitoring.dashboards.app import create_app
from monitoring.dashboards.config import DashboardConfig, load_dashboard_config
from plum.runtime import Runtime, RuntimeConfig, Step

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30.0  # uvicorn's start on a socket already bound takes milliseconds
SHUTDOWN_TIMEOUT_S = 10.0
CHECK_EVERY_S = 5.0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


class DashboardServer:
    """The dashboard page served in a background thread (see the module docstring)."""

    def __init__(
        self, config: DashboardConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self.port: int | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the dashboard is not started")
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        import uvicorn

        app = create_app(self.config, self._transport)
        sock = _bind(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="on",  # the app's Prometheus client opens and closes with it
                log_config=None,  # leave logging to plum's setup
                access_log=False,
                log_level="warning",
                timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT_S),
            )
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="dashboard-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(
                    f"the dashboard on {self.config.host}:{self.port} exited at start"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start within {STARTUP_TIMEOUT_S} s")
            self._thread.join(0.01)  # wakes early if the thread dies
        log.info("dashboard on %s (Prometheus %s)", self.url, self.config.prometheus_url)

    def step(self, stop: threading.Event) -> Step:
        stop.wait(CHECK_EVERY_S)
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError("the dashboard's HTTP server thread exited")
        return Step(done=0, active=True)

    def checkpoint(self) -> None:
        """Nothing to keep: the page holds no state."""

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_S + 5)
            if self._thread.is_alive():
                log.warning("the dashboard's HTTP server did not stop within its grace period")

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
