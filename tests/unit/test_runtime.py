"""plum.runtime with fake components and a fake clock: how a run ends, what it calls."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from plum.runtime import MetricsServer, Progress, Runtime, RuntimeConfig, Step


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A component whose steps run the given functions in turn; records what was called."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def step(self, stop: threading.Event) -> Step:
        self.calls.append("step")
        return self.steps.pop(0)(stop)

    def checkpoint(self) -> None:
        self.calls.append("checkpoint")

    def close(self) -> None:
        self.calls.append("close")

    def describe(self) -> str:
        return "scripted"


def test_sigterm_mid_step_finishes_the_step_checkpoints_and_returns_stopped():
    before = signal.getsignal(signal.SIGTERM)

    def terminated_mid_step(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(10), "SIGTERM did not set stop"
        return Step(done=5)  # the step in hand still completes

    component = Scripted(terminated_mid_step)
    result = Runtime(component, RuntimeConfig("test")).run()
    assert result.reason == "stopped" and result.steps == 1 and result.done == 5
    assert component.calls == ["start", "step", "checkpoint", "close"]
    assert signal.getsignal(signal.SIGTERM) is before  # the old handler is back


def test_a_run_idles_out_after_idle_exit_s_of_quiet_input():
    clock = FakeClock()

    def tick(active):
        def step(_stop):
            clock.now += 1.0
            return Step(done=int(active), active=active)

        return step

    # Two steps with input, then quiet ones: the third quiet second ends the run.
    component = Scripted(*[tick(True)] * 2, *[tick(False)] * 10)
    result = Runtime(component, RuntimeConfig("test", idle_exit_s=3.0), clock=clock).run()
    assert result.reason == "idle" and result.steps == 5 and result.done == 2
    assert component.calls[-2:] == ["checkpoint", "close"]


def test_without_idle_exit_quiet_input_never_ends_a_run():
    clock = FakeClock()

    def quiet(_stop):
        clock.now += 1000.0
        return Step(active=False)

    component = Scripted(*[quiet] * 5, lambda _stop: Step(finished=True))
    result = Runtime(component, RuntimeConfig("test"), clock=clock).run()
    assert result.reason == "finished" and result.steps == 6


def test_metrics_are_served_while_the_component_runs_and_not_after():
    registry = CollectorRegistry()
    Gauge("plum_test_value", "a test gauge", registry=registry).set(42)
    scraped: list[str] = []
    runtime: Runtime

    def scrape(_stop):
        url = f"http://127.0.0.1:{runtime.metrics_server.port}/metrics"
        scraped.append(urllib.request.urlopen(url, timeout=10).read().decode())
        return Step(finished=True)

    runtime = Runtime(Scripted(scrape), RuntimeConfig("test", metrics_port=0), registry=registry)
    runtime.run()
    assert "plum_test_value 42.0" in scraped[0]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_server.port}/metrics", timeout=5)


@pytest.mark.parametrize("port", [None, -1])
def test_no_metrics_port_or_a_negative_one_serves_no_metrics(port):
    runtime = Runtime(
        Scripted(lambda _stop: Step(finished=True)),
        RuntimeConfig("test", metrics_port=port),
        registry=CollectorRegistry(),
    )
    assert runtime.run().reason == "finished"
    assert runtime.metrics_server is None


def test_an_error_closes_the_component_without_a_checkpoint():
    def broken(_stop):
        raise ValueError("bad step")

    component = Scripted(broken)
    with pytest.raises(ValueError, match="bad step"):
        Runtime(component, RuntimeConfig("test")).run()
    assert component.calls == ["start", "step", "close"]


def test_progress_line_has_the_rate_and_an_eta_for_a_bounded_run():
    clock = FakeClock()
    progress = Progress("load", "videos", total=100, clock=clock, detail=lambda: "index 7")
    clock.now = 10.0
    progress.add(25)
    line = progress.line()
    assert line.startswith("load: 25 videos (2.50/s now, 2.50/s overall), index 7")
    assert line.endswith("25.0% done, 00:10 elapsed, ETA 00:30")
    assert Progress("serve", clock=clock).line().endswith("runs until stopped")


def test_progress_rates_are_since_the_last_line_and_long_times_read_as_hours():
    clock = FakeClock()
    progress = Progress("import", total=50_000_000, clock=clock)
    clock.now = 100.0
    progress.add(1_000_000)  # 10k/s
    progress.line()
    clock.now = 200.0
    progress.add(3_000_000)  # 30k/s in the last 100 s, 20k/s overall
    line = progress.line()
    assert "(30.0k/s now, 20.0k/s overall)" in line
    # 8% in 200 s: 92% left at that pace is 2300 s
    assert line.endswith("8.0% done, 03:20 elapsed, ETA 38:20")
    clock.now = 7_400.0
    assert progress.line(final=True).endswith("| done in 2:03:20")


def test_a_fraction_bounds_a_run_without_a_count_total():
    clock = FakeClock()
    progress = Progress("simulate", fraction=lambda: 0.4, clock=clock)
    clock.now = 20.0
    assert progress.line().endswith("40.0% done, 00:20 elapsed, ETA 00:30")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_live_bar_counts_instead_of_periodic_lines_and_the_final_line_is_still_logged(
    caplog, monkeypatch
):
    clock = FakeClock()
    caplog.set_level("INFO", logger="plum.runtime")
    monkeypatch.setattr(sys, "stderr", stream := Terminal())
    progress = Progress("train", "steps", every_s=1.0, total=40, clock=clock)
    assert progress.bar is not None
    clock.now = 5.0
    progress.add(10)
    assert progress.bar.n == 10
    assert not progress.maybe_report()  # due, but the bar shows it
    progress.report(final=True)
    assert progress.bar is None
    assert "10/40" in stream.getvalue()
    assert caplog.messages == ["train: 10 steps (2.00/s now, 2.00/s overall) | done in 00:05"]
    # without a terminal (a log file) or a total, no bar: the periodic lines
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert Progress("train", total=40).bar is None
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert Progress("serve").bar is None
    quiet = Progress("search", total=3)
    quiet.add(3)
    quiet.close()  # the caller logs its own outcome: the bar ends, no line
    assert quiet.bar is None and len(caplog.messages) == 1


def test_metrics_bind_the_address_of_plum_metrics_host(monkeypatch):
    # A pod sets PLUM_METRICS_HOST=0.0.0.0 (deploy/k8s) so probes and Prometheus reach
    # /metrics; without it the server stays on loopback.
    monkeypatch.delenv("PLUM_METRICS_HOST", raising=False)
    local = MetricsServer(CollectorRegistry(), 0)
    monkeypatch.setenv("PLUM_METRICS_HOST", "0.0.0.0")
    everywhere = MetricsServer(CollectorRegistry(), 0)
    try:
        assert local._httpd.server_address[0] == "127.0.0.1"
        assert everywhere._httpd.server_address[0] == "0.0.0.0"
    finally:
        local.close()
        everywhere.close()
