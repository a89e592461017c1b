"""`plum simulate`: produce simulated video-platform traffic to Kafka.

The records come from the pure, seeded generator in `streams.simulator.stream` (latent
world in `streams.simulator.world`, malformed records in `streams.simulator.faults`);
this module only produces them: pacing to `--rate`, a progress line with rate and ETA,
the `plum_simulator_*` metrics, `/metrics` with `--metrics-port`, and a clean stop on
SIGINT/SIGTERM (flush what was sent, write the ground truth, exit 0).

    plum simulate [--config PATH] [--bootstrap HOST:PORT] [--seed N]
                  [--events N | --seconds S] [--rate R] [--bad-fraction F]
                  [--out-of-order-fraction F] [--truth PATH] [--topic-prefix P] [--replay]
                  [--metrics-port PORT]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from monitoring.metrics import Metrics, serve_metrics
from plum.config import ConfigError, state_dir
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
    "cli",
    "default_bootstrap",
    "generate",
    "load_config",
    "load_ground_truth",
    "run",
    "truth_path",
    "write_ground_truth",
]

log = logging.getLogger(__name__)

BOOTSTRAP_ENV = "PLUM_KAFKA_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
TRUTH_EVERY_S = 60.0  # long runs refresh the ground-truth file this often


def default_bootstrap() -> str:
    return os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


def truth_path(cfg: SimulatorConfig) -> Path:
    return (
        cfg.truth_path
        if cfg.truth_path is not None
        else state_dir() / "simulator" / "ground_truth.json"
    )


class _Progress:
    """Progress line every `every_s` seconds: count, rate, event time, videos, ETA."""

    def __init__(self, cfg: SimulatorConfig, metrics: Metrics):
        self.cfg = cfg
        self.metrics = metrics
        self.t0 = self.last_t = time.monotonic()
        self.last_n = 0

    def due(self, now: float) -> bool:
        return now - self.last_t >= self.cfg.progress_every_s

    def report(self, sim: Simulator, sent: int, now: float, final: bool = False) -> None:
        rate = (sent - self.last_n) / max(now - self.last_t, 1e-9)
        overall = sent / max(now - self.t0, 1e-9)
        self.metrics.gauge("plum_simulator_rate_events_per_second").set(rate)
        self.metrics.gauge("plum_simulator_event_time_ms").set(sim.now_ms)
        self.metrics.gauge("plum_simulator_videos").set(sim.world.published)
        self.last_t, self.last_n = now, sent
        event_time = datetime.fromtimestamp(sim.now_ms / 1000, tz=UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        done = self._fraction_done(sim, sent)
        if final:
            tail = f"done in {now - self.t0:.1f} s"
        elif done is None:
            tail = "ETA: runs until stopped"
        else:
            eta = (now - self.t0) * (1 - done) / max(done, 1e-9)
            tail = f"{done:.1%} done, ETA {eta:.0f} s"
        log.info(
            "simulate: %d records (%.0f/s now, %.0f/s overall), event time %s, %d videos, %s",
            sent,
            rate,
            overall,
            event_time,
            sim.world.published,
            tail,
        )

    def _fraction_done(self, sim: Simulator, sent: int) -> float | None:
        fractions = []
        if self.cfg.events:
            fractions.append(sent / self.cfg.events)
        if self.cfg.seconds:
            fractions.append((sim.now_ms - self.cfg.start_epoch_ms) / (self.cfg.seconds * 1000.0))
        return min(1.0, max(fractions)) if fractions else None


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
    Returns 1 when the broker rejected records.
    """
    bootstrap = bootstrap or default_bootstrap()
    metrics = metrics or Metrics.for_component("simulator")
    stop = stop or threading.Event()
    sim = Simulator(cfg)
    truth_file = truth_path(cfg)
    server = serve_metrics(metrics, metrics_port) if metrics_port is not None else None
    if server is not None:
        log.info("simulate: metrics on http://127.0.0.1:%d/metrics", server.port)
    restore = _install_signal_handlers(stop)
    own_producer = producer is None
    errors: list[BaseException] = []
    log.info(
        "simulate: seed %d -> %s, %s (bootstrap %s, %s, rate %s)",
        cfg.seed,
        sim.upload_topic,
        sim.watch_topic,
        bootstrap,
        f"{cfg.events} records"
        if cfg.events
        else (f"{cfg.seconds} simulated s" if cfg.seconds else "no limit"),
        f"{cfg.rate:g}/s" if cfg.rate else "max",
    )
    try:
        if own_producer:
            try:
                producer = make_producer(bootstrap)
            except KafkaError as exc:
                log.error(
                    "simulate: cannot reach Kafka at %s (is it up? `plum kafka up`): %s",
                    bootstrap,
                    exc,
                )
                return 1
        counter = metrics.counter("plum_simulator_events_total")
        progress = _Progress(cfg, metrics)
        last_truth = time.monotonic()
        sent = 0
        records = sim.records()
        while True:
            # Wait before taking the next record, so a stop never leaves one drawn but
            # unsent: the ground truth's record count is exactly what was produced.
            if cfg.rate > 0:
                ahead = progress.t0 + sent / cfg.rate - time.monotonic()
                if ahead > 0.001:
                    stop.wait(ahead)
            if stop.is_set():
                log.info("simulate: stop requested after %d records", sent)
                break
            rec = next(records, None)
            if rec is None:
                break
            future = producer.send(rec.topic, key=rec.key, value=rec.value)
            future.add_errback(errors.append)
            counter.labels(topic=rec.topic, kind=rec.kind).inc()
            sent += 1
            now = time.monotonic()
            if progress.due(now):
                progress.report(sim, sent, now)
                if now - last_truth >= TRUTH_EVERY_S:
                    write_ground_truth(truth_file, sim.ground_truth())
                    last_truth = now
        producer.flush()
        progress.report(sim, sent, time.monotonic(), final=True)
    finally:
        if own_producer and producer is not None:
            producer.close()
        restore()
        write_ground_truth(truth_file, sim.ground_truth())
        log.info("simulate: ground truth in %s", truth_file)
        if server is not None:
            server.close()
    if errors:
        log.error(
            "simulate: %d records were not delivered; first error: %r", len(errors), errors[0]
        )
        return 1
    return 0


def _install_signal_handlers(stop: threading.Event):
    """SIGINT/SIGTERM set `stop`; returns a function that puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum, _frame):
        log.info("simulate: %s received, flushing and stopping", signal.Signals(signum).name)
        stop.set()

    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plum simulate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        type=Path,
        help="TOML with a [simulator] table (default: $PLUM_CONFIG or configs/demo.toml)",
    )
    p.add_argument(
        "--bootstrap", help=f"Kafka bootstrap (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP})"
    )
    p.add_argument("--seed", type=int)
    dur = p.add_mutually_exclusive_group()
    dur.add_argument("--events", type=int, help="records to produce in all (0: no limit)")
    dur.add_argument("--seconds", type=float, help="simulated seconds to run")
    p.add_argument(
        "--rate", type=float, help="records per wall-clock second (0: as fast as possible)"
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
    }
    # One duration flag replaces both limits of the config, so they cannot disagree.
    if args.events is not None:
        overrides.update(events=args.events, seconds=0.0)
    if args.seconds is not None:
        overrides.update(seconds=args.seconds, events=0)
    cfg = load_config(args.config, **{k: v for k, v in overrides.items() if v is not None})
    return cfg


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        log.error("simulate: %s", exc)
        return 2
    return run(cfg, args.bootstrap or default_bootstrap(), metrics_port=args.metrics_port)
