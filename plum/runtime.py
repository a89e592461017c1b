"""The service runtime: the one place that owns a long-running component's life.

A component supplies its work as `start()`, `step(stop)`, `checkpoint()` and `close()`;
the runtime supplies the rest, the same way for every service:

    with stop_on_signals(stop):            # SIGTERM / SIGINT set `stop`, nothing else
        serve /metrics (when a port is set)
        component.start()
        while not stop:                     # finish the step in hand, never cut one short
            step = component.step(stop)     # poll -> process -> produce/commit, or a train step
            progress.add(step.done)         # a line with rate (and ETA when bounded)
            if step.finished or idle too long: break
        component.checkpoint()              # only after a clean stop: a crash checkpoints nothing
    component.close()                       # always

so a SIGTERM mid-batch finishes that batch, checkpoints and returns exit code 0, and
`idle_exit_s` ends a backfill or a test once its input has been quiet that long.

A component run by several processes in lockstep (the trainer under jax.distributed,
where every step and checkpoint is a collective) passes `agree`: before each step every
process offers its wish to end ("stopped", "idle" or None) and `agree` returns the joint
decision, so all processes leave the loop at the same step even when only one of them
got the signal.
The consume -> process -> produce+commit cycle of Kafka services is `plum.batch_cycle`,
a component built on this one.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler
from tqdm import tqdm

log = logging.getLogger(__name__)

Clock = Callable[[], float]
EndReason = Literal["stopped", "idle", "finished"]


# ---------------------------------------------------------------- signals


@contextmanager
def stop_on_signals(stop: threading.Event, name: str = "plum") -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set `stop` while inside the block; the old handlers come back after.

    Outside the main thread (a component run by a test in a thread) signals cannot be
    handled, and the block only yields `stop`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, _frame: object) -> None:
        log.info("%s: %s received, finishing the work in hand", name, signal.Signals(signum).name)
        # Set from another thread: the handler runs in the main thread between two
        # bytecodes, possibly while that thread holds `stop`'s internal lock inside
        # `stop.wait(...)`, and `stop.set()` here would then wait for it forever.
        threading.Thread(target=stop.set, name=f"{name}-stop", daemon=True).start()

    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- progress and idleness


class Progress:
    """A periodic log line: count, rate since the last line and overall, and an ETA.

    `total` (a count) or `fraction` (a callable for progress measured otherwise, e.g.
    simulated time) makes the run bounded and adds "x% done, elapsed, ETA"; without
    either the line says it runs until stopped. `detail` adds component-specific text.
    Rates and times are formatted by tqdm (SI-scaled rates, H:MM:SS intervals), so every
    component's line reads the same. With `total` and `live` (default: stderr is a
    terminal) a tqdm bar on stderr shows the count instead of the periodic lines; the
    final line is logged either way, so a log file always holds the outcome.
    """

    def __init__(
        self,
        name: str,
        unit: str = "records",
        every_s: float = 10.0,
        total: int | None = None,
        fraction: Callable[[], float | None] | None = None,
        detail: Callable[[], str] | None = None,
        clock: Clock = time.monotonic,
        logger: logging.Logger | None = None,
        live: bool | None = None,
    ) -> None:
        self.name, self.unit, self.every_s = name, unit, every_s
        self.total, self._fraction, self._detail = total, fraction, detail
        self._clock = clock
        self._log = logger or log
        self.count = 0
        self.t0 = self._last_t = clock()
        self._last_n = 0
        if live is None:
            live = sys.stderr.isatty()
        self.bar: tqdm | None = None
        if live and total:
            self.bar = tqdm(total=total, desc=name, unit=f" {unit}", dynamic_ncols=True)

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None and n:
            self.bar.update(n)

    def fraction_done(self) -> float | None:
        got = [self.count / self.total] if self.total else []
        extra = self._fraction() if self._fraction else None
        if extra is not None:
            got.append(extra)
        return min(1.0, max(got)) if got else None

    def eta_s(self) -> float | None:
        done = self.fraction_done()
        if done is None or done <= 0:
            return None
        return (self._clock() - self.t0) * (1 - done) / done

    def line(self, final: bool = False, detail: str | None = None) -> str:
        """The progress line; `detail` replaces the component's own text for this line."""
        now = self._clock()
        elapsed = now - self.t0
        rate = (self.count - self._last_n) / max(now - self._last_t, 1e-9)
        overall = self.count / max(elapsed, 1e-9)
        self._last_t, self._last_n = now, self.count
        done = self.fraction_done()
        if final:
            tail = f"done in {tqdm.format_interval(elapsed)}"
        elif done is None:
            tail = "runs until stopped"
        else:
            eta = self.eta_s()
            tail = f"{done:.1%} done, {tqdm.format_interval(elapsed)} elapsed"
            if eta is not None:
                tail += f", ETA {tqdm.format_interval(eta)}"
        if detail is None and self._detail is not None:
            detail = self._detail()
        detail = f", {detail}" if detail else ""
        return (
            f"{self.name}: {self.count} {self.unit} ({tqdm.format_sizeof(rate)}/s now, "
            f"{tqdm.format_sizeof(overall)}/s overall){detail} | {tail}"
        )

    def due(self) -> bool:
        return self._clock() - self._last_t >= self.every_s

    def maybe_report(self) -> bool:
        if self.bar is not None or not self.due():  # the live bar shows it already
            return False
        self._log.info(self.line())
        return True

    def report(self, final: bool = False, detail: str | None = None) -> None:
        if final:
            self.close()
        self._log.info(self.line(final=final, detail=detail))

    def close(self) -> None:
        """End the live bar (if any) without a line: work whose caller logs its own outcome."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class IdleClock:
    """Tracks how long input has been quiet; `idle_exit_s` 0 means never idle out."""

    def __init__(self, idle_exit_s: float, clock: Clock = time.monotonic) -> None:
        if idle_exit_s < 0:
            raise ValueError(f"idle_exit_s={idle_exit_s} must be >= 0")
        self.idle_exit_s = idle_exit_s
        self._clock = clock
        self._quiet_since = clock()

    def busy(self) -> None:
        self._quiet_since = self._clock()

    def quiet_s(self) -> float:
        return self._clock() - self._quiet_since

    def expired(self) -> bool:
        return bool(self.idle_exit_s) and self.quiet_s() >= self.idle_exit_s


# ---------------------------------------------------------------- /metrics


# The address every /metrics server binds when none is given: loopback on one machine;
# a pod sets PLUM_METRICS_HOST=0.0.0.0 so its probes and Prometheus reach it (deploy/k8s).
METRICS_HOST_ENV = "PLUM_METRICS_HOST"
DEFAULT_METRICS_HOST = "127.0.0.1"


def metrics_host() -> str:
    """$PLUM_METRICS_HOST, else loopback."""
    return os.environ.get(METRICS_HOST_ENV) or DEFAULT_METRICS_HOST


class MetricsServer:
    """Serves a registry on http://host:port/metrics in a daemon thread (port 0 = free;
    host None = `metrics_host()`)."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str | None = None):
        host = host or metrics_host()
        handler = type("Handler", (MetricsHandler,), {"registry": registry})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"metrics-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# ---------------------------------------------------------------- the component contract


@dataclass(frozen=True)
class Step:
    """What one `Component.step` did."""

    done: int = 0  # units of work completed (records, examples), for the progress line
    active: bool = True  # input arrived or is still expected soon: resets the idle clock
    finished: bool = False  # a bounded component has nothing left to do


class Component(Protocol):
    """A long-running component, as the runtime drives it."""

    def start(self) -> None:
        """Open clients, restore state; called once before the first step."""
        ...

    def step(self, stop: threading.Event) -> Step:
        """One unit of work; may return early (and should) once `stop` is set."""
        ...

    def checkpoint(self) -> None:
        """Make everything done so far durable; called once after a clean stop."""
        ...

    def close(self) -> None:
        """Release clients and threads; always called, also after an error."""
        ...

    def describe(self) -> str:
        """Component-specific text for the progress line."""
        ...


@dataclass(frozen=True)
class RuntimeConfig:
    name: str
    unit: str = "records"
    # None or negative (configs write -1): no /metrics server; 0: a free port
    metrics_port: int | None = None
    progress_every_s: float = 10.0
    idle_exit_s: float = 0.0  # 0: never stop for lack of input (the production setting)
    total: int | None = None  # a bounded run: the progress line gets an ETA


@dataclass(frozen=True)
class RunResult:
    reason: EndReason
    steps: int
    done: int
    seconds: float


class Runtime:
    """Runs one component to its end: stopped (signal or `stop`), idle, or finished."""

    def __init__(
        self,
        component: Component,
        config: RuntimeConfig,
        registry: CollectorRegistry | None = None,
        stop: threading.Event | None = None,
        fraction: Callable[[], float | None] | None = None,
        clock: Clock = time.monotonic,
        agree: Callable[[EndReason | None], EndReason | None] | None = None,
    ) -> None:
        """`agree`: see the module docstring (None: this process decides alone)."""
        self.component = component
        self.agree = agree
        self.config = config
        self.registry = registry
        self.stop = stop or threading.Event()
        self.metrics_server: MetricsServer | None = None
        self._clock = clock
        self.progress = Progress(
            config.name,
            config.unit,
            config.progress_every_s,
            total=config.total,
            fraction=fraction,
            detail=component.describe,
            clock=clock,
        )
        self.idle = IdleClock(config.idle_exit_s, clock)

    def run(self) -> RunResult:
        cfg = self.config
        started = self._clock()
        steps = 0
        with stop_on_signals(self.stop, cfg.name):
            try:
                serve = cfg.metrics_port is not None and cfg.metrics_port >= 0
                if serve and self.registry is not None:
                    self.metrics_server = MetricsServer(self.registry, cfg.metrics_port)
                    log.info(
                        "%s: metrics on http://%s:%d/metrics",
                        cfg.name,
                        metrics_host(),
                        self.metrics_server.port,
                    )
                self.component.start()
                self.idle.busy()  # start-up (compiles, index sync) is not idleness
                reason: EndReason | None = None
                while reason is None:
                    reason = self._end_wish()
                    if self.agree is not None:
                        reason = self.agree(reason)
                    if reason is not None:
                        break
                    step = self.component.step(self.stop)
                    steps += 1
                    self.progress.add(step.done)
                    if step.active:
                        self.idle.busy()
                    self.progress.maybe_report()
                    if step.finished:
                        reason = "finished"
                if reason == "idle":
                    log.info("%s: no input for %.1f s: stopping", cfg.name, cfg.idle_exit_s)
                self.component.checkpoint()
                self.progress.report(final=True)
            finally:
                try:
                    self.component.close()
                finally:
                    if self.metrics_server is not None:
                        self.metrics_server.close()
        return RunResult(reason, steps, self.progress.count, self._clock() - started)

    def _end_wish(self) -> EndReason | None:
        if self.stop.is_set():
            return "stopped"
        return "idle" if self.idle.expired() else None
