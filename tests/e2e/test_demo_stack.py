"""The embedded stack as `make demo` runs it, watched the way its operators watch it.

`plum demo` starts everything for real, on free ports, with test-sized settings and a
private state directory: the broker, Prometheus, the dashboard, the Kafka exporter, the
simulator in real time (event time = wall time), the Flink job, the SID service, CPT and
the continuous trainer, the publisher and serving. Then, through Prometheus' HTTP API and
the dashboard page in headless Chromium:

- every panel of monitoring/panels.py has a series that Prometheus scraped from the
  running components (nothing here feeds a metric);
- the freshness numbers move: a served model, uploads servable in seconds, the served
  model's newest event minutes old at most;
- an alert fires (malformed events at 5% put each reason's dead-letter rate over the
  test threshold) and the page lists it;
- a screenshot of the page lands in the test's output directory;
- SIGTERM stops the demo with exit 0 and nothing of it is left running.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitoring.panels import BY_KEY, PANELS
from plum.config import REPO_ROOT
from plum.ports import free_port
from tests.browser_support import chromium, page_error, save_screenshot, wait_for_panels

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

log = logging.getLogger(__name__)

STACK_DEADLINE_S = 900.0  # first model served and every panel with data (2 cores, loaded)
STOP_DEADLINE_S = 240.0


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    log_path: Path
    state: Path
    prometheus: str
    dashboard: str
    serving: str

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def demo_env(state: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The environment of a demo on free ports and test-sized settings."""
    ports = {
        name: free_port()
        for name in (
            "kafka",
            "controller",
            "simulator",
            "exporter",
            "flink",
            "flink_rest",
            "flink_job",
            "sid_service",
            "trainer",
            "serving",
            "serving_metrics",
            "publisher",
            "prometheus",
            "dashboard",
        )
    }
    overrides = {
        "PLUM_STATE_DIR": str(state),
        "PLUM_KAFKA__PORT": ports["kafka"],
        "PLUM_KAFKA__CONTROLLER_PORT": ports["controller"],
        "PLUM_DEMO__SIMULATOR_METRICS_PORT": ports["simulator"],
        "PLUM_DEMO__EXPORTER_METRICS_PORT": ports["exporter"],
        "PLUM_DEMO__EXPORTER_INTERVAL_S": 2.0,
        "PLUM_DEMO__TRAINER_METRICS_PORT": ports["trainer"],
        "PLUM_FLINK__METRICS_PORT": ports["flink"],
        "PLUM_FLINK__REST_PORT": ports["flink_rest"],
        "PLUM_FLINK__JOB_METRICS_PORT": ports["flink_job"],
        "PLUM_SID_SERVICE__METRICS_PORT": ports["sid_service"],
        "PLUM_SERVING__PORT": ports["serving"],
        "PLUM_SERVING__METRICS_PORT": ports["serving_metrics"],
        "PLUM_PUBLISHER__METRICS_PORT": ports["publisher"],
        "PLUM_PUBLISHER__PUSH_TIMEOUT_S": 60.0,
        "PLUM_PROMETHEUS__PORT": ports["prometheus"],
        "PLUM_DASHBOARD__PORT": ports["dashboard"],
        "PLUM_DASHBOARD__RANGE_S": 600.0,
        "PLUM_DASHBOARD__REFRESH_S": 2.0,
        # a busier platform in real time, and 5% malformed events (the dead-letter alert)
        "PLUM_SIMULATOR__EVENTS": 0,
        "PLUM_SIMULATOR__WATCHES_PER_SIM_SECOND": 60.0,
        "PLUM_SIMULATOR__NEW_UPLOADS_PER_SIM_MINUTE": 120.0,
        "PLUM_DEMO__BAD_FRACTION": 0.05,
        "PLUM_ALERTS__DEADLETTER_RATE_PER_S": 0.1,  # per component and reason
        "PLUM_DEMO__CPT_MIN_SIDS": 100,
        "PLUM_DEMO__CPT_MIN_EXAMPLES": 50,
        "PLUM_DEMO__CPT_STEPS": 10,
        "PLUM_DEMO__TOKENIZER_STEPS": 100,
        "PLUM_DEMO__TOKENIZER_ITEMS": 500,
        "PLUM_DEMO__GRACE_S": 90.0,
    }
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in overrides.items()})
    return env, ports


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("demo")
    env, ports = demo_env(root / "state")
    log_path = root / "demo.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plum.cli", "demo", "--config", "configs/test.toml"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Stack(
        proc,
        log_path,
        root / "state",
        f"http://127.0.0.1:{ports['prometheus']}",
        f"http://127.0.0.1:{ports['dashboard']}/",
        f"http://127.0.0.1:{ports['serving']}",
    )
    try:
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        left = _kill_leftovers(root / "state")
        if left:
            log.warning("killed processes the demo left running: %s", left)


def stack_processes(state: Path) -> list[int]:
    """Pids of the processes run for the demo in `state` (its PLUM_STATE_DIR): the demo
    starts its children in sessions of their own, so they are found by environment."""
    marker = f"PLUM_STATE_DIR={state}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def _kill_leftovers(state: Path) -> list[int]:
    left = stack_processes(state)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def get_json(url: str, timeout_s: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return get_json(url)["data"]["result"]


def panels_without_data(prometheus: str) -> list[str]:
    """Keys of panels none of whose queries has a series right now."""
    empty = []
    for panel in PANELS:
        if not any(query(prometheus, q.expr) for q in panel.queries):
            empty.append(panel.key)
    return empty


def wait_until(what: str, check, stack: Stack, deadline_s: float, every_s: float = 5.0):
    """Polls `check()` until it returns a truthy value; fails naming `what` and the last
    state, with the demo's log tail, at the deadline or when the demo exits."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while True:
        if stack.proc.poll() is not None:
            pytest.fail(
                f"demo exited ({stack.proc.returncode}) waiting for {what}:\n{stack.tail()}"
            )
        try:
            got = check()
            if got:
                return got
            last = got
        except OSError as exc:  # not listening yet
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {deadline_s:.0f} s (last: {last!r}):\n{stack.tail()}")
        time.sleep(every_s)


@pytest.mark.timeout(STACK_DEADLINE_S + 120)
def test_every_panel_gets_data_from_the_running_stack(stack):
    def served_and_complete():
        status = get_json(f"{stack.serving}/v1/status")
        if not status.get("ready"):
            return None
        empty = panels_without_data(stack.prometheus)
        return status if not empty else None

    status = wait_until(
        "served model with every panel's data", served_and_complete, stack, STACK_DEADLINE_S
    )
    assert status["model"]["version"] >= 1 and status["index"]["items"] > 0
    assert panels_without_data(stack.prometheus) == []


def finite_value(result: list[dict]) -> float | None:
    """The first series' value when it is a number; None when there is no series or it is
    NaN (a quantile over a window in which nothing was observed)."""
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def test_freshness_is_measured_in_real_seconds(stack):
    # uploads become servable within seconds: the SID service and the publisher's deltas
    p95 = wait_until(
        "upload -> servable p95 over uploads observed in its window",
        lambda: finite_value(query(stack.prometheus, "plum:upload_to_servable_seconds:p95_5m")),
        stack,
        180,
    )
    assert 0 < p95 < 120
    # event time is wall time: the served model's newest event is minutes old, not years
    lag = query(stack.prometheus, "plum:served_model_event_lag_seconds:max")
    assert lag and 0 <= float(lag[0]["value"][1]) < 900
    up = {r["metric"]["job"]: r["value"][1] for r in query(stack.prometheus, "up")}
    expected = {
        "prometheus",
        "kafka",
        "simulator",
        "flink",
        "flink_job",
        "sid_service",
        "trainer",
        "serving",
        "publisher",
    }
    assert expected <= set(up) and all(up[j] == "1" for j in expected), up


def test_the_page_shows_every_panel_and_the_firing_alert(stack, tmp_path):
    def firing():
        alerts = get_json(f"{stack.prometheus}/api/v1/alerts")["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    fired = wait_until("firing alert", lambda: "DeadLettersHigh" in firing(), stack, 180)
    assert fired
    with chromium() as browser:
        browser.get(stack.dashboard)
        counts = wait_for_panels(browser, BY_KEY, timeout_s=60, min_series=1)
        assert set(counts) == set(BY_KEY) and min(counts.values()) >= 1
        assert not page_error(browser)
        deadline = time.monotonic() + 60
        shown: list[str] = []
        while "DeadLettersHigh" not in shown:
            assert time.monotonic() < deadline, f"alerts on the page: {shown}"
            time.sleep(1)
            shown = browser.execute_script(
                "return [...document.querySelectorAll('#alerts li.alert')]"
                ".map(li => li.dataset.alert)"
            )
        shot = save_screenshot(browser, tmp_path / "demo-dashboard.png")
        save_screenshot(browser, tmp_path / "demo-dashboard-full.png", full_page=True)
        log.info("screenshots of the demo's dashboard: %s", shot.parent)
        assert shot.stat().st_size > 20_000


@pytest.mark.timeout(STOP_DEADLINE_S + 60)
def test_sigterm_stops_the_whole_demo_with_exit_zero(stack):
    os.killpg(stack.proc.pid, signal.SIGTERM)
    try:
        code = stack.proc.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"demo still running {STOP_DEADLINE_S:.0f} s after SIGTERM:\n{stack.tail()}")
    assert code == 0, stack.tail()
    # nothing of the stack is left: no process runs with its private state directory
    assert stack_processes(stack.state) == []
