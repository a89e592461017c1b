"""`plum kafka up | down | status | topics`: the local KRaft broker and the topic set."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from plum.jvm import JvmSetupError
from streams.contracts.topics import topic_set
from streams.kafka.admin import ensure_topics, partition_counts, topic_configs
from streams.kafka.broker import BrokerError, LocalBroker, load_kafka_config


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum kafka", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "topics", "exporter"])
    parser.add_argument("--config", help="TOML config (default $PLUM_CONFIG or configs/demo.toml)")
    parser.add_argument("--prefix", default="", help="topics: create a prefixed copy of the set")
    parser.add_argument("--metrics-port", type=int, default=9102, help="exporter: /metrics port")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="exporter: seconds between polls"
    )
    args = parser.parse_args(argv)
    config = load_kafka_config(args.config)
    broker = LocalBroker(config)
    try:
        if args.action == "up":
            broker.up()
            ensure_topics(config.bootstrap, topic_set(args.prefix))
            print(f"kafka up at {config.bootstrap} (state {broker.root})")
        elif args.action == "down":
            print("stopped" if broker.down() else "not running")
        elif args.action == "status":
            status = broker.status()
            print(json.dumps(status, indent=2))
            return 0 if status["answering"] else 1
        elif args.action == "topics":
            specs = topic_set(args.prefix)
            created = ensure_topics(config.bootstrap, specs)
            counts = partition_counts(config.bootstrap, [s.name for s in specs])
            for s in specs:
                policy = topic_configs(config.bootstrap, s.name)["cleanup.policy"]
                mark = "created" if s.name in created else "exists"
                print(f"{s.name:<32} partitions={counts[s.name]} cleanup={policy:<8} {mark}")
        elif args.action == "exporter":
            return _run_exporter(config.bootstrap, args.metrics_port, args.interval)
    except (BrokerError, JvmSetupError, TimeoutError) as exc:
        print(f"plum kafka {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_exporter(bootstrap: str, port: int, interval_s: float) -> int:
    from monitoring.metrics import Metrics, serve_metrics
    from streams.kafka.exporter import run_exporter

    metrics = Metrics.for_component("kafka")
    server = serve_metrics(metrics, port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"kafka exporter for {bootstrap} on http://127.0.0.1:{server.port}/metrics")
    try:
        run_exporter(bootstrap, metrics, interval_s, stop)
    finally:
        server.close()
    return 0
