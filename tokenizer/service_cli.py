"""`plum tokenizer serve | reindex | switch | index`: the SID assignment service and its index."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from plum.config import load_section, state_dir
from plum.settings import Settings
from tokenizer.config_checks import CHECKS
from tokenizer.index import SidIndex
from tokenizer.service import SidService, SidServiceConfig, reindex, service_runtime

log = logging.getLogger(__name__)


def _config(args) -> SidServiceConfig:
    return load_section(
        SidServiceConfig,
        args.config,
        "sid_service",
        bootstrap=getattr(args, "bootstrap", None),
        topic_prefix=getattr(args, "topic_prefix", None),
        checkpoint=getattr(args, "checkpoint", None),
        index_path=getattr(args, "index", None),
        include_replay=True if getattr(args, "include_replay", False) else None,
        metrics_port=getattr(args, "metrics_port", None),
    )


def _index_path(config: SidServiceConfig) -> Path:
    return (
        Path(config.index_path)
        if config.index_path
        else state_dir() / "tokenizer" / "sid-index.sqlite"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config (default configs/demo.toml)")
    parser.add_argument("--bootstrap")
    parser.add_argument("--topic-prefix")
    parser.add_argument(
        "--index", help="SQLite index path (default state/tokenizer/sid-index.sqlite)"
    )


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum tokenizer serve", description=SidService.__doc__)
    _common(parser)
    parser.add_argument("--checkpoint", help="tokenizer checkpoint directory")
    parser.add_argument(
        "--include-replay", action="store_true", help="also consume the uploads replay topic"
    )
    parser.add_argument("--metrics-port", type=int, help="0: a free port")
    parser.add_argument(
        "--idle-exit", type=float, default=0.0, help="exit after this many seconds without uploads"
    )
    args = parser.parse_args(argv)
    config = _config(args)
    Settings.load(args.config).check(CHECKS)  # [sid_service] against what it reads
    if not config.checkpoint:
        parser.error("--checkpoint (or [sid_service].checkpoint) is required")
    from tokenizer.checkpoint import load_tokenizer

    tok = load_tokenizer(config.checkpoint)
    index = SidIndex(_index_path(config), config.disambiguation_size)
    try:
        service = SidService(config, tok, index)
        log.info(
            "SID service %s: %s -> %s, index %s",
            tok.sid_version,
            service.source_topics,
            service.topics.sid_assignments,
            index.path,
        )
        result = service_runtime(service, idle_exit_s=args.idle_exit).run()
    finally:
        index.close()
    totals = service.totals
    print(
        json.dumps(
            {
                "version": tok.sid_version,
                "ended": result.reason,
                "consumed": totals.consumed,
                "assigned": totals.assigned,
                "collisions": totals.collisions,
                "dead_letters": dict(totals.dead_letters),
            }
        )
    )
    return 0


def reindex_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum tokenizer reindex", description=reindex.__doc__)
    _common(parser)
    parser.add_argument("--checkpoint", required=True, help="the NEW tokenizer checkpoint")
    args = parser.parse_args(argv)
    config = _config(args)
    from streams.contracts.topics import TopicNames
    from tokenizer.checkpoint import load_tokenizer

    tok = load_tokenizer(config.checkpoint)
    index = SidIndex(_index_path(config), config.disambiguation_size)
    try:
        n = reindex(index, tok, config.bootstrap, TopicNames.with_prefix(config.topic_prefix))
        print(
            f"reindexed {n} videos under {tok.sid_version}; active version is still {index.active_version}"
        )
    finally:
        index.close()
    return 0


def switch_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum tokenizer switch")
    _common(parser)
    parser.add_argument("version")
    args = parser.parse_args(argv)
    index = SidIndex(_index_path(_config(args)))
    try:
        index.switch(args.version)
        print(f"active SID version: {args.version}")
    finally:
        index.close()
    return 0


def index_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum tokenizer index", description="what the local SID index holds"
    )
    _common(parser)
    args = parser.parse_args(argv)
    index = SidIndex(_index_path(_config(args)))
    try:
        print(
            json.dumps(
                {
                    "path": str(index.path),
                    "active_version": index.active_version,
                    "versions": {v: index.size(v) for v in index.versions()},
                    "items": index.item_count(),
                },
                indent=2,
            )
        )
    finally:
        index.close()
    return 0
