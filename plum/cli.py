"""`plum`: the one console entry point and its one command table.

Each command names the function that runs it, `module:function` taking the arguments
after the command's words and returning an exit code. Modules are imported only when
their command runs, so `plum kafka status` does not pay for importing JAX or PyFlink.
`plum GROUP --help` (e.g. `plum kafka --help`) lists a group's commands; `plum CMD
--help` shows one command's options.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from dataclasses import dataclass

from plum.config import ConfigError

# Libraries whose INFO lines drown our own (orbax logs every save/restore through absl).
# kafka-python 3 logs every connection, bootstrap and metadata refresh at INFO
QUIET_LOGGERS = ("absl", "jax._src.xla_bridge", "httpx", "kafka")
# apscheduler logs every skipped run of a job still running (max_instances=1 working) at
# WARNING and every run at INFO: only its errors are worth a line.
ERROR_ONLY_LOGGERS = ("apscheduler",)


@dataclass(frozen=True)
class Command:
    name: str  # the words after `plum`, e.g. "kafka up"
    target: str  # "module:function"; the function takes argv and returns an exit code
    help: str

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.name.split())


COMMANDS: tuple[Command, ...] = (
    Command("kafka up", "streams.kafka.cli:up", "start the local KRaft broker, create every topic"),
    Command("kafka down", "streams.kafka.cli:down", "stop the local broker"),
    Command("kafka status", "streams.kafka.cli:status", "broker state as JSON (exit 1: down)"),
    Command("kafka topics", "streams.kafka.cli:topics", "create missing topics, list the set"),
    Command(
        "kafka exporter",
        "streams.kafka.cli:exporter",
        "broker up, end offsets and consumer lag on /metrics",
    ),
    Command(
        "simulate", "streams.simulator.cli:simulate", "produce simulated platform traffic to Kafka"
    ),
    Command(
        "data import movielens",
        "streams.datasets.cli:movielens_import",
        "MovieLens-100k into the replay topics",
    ),
    Command(
        "flink run",
        "streams.flink.cli:run",
        "run the PyFlink job (live, or --backfill --from T1 --to T2)",
    ),
    Command(
        "replay copy",
        "streams.replay.cli:copy",
        "copy a time range of a source topic into its replay topic, exactly once",
    ),
    Command(
        "replay play",
        "streams.replay.cli:play",
        "play the replay topics into the live topics in event-time order, exactly once",
    ),
    Command(
        "replay backfill",
        "streams.replay.cli:backfill",
        "the Flink job over the watches replay topic into <output>.backfill-<id>",
    ),
    Command(
        "flink cluster",
        "streams.flink.session_cluster:cli",
        "a standalone Flink session cluster (foreground) for `flink run --cluster`",
    ),
    Command(
        "tokenizer train",
        "tokenizer.train:cli",
        "train the SID-v2 RQ-VAE and write an orbax checkpoint",
    ),
    Command(
        "tokenizer report",
        "tokenizer.report:cli",
        "SID uniqueness, codebook use, reconstruction, alignment",
    ),
    Command(
        "tokenizer ablation",
        "tokenizer.ablation:cli",
        "SID-v1 vs SID-v2 ablation (what `plum bench tokenizer` runs)",
    ),
    Command(
        "tokenizer serve",
        "tokenizer.service_cli:serve",
        "the streaming SID assignment service (uploads -> SIDs)",
    ),
    Command(
        "tokenizer reindex",
        "tokenizer.service_cli:reindex_cli",
        "assign every known video under a new tokenizer version",
    ),
    Command(
        "tokenizer switch", "tokenizer.service_cli:switch_cli", "make a SID version the active one"
    ),
    Command(
        "tokenizer index",
        "tokenizer.service_cli:index_cli",
        "show the local SID index (versions, sizes)",
    ),
    Command(
        "trainer cpt",
        "trainer.cli:cpt",
        "continued pre-training on SID behaviour + metadata -> the CPT checkpoint",
    ),
    Command(
        "trainer run",
        "trainer.cli:run",
        "continuous SFT from the CPT checkpoint on Kafka + history",
    ),
    Command(
        "trainer eval",
        "trainer.eval_cli:cli",
        "Recall@K / NDCG@10 against popularity and co-occurrence baselines",
    ),
    Command("bench kafka", "bench.kafka:cli", "produce/consume rates: kafka-python vs Java tools"),
    Command("bench flink", "bench.flink:cli", "Flink job events/s vs its baselines"),
    Command("bench tokenizer", "bench.tokenizer:cli", "SID-v1 vs SID-v2 ablation"),
    Command(
        "bench sid-service",
        "bench.sid_service:cli",
        "SID assignments/s and upload->SID latency",
    ),
    Command("bench trainer", "bench.trainer:cli", "trainer loop examples/s vs the jitted step"),
    Command(
        "bench trainer-quality",
        "bench.trainer_quality:cli",
        "recommender quality vs popularity/co-occurrence",
    ),
    Command(
        "bench quality",
        "bench.quality:cli",
        "MovieLens-100k, standard protocol: the model vs popularity/co-occurrence, beam sweep",
    ),
    Command(
        "bench trainer-path",
        "bench.trainer_path:cli",
        "plum trainer run on the MovieLens replay (Kafka, Flink) vs bench quality, equal steps",
    ),
    Command(
        "serve", "serving.cli:serve", "the retrieval server: /v1/retrieve, hot swap, SID deltas"
    ),
    Command(
        "probe",
        "serving.probe:cli",
        "ask serving for recommendations as users who just watched something (synthetic traffic)",
    ),
    Command(
        "publish run", "publisher.cli:run", "gate, publish and push checkpoints and SID deltas"
    ),
    Command(
        "publish once", "publisher.cli:once", "one publish cycle and one delta cycle, then exit"
    ),
    Command("publish rollback", "publisher.cli:rollback", "serve an earlier version again"),
    Command("publish status", "publisher.cli:status", "published versions and pushes as JSON"),
    Command("bench serving", "bench.serving:cli", "retrieval latency and QPS under wrk"),
    Command(
        "bench summary",
        "bench.summary:cli",
        "write bench/README.md (every benchmark, its command, latest numbers and machine)",
    ),
    Command("bench freshness", "bench.freshness:cli", "upload -> servable and event -> model"),
    Command(
        "dashboard up",
        "monitoring.dashboards.server:cli",
        "serve the monitoring page (alerts, components up, every panel) from Prometheus",
    ),
    Command(
        "dashboard grafana",
        "monitoring.dashboards.grafana:cli",
        "write the Grafana dashboard JSON generated from monitoring/panels.py",
    ),
    Command(
        "prometheus up",
        "deploy.prometheus.cli:up",
        "Prometheus scraping every component's /metrics, with the rules (foreground)",
    ),
    Command(
        "prometheus rules",
        "deploy.prometheus.cli:rules",
        "write the recording/alert rules and a sample prometheus.yml (--out DIR)",
    ),
    Command(
        "up",
        "deploy.local.demo:up",
        "the embedded stack on simulated traffic, supervised, with a live status view",
    ),
    Command("demo", "deploy.local.demo:demo", "the same as `plum up` (its older name)"),
)


def find(argv: list[str]) -> Command | None:
    """The command whose words start `argv` (the longest such), or None."""
    matches = [c for c in COMMANDS if tuple(argv[: len(c.words)]) == c.words]
    return max(matches, key=lambda c: len(c.words), default=None)


def usage(prefix: tuple[str, ...] = ()) -> str:
    """Every command under `prefix` (all of them for ()), one line each."""
    shown = [c for c in COMMANDS if c.words[: len(prefix)] == prefix]
    width = max(len(c.name) for c in shown) + 2
    lines = ["usage: plum COMMAND [ARGS...]  (plum COMMAND --help for its options)", ""]
    lines += [f"  {c.name:<{width}} {c.help}" for c in shown]
    return "\n".join(lines)


def _group(argv: list[str]) -> tuple[str, ...]:
    """The longest start of `argv` that is a group of commands (e.g. ("kafka",))."""
    for n in range(len(argv), 0, -1):
        prefix = tuple(argv[:n])
        if any(c.words[:n] == prefix and len(c.words) > n for c in COMMANDS):
            return prefix
    return ()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = find(argv)
    if command is None:
        group = _group(argv)
        rest = argv[len(group) :]
        if not rest or rest[0] in ("-h", "--help", "help"):
            print(usage(group))
            return 0
        name = " ".join(("plum", *group))
        print(f"{name}: unknown command {rest[0]!r}\n\n{usage(group)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ERROR_ONLY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if command.words[0] == "bench":
        # A stopped benchmark unwinds (its finally blocks stop its private broker and
        # remove its files) instead of dying with its children left running.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    module, _, function = command.target.partition(":")
    run = getattr(importlib.import_module(module), function)
    try:
        return int(run(argv[len(command.words) :]) or 0)
    except ConfigError as err:  # a bad or contradictory config: one line, no traceback
        print(f"plum {' '.join(command.words)}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
