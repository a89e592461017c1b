"""`plum prometheus up` as a component of plum.runtime: the runtime owns SIGTERM/SIGINT
and the progress line; the component starts the server, checks every `check_every_s`
that it is still running (and reports how many targets are up and alerts firing), and
stops it on close."""

from __future__ import annotations

import threading

from monitoring.prometheus.server import PrometheusError, PrometheusServer
from plum.runtime import Step


class PrometheusComponent:
    def __init__(self, server: PrometheusServer, check_every_s: float = 10.0) -> None:
        self.server = server
        self.check_every_s = check_every_s
        self._status = "starting"

    def start(self) -> None:
        self.server.start()

    def step(self, stop: threading.Event) -> Step:
        stop.wait(self.check_every_s)
        if not self.server.running:
            raise PrometheusError(f"prometheus exited; see {self.server.log_path}")
        try:
            targets = self.server.active_targets()
            firing = [a for a in self.server.alerts() if a.get("state") == "firing"]
        except PrometheusError as err:
            self._status = f"API not answering ({err})"
            return Step(active=True)
        up = sum(1 for t in targets if t.get("health") == "up")
        names = sorted({a["labels"]["alertname"] for a in firing})
        self._status = f"{up}/{len(targets)} targets up, {len(firing)} alerts firing" + (
            f" ({', '.join(names)})" if names else ""
        )
        return Step(active=True)

    def checkpoint(self) -> None:
        """Nothing here: Prometheus persists its own TSDB on SIGTERM."""

    def close(self) -> None:
        self.server.stop()

    def describe(self) -> str:
        return f"{self.server.url if self.server.port else ''} {self._status}".strip()
