"""The dashboard as a server: usable from Python (a context manager, or a component of
plum.runtime in a thread) and as `plum dashboard up`, which stops on SIGTERM with exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from monitoring.dashboards.config import DashboardConfig
from monitoring.dashboards.server import DashboardServer, dashboard_runtime
from plum.ports import free_port

REPO = Path(__file__).resolve().parents[2]
ALERTS = {"status": "success", "data": {"alerts": []}}


def fake_prometheus() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, json=ALERTS))


def refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_the_server_answers_on_a_free_port_until_closed():
    config = DashboardConfig(port=0, prometheus_url="http://prom.test:9090")
    with DashboardServer(config, fake_prometheus()) as server:
        assert server.port and server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
        assert httpx.get(f"{server.url}/api/alerts", timeout=5).json() == ALERTS
        assert "/static/dashboard.js" in httpx.get(f"{server.url}/", timeout=5).text
    assert refused(server.url)


def test_on_the_runtime_it_runs_until_stopped():
    server = DashboardServer(DashboardConfig(port=0), fake_prometheus())
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=dashboard_runtime(server, stop).run()))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while server.port is None or refused(server.url):
            assert thread.is_alive() and time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert result["r"].reason == "stopped"
    assert refused(server.url)


def test_plum_dashboard_up_serves_and_exits_0_on_sigterm(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "dashboard.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plum.cli", "dashboard", "up", "--config",
             str(REPO / "configs" / "test.toml"), "--port", "0", "--prometheus", closed],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"dashboard on (http://\S+)", log_path.read_text())):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"no 'dashboard on' line: {log_path.read_text()}"
            time.sleep(0.1)
        url = found.group(1)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        down = httpx.get(f"{url}/api/alerts", timeout=10)
        assert down.status_code == 502 and closed in down.json()["detail"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert refused(url)


@pytest.mark.parametrize("flag", ["--port", "--prometheus"])
def test_bad_flags_are_refused_in_one_line(flag, tmp_path):
    value = {"--port": "99999", "--prometheus": "not a url"}[flag]
    done = subprocess.run(
        [sys.executable, "-m", "plum.cli", "dashboard", "up", "--config",
         str(REPO / "configs" / "test.toml"), flag, value],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "plum dashboard up:" in done.stderr
