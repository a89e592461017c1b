"""The Debian `prometheus` binary as a child process, and a small client of its HTTP API.

    with PrometheusServer(config, targets, state) as prom:   # STATE/prometheus/...
        prom.query('up{job="serving"}')

`start()` writes STATE/prometheus/prometheus.yml (scrape jobs) and rules.yml (recording
and alert rules), starts the server in its own process group with its log in
STATE/prometheus/prometheus.log and returns once `/-/ready` answers; `stop()` sends
SIGTERM (Prometheus flushes its head block) and SIGKILL after a grace period. Port 0 in
the config means a free port, chosen here (Prometheus cannot report one it picked); if
another process takes it first, start retries on a new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitoring.prometheus.config import AlertThresholds, PrometheusConfig
from monitoring.prometheus.scrape import ScrapeTarget, scrape_config, write_prometheus_yml
from monitoring.rules import write_rules
from plum.ports import free_port, http_url

log = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
HTTP_TIMEOUT_S = 10.0
FREE_PORT_ATTEMPTS = 3
INSTALL_HINT = (
    "run `make setup` (or `sudo apt-get install prometheus`, which installs promtool too)"
)


class PrometheusNotInstalled(FileNotFoundError):
    """The prometheus (or promtool) executable is not on PATH."""


class PrometheusError(RuntimeError):
    """The server did not start, or its HTTP API answered with an error."""


def find_executable(name: str) -> str:
    """The path of `name` (a command on PATH or a path), or PrometheusNotInstalled."""
    found = shutil.which(name)
    if found is None:
        raise PrometheusNotInstalled(f"{name!r} not found on PATH: {INSTALL_HINT}")
    return found


class PrometheusServer:
    """One Prometheus scraping `targets`, its files under `state_dir`/prometheus.

    `state_dir` is the stack's state root (STATE); `data_dir` (default
    STATE/prometheus/data) is the TSDB. Use it as a context manager or call `start()` and
    `stop()`; `.url` and `.port` are known once started.
    """

    def __init__(
        self,
        config: PrometheusConfig,
        targets: Sequence[ScrapeTarget],
        state_dir: Path | str,
        thresholds: AlertThresholds | None = None,
        data_dir: Path | str | None = None,
    ) -> None:
        self.config = config
        self.targets = tuple(targets)
        self.thresholds = thresholds or AlertThresholds()
        self.home = Path(state_dir) / "prometheus"
        self.data_dir = Path(data_dir) if data_dir is not None else self.home / "data"
        self.config_path = self.home / "prometheus.yml"
        self.rules_path = self.home / "rules.yml"
        self.log_path = self.home / "prometheus.log"
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ life

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("the server is not started")
        return http_url(self.config.host, self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PrometheusServer:
        """Write the config and rules, start the server, wait until it is ready."""
        if self.running:
            return self
        binary = find_executable(self.config.binary)
        self.home.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_rules(self.rules_path, self.thresholds)
        attempts = FREE_PORT_ATTEMPTS if self.config.port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self.config.port or free_port(self.config.host)
            self._launch(binary, port)
            try:
                self._wait_ready()
                break
            except PrometheusError:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                if not exited or attempt == attempts:
                    raise
                log.warning("prometheus exited at start on port %d; trying another", port)
        log.info(
            "prometheus on %s scraping %s (config %s)",
            self.url,
            ", ".join(sorted({t.job for t in self.targets})) or "itself only",
            self.config_path,
        )
        return self

    def _launch(self, binary: str, port: int) -> None:
        self.port = port
        document = scrape_config(
            self.targets, self.config, [self.rules_path.name], f"{self.config.host}:{port}"
        )
        write_prometheus_yml(self.config_path, document)
        cmd = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self.config.retention}",
            f"--web.listen-address={self.config.host}:{port}",
            "--web.enable-lifecycle",
        ]
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self._proc.returncode} at start: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise PrometheusError(
            f"prometheus not ready on {self.url} within {self.config.startup_timeout_s} s: "
            f"{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text[-lines:]) + f" (log: {self.log_path})"

    def stop(self) -> int | None:
        """SIGTERM to the server's process group, SIGKILL after STOP_GRACE_S; its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("prometheus did not stop in %.0f s: killing it", STOP_GRACE_S)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def wait(self) -> int:
        """Block until the server exits (the foreground `plum prometheus up`)."""
        if self._proc is None:
            raise PrometheusError("the server is not started")
        return self._proc.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP API

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET /api/v1/`path` and return its `data`; PrometheusError on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise PrometheusError(f"GET {url}: HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, OSError) as err:
            raise PrometheusError(f"GET {url}: {err}") from err
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now: [{"metric": {labels}, "value": float}]."""
        data = self.api("query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing): name, state, labels, annotations, value."""
        return self.api("alerts")["alerts"]

    def active_targets(self) -> list[dict[str, Any]]:
        """Scrape targets with their health ("up"/"down"/"unknown") and last error."""
        return self.api("targets", {"state": "active"})["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
