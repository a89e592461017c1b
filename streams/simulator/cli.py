"""`plum simulate`: produce simulated video-platform traffic to Kafka.

The records come from the pure, seeded generator in `streams.simulator.stream` (latent
world in `streams.simulator.world`, malformed records in `streams.simulator.faults`);
this module only produces them, as a component of `plum.runtime`: each step sends the
next records, paced to `--rate`; the runtime prints the progress line (rate, and ETA from
`--events` or the simulated seconds), serves `/metrics` with `--metrics-port`, and on
SIGINT/SIGTERM lets the step in hand finish, then checkpoints: flush what was sent,
write the ground truth, exit 0.

    plum simulate [--config PATH] [--bootstrap HOST:PORT] [--seed N]
                  [--events N | --seconds S] [--rate R] [--bad-fraction F]
                  [--out-of-order-fraction F] [--truth PATH] [--topic-prefix P] [--replay]
                  [--metrics-port PORT]
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from monitoring.metrics import Metrics
from plum.config import ConfigError, kafka_bootstrap, state_dir
from plum.runtime import Clock, Runtime, RuntimeConfig, Step
from streams.kafka.clients import make_producer
from streams.simulator.config import SimulatorConfig, load_config
from streams.simulator.stream import (
    VALID,
    SimRecord,
    Simulator,
    generate,
    load_ground_truth,
    write_ground_truth,
)

__all__ = [
    "VALID",
    "SimRecord",
    "Simulator",
    "SimulatorConfig",
    "SimulatorProducer",
    "default_bootstrap",
    "generate",
    "load_config",
    "load_ground_truth",
    "run",
    "simulate",
    "truth_path",
    "write_ground_truth",
]

log = logging.getLogger(__name__)

TRUTH_EVERY_S = 60.0  # long runs refresh the ground-truth file this often
STEP_RECORDS = 2000  # a step ends after this many records ...
STEP_S = 0.2  # ... or this much wall time, so a stop is seen promptly at any rate


def default_bootstrap(config_path: Path | str | None = None) -> str:
    """[kafka] host:port of the config (default: $PLUM_CONFIG or configs/demo.toml)."""
    return kafka_bootstrap(config_path)


def truth_path(cfg: SimulatorConfig) -> Path:
    return (
        cfg.truth_path
        if cfg.truth_path is not None
        else state_dir() / "simulator" / "ground_truth.json"
    )


class SimulatorProducer:
    """The simulator as a runtime component: sends the seeded stream to Kafka.

    A step sends records until `STEP_RECORDS` or `STEP_S`, waiting before each record
    as the rate (and in real time, the record's simulated time) requires; it checks `stop` before drawing a record, so a stop never
    leaves one drawn but unsent and the ground truth's count is exactly what was
    produced. `checkpoint` flushes the producer and writes the ground truth.
    """

    def __init__(
        self,
        cfg: SimulatorConfig,
        bootstrap: str,
        metrics: Metrics,
        producer: Any = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        if cfg.real_time:
            cfg = cfg.replace(start_epoch_ms=int(wall_clock() * 1000))
        self.cfg, self.bootstrap, self.metrics = cfg, bootstrap, metrics
        self.sim = Simulator(cfg)
        self.truth_file = truth_path(cfg)
        self.producer = producer
        self._own_producer = producer is None
        self._clock = clock
        self._records = self.sim.records()
        self.sent = 0
        self.errors: list[BaseException] = []  # delivery failures reported by the producer
        self._counter = metrics.counter("plum_simulator_events_total")
        self._rate = metrics.gauge("plum_simulator_rate_events_per_second")
        self._event_time = metrics.gauge("plum_simulator_event_time_ms")
        self._videos = metrics.gauge("plum_simulator_videos")
        self._t0 = self._last_truth = self._rate_t = clock()
        self._rate_n = 0

    def start(self) -> None:
        if self.producer is None:
            self.producer = make_producer(self.bootstrap)
        self._t0 = self._last_truth = self._rate_t = self._clock()

    def step(self, stop: threading.Event) -> Step:
        rate = self.cfg.rate
        deadline = self._clock() + STEP_S
        n, finished = 0, False
        while not stop.is_set():
            if rate > 0:
                ahead = self._t0 + self.sent / rate - self._clock()
                if ahead > 0.001 and stop.wait(ahead):
                    break
            rec = next(self._records, None)
            if rec is None:
                finished = True
                break
            if self.cfg.real_time:  # a stop while waiting still sends the record drawn
                due = self._t0 + (rec.now_ms - self.cfg.start_epoch_ms) / 1000 - self._clock()
                if due > 0.001:
                    stop.wait(due)
            self.producer.send(rec.topic, key=rec.key, value=rec.value).add_errback(
                self.errors.append
            )
            self._counter.labels(topic=rec.topic, kind=rec.kind).inc()
            self.sent += 1
            n += 1
            if n >= STEP_RECORDS or self._clock() >= deadline:
                break
        self._update_gauges()
        if self._clock() - self._last_truth >= TRUTH_EVERY_S:
            write_ground_truth(self.truth_file, self.sim.ground_truth())
            self._last_truth = self._clock()
        return Step(done=n, finished=finished)

    def _update_gauges(self, final: bool = False) -> None:
        now = self._clock()
        if final or now - self._rate_t >= self.cfg.progress_every_s:
            self._rate.set((self.sent - self._rate_n) / max(now - self._rate_t, 1e-9))
            self._rate_t, self._rate_n = now, self.sent
        self._event_time.set(self.sim.now_ms)
        self._videos.set(self.sim.world.published)

    def fraction_done(self) -> float | None:
        """Share of the simulated seconds done (None without a `seconds` limit)."""
        if not self.cfg.seconds:
            return None
        return (self.sim.now_ms - self.cfg.start_epoch_ms) / (self.cfg.seconds * 1000.0)

    def checkpoint(self) -> None:
        self.producer.flush()
        self._update_gauges(final=True)
        write_ground_truth(self.truth_file, self.sim.ground_truth())
        log.info("simulate: %d records flushed; ground truth in %s", self.sent, self.truth_file)

    def close(self) -> None:
        if self._own_producer and self.producer is not None:
            self.producer.close()

    def describe(self) -> str:
        event_time = datetime.fromtimestamp(self.sim.now_ms / 1000, tz=UTC)
        return (
            f"event time {event_time.strftime('%Y-%m-%dT%H:%M:%SZ')}, "
            f"{self.sim.world.published} videos"
        )


def run(
    cfg: SimulatorConfig,
    bootstrap: str | None = None,
    *,
    metrics: Metrics | None = None,
    metrics_port: int | None = None,
    stop: threading.Event | None = None,
    producer: Any = None,
) -> int:
    """Produce the simulated stream to Kafka until done or stopped; 0 on success.

    `stop` ends the run early (SIGINT/SIGTERM set it when `run` is called from the main
    thread). Everything sent is flushed and the ground truth written before returning.
    Returns 1 when Kafka cannot be reached or the broker rejected records.
    """
    bootstrap = bootstrap or default_bootstrap()
    metrics = metrics or Metrics.for_component("simulator")
    component = SimulatorProducer(cfg, bootstrap, metrics, producer)
    runtime = Runtime(
        component,
        RuntimeConfig(
            name="simulate",
            unit="records",
            metrics_port=metrics_port,
            progress_every_s=cfg.progress_every_s,
            total=cfg.events or None,
        ),
        registry=metrics.registry,
        stop=stop,
        fraction=component.fraction_done,
    )
    log.info(
        "simulate: seed %d -> %s, %s (bootstrap %s, %s, rate %s)",
        cfg.seed,
        component.sim.upload_topic,
        component.sim.watch_topic,
        bootstrap,
        f"{cfg.events} records"
        if cfg.events
        else (f"{cfg.seconds} simulated s" if cfg.seconds else "no limit"),
        f"{cfg.rate:g}/s" if cfg.rate else "max",
    )
    try:
        runtime.run()
    except KafkaError as exc:
        log.error("simulate: Kafka at %s failed (is it up? `plum kafka up`): %s", bootstrap, exc)
        return 1
    if component.errors:
        log.error(
            "simulate: %d records were not delivered; first error: %r",
            len(component.errors),
            component.errors[0],
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plum simulate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        type=Path,
        help="TOML with a [simulator] table (default: $PLUM_CONFIG or configs/demo.toml)",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap HOST:PORT (default: [kafka] of the config)")
    p.add_argument("--seed", type=int)
    dur = p.add_mutually_exclusive_group()
    dur.add_argument("--events", type=int, help="records to produce in all (0: no limit)")
    dur.add_argument("--seconds", type=float, help="simulated seconds to run")
    p.add_argument(
        "--rate", type=float, help="records per wall-clock second (0: as fast as possible)"
    )
    p.add_argument(
        "--real-time",
        action="store_true",
        default=None,
        help="event time = wall time: the clock starts now and runs at wall speed",
    )
    p.add_argument("--bad-fraction", type=float, help="P(a malformed record follows a valid one)")
    p.add_argument("--out-of-order-fraction", type=float, help="P(a watch is produced late)")
    p.add_argument("--truth", type=Path, help="where to write the ground-truth JSON")
    p.add_argument("--topic-prefix", help="prefix of every topic name")
    p.add_argument("--replay", action="store_true", default=None, help="write to the replay topics")
    p.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port (0: any free port)"
    )
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    overrides: dict[str, Any] = {
        "seed": args.seed,
        "rate": args.rate,
        "bad_fraction": args.bad_fraction,
        "out_of_order_fraction": args.out_of_order_fraction,
        "truth_path": args.truth,
        "topic_prefix": args.topic_prefix,
        "replay": args.replay,
        "real_time": args.real_time,
    }
    # One duration flag replaces both limits of the config, so they cannot disagree.
    if args.events is not None:
        overrides.update(events=args.events, seconds=0.0)
    if args.seconds is not None:
        overrides.update(seconds=args.seconds, events=0)
    cfg = load_config(args.config, **{k: v for k, v in overrides.items() if v is not None})
    return cfg


def simulate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        bootstrap = args.bootstrap or default_bootstrap(args.config)
    except ConfigError as exc:
        log.error("simulate: %s", exc)
        return 2
    return run(cfg, bootstrap, metrics_port=args.metrics_port)
