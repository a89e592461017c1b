"""`plum bench NAME [ARGS]`: run one benchmark (module bench/NAME.py) and write its JSON."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "kafka": "bench.kafka",
    "flink": "bench.flink",
    "tokenizer": "bench.tokenizer",
    "sid-service": "bench.sid_service",
    "trainer": "bench.trainer",
    "trainer-quality": "bench.trainer_quality",
}


def cli(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: plum bench NAME [ARGS]\n\nbenchmarks: " + ", ".join(BENCHMARKS))
        return 0
    name = argv[0]
    if name not in BENCHMARKS:
        print(
            f"plum bench: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    try:
        module = importlib.import_module(BENCHMARKS[name])
    except ModuleNotFoundError as exc:
        print(f"plum bench {name}: not built yet ({exc.name} is missing)", file=sys.stderr)
        return 2
    return int(module.cli(argv[1:]) or 0)
