"""`plum publish run | once | rollback | status`.

    plum publish run       the long-running publisher (SIGTERM -> exit 0); log lines
                           "published version N (...)" and "rejected step S: reason"
    plum publish once      delta cycle + publish cycle + delta cycle, then exit 0 (1 only
                           when the cycle could not decide: a checkpoint or Kafka read
                           failed); prints one JSON line:
                           {"publish": {"outcome", "step", "version", "reason", "gate"},
                            "target", "endpoints": [acknowledged], "deltas": {url: seq}}
                           outcome: published | rejected | deferred | none | error
    plum publish rollback  [--to VERSION] serve an earlier version again; prints JSON,
                           exit 1 when an endpoint did not confirm it (the target is set
                           all the same, and a running publisher keeps pushing it)
    plum publish status    ledger, delta log and model repository as JSON (no network)

Common flags override [publisher] of --config: --bootstrap, --topic-prefix, --run-dir,
--model-repo, --state-dir, --endpoint URL (repeatable), --metrics-port.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from publisher.config import PublisherConfig, load_publisher_config

log = logging.getLogger(__name__)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="TOML config (default $PLUM_CONFIG or configs/demo.toml)")
    parser.add_argument("--bootstrap", help="Kafka host:port (default: [kafka])")
    parser.add_argument("--topic-prefix")
    parser.add_argument("--run-dir", help="the trainer's run directory")
    parser.add_argument("--model-repo", help="the versioned model repository")
    parser.add_argument("--state-dir", help="ledger and SID delta log")
    parser.add_argument(
        "--endpoint",
        action="append",
        dest="endpoints",
        metavar="URL",
        help="serving base URL, e.g. http://127.0.0.1:8400 (repeatable; default [serving])",
    )
    parser.add_argument("--metrics-port", type=int, help="-1: none, 0: a free port")
    return parser


def _config(args: argparse.Namespace, resolve_endpoints: bool = True) -> PublisherConfig:
    return load_publisher_config(
        args.config,
        resolve_endpoints=resolve_endpoints,
        bootstrap=args.bootstrap,
        topic_prefix=args.topic_prefix,
        run_dir=args.run_dir,
        model_repo=args.model_repo,
        state_dir=args.state_dir,
        endpoints=args.endpoints,
        metrics_port=args.metrics_port,
    )


def _print(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def run(argv: list[str]) -> int:
    """The publisher on the runtime until SIGTERM/SIGINT."""
    from publisher.schedule import Publisher, publisher_runtime

    args = _parser("plum publish run", run.__doc__ or "").parse_args(argv)
    publisher = Publisher(_config(args))
    result = publisher_runtime(publisher).run()
    log.info("publisher stopped (%s) after %d cycles", result.reason, result.done)
    return 0


def once(argv: list[str]) -> int:
    """One delta cycle, one publish cycle, one delta cycle; the decision as JSON."""
    from publisher.schedule import Publisher

    args = _parser("plum publish once", once.__doc__ or "").parse_args(argv)
    publisher = Publisher(_config(args))
    try:
        publisher.delta_cycle()
        report = publisher.publish_cycle()
        deltas = publisher.delta_cycle()
        endpoints = publisher.endpoint_states()
        target = publisher.ledger.target()
    finally:
        publisher.close()
    _print(
        {"publish": report.to_json(), "target": target, "endpoints": endpoints, "deltas": deltas}
    )
    return 1 if report.outcome == "error" else 0


def rollback(argv: list[str]) -> int:
    """Serve an earlier version again (default: the one published before the target)."""
    from publisher.schedule import Publisher, RollbackError

    parser = _parser("plum publish rollback", rollback.__doc__ or "")
    parser.add_argument("--to", type=int, metavar="VERSION", help="the version to serve")
    args = parser.parse_args(argv)
    publisher = Publisher(_config(args))
    try:
        result = publisher.rollback(args.to)
    except RollbackError as err:
        print(f"plum publish rollback: {err}", file=sys.stderr)
        return 1
    finally:
        publisher.close()
    _print(result)
    confirmed = [e for e in result["endpoints"] if e["model_version"] == result["target"]]
    return 0 if len(confirmed) >= len(publisher.clients) else 1


def status(argv: list[str]) -> int:
    """The ledger, the delta log and the model repository as JSON."""
    from publisher.deltas import DeltaLog
    from publisher.ledger import Ledger
    from serving.artifact import ArtifactError, ModelRepository

    parser = _parser("plum publish status", status.__doc__ or "")
    parser.add_argument("--decisions", type=int, default=20, help="how many to show")
    args = parser.parse_args(argv)
    cfg = _config(args, resolve_endpoints=False)
    repo = ModelRepository(cfg.model_repo_path)
    versions = []
    for v in repo.versions():
        try:
            m = repo.manifest(v)
        except ArtifactError as err:
            versions.append({"version": v, "error": str(err)})
            continue
        versions.append(
            {
                "version": m.version,
                "step": m.step,
                "sid_version": m.sid_version,
                "index_seq": m.index_seq,
                "newest_event_ts_ms": m.newest_event_ts_ms,
                "created_at_ms": m.created_at_ms,
                "dtype": m.dtype,
                "gate": m.gate.get("reason"),
                "source": m.source,
            }
        )
    with Ledger(cfg.state_path) as ledger, DeltaLog(cfg.state_path) as deltas:
        _print(
            {
                "state_dir": cfg.state_dir,
                "target": ledger.target(),
                "targets": ledger.targets(),
                "decisions": [d.to_json() for d in ledger.decisions(args.decisions)],
                "endpoints": [e.to_json() for e in ledger.endpoints()],
                "deltas": {v: deltas.seq(v) for v in deltas.versions()},
                "repository": {"base_path": cfg.model_repo, "versions": versions},
            }
        )
    return 0
