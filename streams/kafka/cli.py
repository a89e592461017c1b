"""`plum kafka up | down | status | topics | exporter`: the local KRaft broker, the topic
set, and the broker-side metrics exporter. One function per command (`plum.cli` maps
`kafka up` to `up`, and so on)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from plum.jvm import JvmSetupError
from streams.contracts.topics import topic_set
from streams.kafka.admin import ensure_topics, partition_counts, topic_configs
from streams.kafka.broker import BrokerError, KafkaConfig, LocalBroker, load_kafka_config
from streams.kafka.cluster import KafkaCluster


def _local(config: KafkaConfig, brokers: int | None = None) -> LocalBroker | KafkaCluster:
    """The broker or cluster under the config's state dir: `brokers` nodes when given,
    else the size of the cluster made there before, else one broker."""
    n = brokers if brokers is not None else KafkaCluster.size_in(config.resolved_state_dir())
    return KafkaCluster.from_config(config, n) if n > 1 else LocalBroker(config)


def _parser(action: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"plum kafka {action}", description=description)
    parser.add_argument("--config", help="TOML config (default $PLUM_CONFIG or configs/demo.toml)")
    return parser


def _reporting_errors(action: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except (BrokerError, JvmSetupError, TimeoutError) as exc:
        print(f"plum kafka {action}: {exc}", file=sys.stderr)
        return 1


def _prefix_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default="", help="create a prefixed copy of the topic set")


def up(argv: list[str]) -> int:
    parser = _parser("up", "start the local broker (if not running) and create every topic")
    _prefix_option(parser)
    parser.add_argument(
        "--brokers",
        type=int,
        default=None,
        help="nodes: 1 or a KRaft cluster of N >= 2 on consecutive port pairs (3: "
        "replication factor 3, min ISR 2); default: the size made under the state dir, else 1",
    )
    args = parser.parse_args(argv)
    if args.brokers is not None and args.brokers < 1:
        parser.error(f"--brokers must be >= 1, got {args.brokers}")
    config = load_kafka_config(args.config)

    def body() -> int:
        broker = _local(config, args.brokers)
        broker.up()
        ensure_topics(broker.bootstrap, topic_set(args.prefix))
        print(f"kafka up at {broker.bootstrap} (state {broker.root})")
        return 0

    return _reporting_errors("up", body)


def down(argv: list[str]) -> int:
    args = _parser("down", "stop the local broker").parse_args(argv)
    config = load_kafka_config(args.config)

    def body() -> int:
        print("stopped" if _local(config).down() else "not running")
        return 0

    return _reporting_errors("down", body)


def status(argv: list[str]) -> int:
    args = _parser("status", "the local broker's state as JSON; exit 1 when it does not answer")
    config = load_kafka_config(args.parse_args(argv).config)

    def body() -> int:
        state = _local(config).status()
        print(json.dumps(state, indent=2))
        return 0 if state["answering"] else 1

    return _reporting_errors("status", body)


def topics(argv: list[str]) -> int:
    parser = _parser("topics", "create the topics that are missing and list the set")
    _prefix_option(parser)
    args = parser.parse_args(argv)
    config = load_kafka_config(args.config)
    return _reporting_errors("topics", lambda: _list_topics(config, args.prefix))


def _list_topics(config: KafkaConfig, prefix: str) -> int:
    specs = topic_set(prefix)
    created = ensure_topics(config.bootstrap, specs)
    counts = partition_counts(config.bootstrap, [s.name for s in specs])
    for s in specs:
        policy = topic_configs(config.bootstrap, s.name)["cleanup.policy"]
        mark = "created" if s.name in created else "exists"
        print(f"{s.name:<32} partitions={counts[s.name]} cleanup={policy:<8} {mark}")
    return 0


def exporter(argv: list[str]) -> int:
    parser = _parser("exporter", "serve broker up, end offsets and consumer lag on /metrics")
    parser.add_argument(
        "--metrics-port", type=int, default=9102, help="/metrics port (0: any free port)"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    parser.add_argument("--bootstrap", help="broker to watch (default: [kafka] of the config)")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval must be > 0, got {args.interval}")
    from streams.kafka.exporter import run

    bootstrap = args.bootstrap or load_kafka_config(args.config).bootstrap
    run(bootstrap, args.metrics_port, args.interval)
    return 0
