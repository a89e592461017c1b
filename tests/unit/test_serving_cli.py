"""`plum serve` on the runtime: listens on a free port written to port_file, loads the
newest version in the background (/readyz 503 until then), serves /metrics, and stops on
the runtime's stop (in a thread) or SIGTERM (a real process) with exit code 0."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.cli import ServingComponent, serving_runtime
from serving.config import ServingConfig
from tests.serving_support import TEST_SERVING, copy_tiny_repo, shared_search_cache

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout_s: float, what: str):
    """Poll `predicate` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def read_port(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def status_of(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


def test_component_serves_on_the_runtime_and_stops_cleanly(tmp_path):
    tiny = copy_tiny_repo(tmp_path / "models")
    cfg = ServingConfig(
        **TEST_SERVING,
        port=0,
        port_file=str(tmp_path / "serving.port"),
        model_repo=str(tiny.base_path),
        metrics_port=0,
        log_every_s=0.2,
    )
    component = ServingComponent(cfg, searches=shared_search_cache())
    stop = threading.Event()
    runtime = serving_runtime(component, stop)
    results = []
    thread = threading.Thread(target=lambda: results.append(runtime.run()))
    thread.start()
    try:
        port = wait_for(lambda: read_port(tmp_path / "serving.port"), 60, "the port file")
        url = f"http://127.0.0.1:{port}"
        assert port == component.port
        assert status_of(f"{url}/healthz") == 200
        wait_for(lambda: status_of(f"{url}/readyz") == 200, 60, "/readyz 200")
        r = httpx.post(
            f"{url}/v1/retrieve", json={"history": [{"video_id": "v1"}], "k": 3, "beam": 3}
        )
        assert r.status_code == 200 and r.json()["model_version"] == 2
        assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == "PLUM serving"
        metrics = httpx.get(f"http://127.0.0.1:{runtime.metrics_server.port}/metrics").text
        assert 'plum_serving_requests_total{route="/v1/retrieve",status="200"} 1.0' in metrics
        assert "plum_serving_model_version 2.0" in metrics
        wait_for(lambda: runtime.progress.count >= 1, 10, "the request in the progress count")
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and results[0].reason == "stopped"
    assert status_of(f"{url}/healthz") is None  # the port is closed


def test_plum_serve_process_exits_0_on_sigterm(tmp_path):
    port_file = tmp_path / "serve.port"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PLUM_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plum.cli",
            "serve",
            "--config",
            str(REPO / "configs" / "test.toml"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--model-repo",
            str(tmp_path / "empty-repo"),
            "--metrics-port",
            "-1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def listening():
            if proc.poll() is not None:
                pytest.fail(f"plum serve exited {proc.returncode}: {proc.stdout.read()}")
            return read_port(port_file)

        port = wait_for(listening, 120, "the port file")
        url = f"http://127.0.0.1:{port}"
        assert status_of(f"{url}/healthz") == 200
        assert status_of(f"{url}/readyz") == 503  # an empty repository: alive, not ready
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert f"serving on http://127.0.0.1:{port}" in out
