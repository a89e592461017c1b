"""An ASGI app served by uvicorn in a background thread, for runtime components.

The socket is bound here, before uvicorn starts, so port 0 is known at once and a busy
port fails at start. Uvicorn runs outside the main thread and so installs no signal
handler: the runtime owns SIGTERM/SIGINT and calls `stop()` from the component's
`close()`. Serving and the dashboard page both run this way.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from plum.ports import host_port

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on host:port (0 = a free port; see getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class ThreadedServer:
    """`app` on host:port in a daemon thread; `start()` returns once it accepts requests."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        name: str,
        lifespan: str = "off",
        startup_timeout_s: float = 30.0,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        self.app, self.host, self.name = app, host, name
        self.lifespan = lifespan
        self.startup_timeout_s, self.shutdown_timeout_s = startup_timeout_s, shutdown_timeout_s
        self._requested_port = port
        self.port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind, start uvicorn and wait until it serves; returns the bound port."""
        import uvicorn

        sock = bind_socket(self.host, self._requested_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            loop="auto",  # uvloop when installed
            http="auto",  # httptools when installed
            lifespan=self.lifespan,
            log_config=None,  # leave logging to plum's setup
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=int(self.shutdown_timeout_s),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(
                    f"{self.name}: the HTTP server on {self.address} exited at start"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name}: the HTTP server did not start within {self.startup_timeout_s} s"
                )
            self._thread.join(0.01)  # wakes early if the thread dies
        return self.port

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ask uvicorn to exit (in-flight requests finish) and join its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.shutdown_timeout_s + 5)
            if self._thread.is_alive():
                log.warning("%s: the HTTP server did not stop within its grace period", self.name)
