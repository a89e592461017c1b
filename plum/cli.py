"""`plum`: the one console entry point. Dispatch only; each command lives in its component.

A command module exposes `cli(argv: list[str]) -> int`. Modules are imported lazily so
`plum kafka status` does not pay for importing JAX or PyFlink.
"""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "kafka": ("streams.kafka.cli", "run the local KRaft broker: up | down | status | topics"),
    "simulate": ("streams.simulator.cli", "produce simulated platform traffic to Kafka"),
    "data": ("streams.datasets.cli", "import real data sets: data import movielens DIR"),
    "flink": ("streams.flink.cli", "run the PyFlink job: flink run [--backfill --from T1 --to T2]"),
    "tokenizer": ("tokenizer.cli", "SID-v2 tokenizer: train | report | serve | reindex"),
    "trainer": ("trainer.cli", "recommender: cpt | run | eval"),
    "bench": ("bench.cli", "benchmarks: bench kafka | flink | tokenizer | ..."),
    "demo": ("deploy.local.demo", "bring up the embedded stack and run simulated traffic"),
}


def usage() -> str:
    lines = ["usage: plum COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"plum: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
