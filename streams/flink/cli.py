"""`plum flink run`: run the PyFlink job (streams.flink.job) in local mode, or as a backfill.

    plum flink run [--config P] [--bootstrap H:P] [--topic-prefix P]
                   [--backfill --from T1 --to T2] [--output-suffix S]
                   [--checkpoint-dir D] [--parallelism N] [--fresh | --restore PATH]
                   [--metrics-port PORT] [--rest-port PORT] [--job-metrics-port PORT]
                   [--cluster HOST:PORT]

Times T1/T2 are epoch milliseconds or ISO-8601 (`2023-11-14T22:13:20Z`). A live run
resumes from the newest retained checkpoint under the checkpoint dir unless `--fresh`
(or an explicit `--restore PATH`) is given, so restarting a killed job is just running
the same command again. A backfill always starts fresh (it reads the replay topic from
the beginning, keeps records with T1 <= ts < T2), writes to the same output topics (or
`<topic><suffix>` side by side) and exits when the bounded input is done. SIGTERM/SIGINT
cancel the job; the retained checkpoint stays for the next start. Flink's confirmation of
the cancel is awaited 30 s at most (`CANCEL_TIMEOUT_S`); past that the driver says what
the job was still doing and exits 0 all the same, as the next start restores the retained
checkpoint exactly as after a kill.

While the job runs, this driver polls Flink's REST endpoint (`--rest-port`, 0 = a free
one) for the job's state and checkpoints and serves them as the `flink_job` metrics on
`--job-metrics-port` (-1: none), and for the JVM operator's counters, served as the
`flink` metrics on `--metrics-port` (0: none; see streams/flink/job_metrics.py).

A checkpoint written by an earlier job version with another state layout (the Python
operator: no OPERATOR marker in its dir; the first JVM operator, which counted pairs in an
SQL window: marker jvm-ptf-1) is refused with a message naming the way on: a backfill from
the replay topic, or --fresh.

On a Flink cluster: `flink run -py streams/flink/cli.py -pyfs plum,streams,monitoring
--jarfile build/jvm/flink/flink-sql-connector-kafka-*.jar run --rest-port -1 --bootstrap ...`
(-1: the client keeps the cluster's REST address; the cluster reports the job itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plum.config import ConfigError
from plum.ports import free_port
from plum.runtime import stop_on_signals
from plum.settings import Settings
from plum.times import parse_time_ms
from streams.contracts import topics as topic_defs
from streams.contracts.topics import TopicNames
from streams.flink.backfill_progress import BackfillProgress, start_backfill_progress
from streams.flink.config_checks import CHECKS
from streams.flink.job import (
    FlinkConfig,
    IncompatibleCheckpoint,
    RunOptions,
    build,
    check_restorable,
    latest_checkpoint,
    load_flink_config,
    mark_operator,
    source_group,
)
from streams.flink.job_metrics import FlinkRest, JobPoller, OperatorMetrics

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    r = argparse.ArgumentParser(
        prog="plum flink run",
        description="Run the PyFlink job (live, or --backfill over a time range).",
    )
    r.add_argument("--config", type=Path, default=None, help="TOML config ([flink] section)")
    r.add_argument("--bootstrap", default=None, help="Kafka bootstrap HOST:PORT")
    r.add_argument("--topic-prefix", default=None, help="prefix of every topic name (tests)")
    r.add_argument("--backfill", action="store_true", help="bounded run over the replay topic")
    r.add_argument(
        "--from", dest="from_ms", type=parse_time_ms, default=None, help="backfill start (incl.)"
    )
    r.add_argument(
        "--to", dest="to_ms", type=parse_time_ms, default=None, help="backfill end (excl.)"
    )
    r.add_argument("--output-suffix", default="", help="write to <topic><suffix> instead")
    r.add_argument("--checkpoint-dir", type=Path, default=None)
    r.add_argument("--parallelism", type=int, default=None)
    r.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus /metrics of the operator's counters (0: off)",
    )
    r.add_argument(
        "--rest-port",
        type=int,
        default=None,
        help="Flink's REST endpoint port (0: a free one; -1: Flink's settings, a cluster)",
    )
    r.add_argument(
        "--job-metrics-port",
        type=int,
        default=None,
        help="/metrics of the job's state and checkpoints (-1: none, 0: a free port)",
    )
    r.add_argument(
        "--cluster",
        default=None,
        metavar="HOST:PORT",
        help="submit to this Flink session cluster's REST endpoint instead of a local "
        "MiniCluster ([flink] cluster_rest)",
    )
    g = r.add_mutually_exclusive_group()
    g.add_argument("--fresh", action="store_true", help="ignore retained checkpoints")
    g.add_argument("--restore", default=None, help="resume from this checkpoint/savepoint path")
    return r


def _ensure_suffixed_topics(bootstrap: str, names: TopicNames, suffix: str) -> None:
    from streams.kafka.admin import ensure_topics

    specs = []
    for base, name in (
        (topic_defs.COOCCURRENCE, names.cooccurrence),
        (topic_defs.SFT_EXAMPLES, names.sft_examples),
        (topic_defs.DEADLETTER, names.deadletter),
    ):
        s = topic_defs.spec(base)
        specs.append(
            topic_defs.TopicSpec(
                f"{name}{suffix}", s.partitions, s.retention_ms, s.compacted, s.key
            )
        )
    ensure_topics(bootstrap, specs)


# How long a finished backfill waits for its last checkpoint's offset commit to reach the
# broker (asynchronous) before its progress says the final count.
BACKFILL_SETTLE_S = 10.0
# How long a stopping driver waits for Flink to confirm the cancel (see `cancel_job`):
# well inside the demo's grace before SIGKILL (configs/demo.toml grace_s).
CANCEL_TIMEOUT_S = 30.0


@dataclass
class JobOutcome:
    """How the job's `wait()` ended, filled in by the thread that waits on it."""

    ok: bool = True
    status: str = "running"


def run_job(cfg: FlinkConfig, opts: RunOptions, checkpoint_dir: Path) -> int:
    """Submit the job and supervise it until it ends or SIGTERM/SIGINT cancel it; 0 when it
    finished or was cancelled, 1 when it failed."""
    mark_operator(checkpoint_dir)
    if opts.output_suffix:
        _ensure_suffixed_topics(cfg.bootstrap, opts.topics, opts.output_suffix)
    if cfg.cluster_rest:  # the session cluster's endpoint is the one to poll
        cfg = dataclasses.replace(cfg, rest_port=int(cfg.cluster_rest.rsplit(":", 1)[1]))
    elif cfg.rest_port == 0:  # a port known here, so the poller can find the endpoint
        cfg = dataclasses.replace(cfg, rest_port=free_port())
    with ExitStack() as cleanup:  # the poller and the backfill's progress, however it ends
        poller = _job_poller(cfg, opts)  # binds its /metrics first: a busy port fails here
        if poller is not None:
            cleanup.callback(poller.close)
        env, t_env, stmts = build(cfg, opts, checkpoint_dir)
        backfill = _backfill_progress(cfg, opts) if opts.backfill else None
        if backfill is not None:
            cleanup.callback(backfill.close)
        started = time.monotonic()
        result = stmts.execute()
        client = result.get_job_client()
        job_id = client.get_job_id() if client else None
        log.info(
            "flink job %s started (%s, source %s, checkpoints %s%s)",
            job_id,
            "backfill" if opts.backfill else "live",
            opts.source_topic,
            checkpoint_dir,
            f", restored from {opts.restore_path}" if opts.restore_path else "",
        )
        if cfg.rest_port > 0:
            log.info("flink REST on %s", rest_url(cfg))
        done, outcome = threading.Event(), JobOutcome()
        waiter = threading.Thread(target=_wait, args=(result, outcome, done), daemon=True)
        waiter.start()
        if poller is not None and job_id is not None:
            poller.follow(str(job_id))
        # The job ends by itself (a backfill) or by a signal: `stop` is set by either.
        with stop_on_signals(done, "flink job") as stop:
            stop.wait()
        if backfill is not None and outcome.status == "finished":
            backfill.settle(BACKFILL_SETTLE_S)  # the final checkpoint's commit, if late
    if client is not None and waiter.is_alive():
        rest = FlinkRest(rest_url(cfg)) if cfg.rest_port > 0 else None
        if cancel_job(client, CANCEL_TIMEOUT_S, lambda: job_state(rest, job_id)):
            waiter.join(timeout=30)
        else:
            outcome.status = "cancel not confirmed"
    else:
        waiter.join(timeout=30)
    log.info(
        "flink job %s ended after %.1f s: %s", job_id, time.monotonic() - started, outcome.status
    )
    return 0 if outcome.ok else 1


def cancel_job(client: Any, timeout_s: float, describe: Callable[[], str]) -> bool:
    """Ask Flink to cancel the job and wait at most `timeout_s` for it to confirm; True when
    it did (or the job had already ended). Past the timeout the driver goes on without the
    confirmation, saying what the job was doing (`describe()`): its checkpoints are
    retained, so the next start restores the newest one, as after a kill -9, which the job
    survives exactly once. A stopping driver then exits within its supervisor's grace
    instead of being killed in it."""
    log.info("cancelling the job (retained checkpoints stay)")
    confirmed = threading.Event()

    def cancel() -> None:
        try:
            client.cancel().result()
        except Exception as exc:  # already finished or failing: the status says which
            log.info("cancel: %s", exc)
        finally:
            confirmed.set()

    threading.Thread(target=cancel, name="flink-cancel", daemon=True).start()
    if confirmed.wait(timeout_s):
        return True
    log.warning(
        "Flink did not confirm the cancel in %.0f s (%s); going on without it: the retained "
        "checkpoints stay, and the next start restores the newest, as after a kill",
        timeout_s,
        describe(),
    )
    return False


def job_state(rest: FlinkRest | None, job_id: object) -> str:
    """The job's state and its vertices not yet cancelled, as Flink's REST API says them
    (for a log line; never raises)."""
    if rest is None or job_id is None:
        return "no REST endpoint to ask"
    try:
        job = rest.job(str(job_id))
    except Exception as exc:
        return f"REST: {exc}"
    waiting = [
        f"{v.get('name', '?')[:60]} {v.get('status', '?')}"
        for v in job.get("vertices", [])
        if v.get("status") != "CANCELED"
    ]
    return f"job {job.get('state', '?')}; vertices not cancelled: {waiting or 'none'}"


def rest_url(cfg: FlinkConfig) -> str:
    """The job's REST endpoint: the session cluster's, or the local MiniCluster's."""
    return f"http://{cfg.cluster_rest}" if cfg.cluster_rest else f"http://127.0.0.1:{cfg.rest_port}"


def _job_poller(cfg: FlinkConfig, opts: RunOptions) -> JobPoller | None:
    """The REST poller serving the `flink_job` metrics and the operator's `flink` metrics,
    when a port is configured for either."""
    if cfg.job_metrics_port < 0 and cfg.metrics_port <= 0:
        return None
    rest = FlinkRest(rest_url(cfg))
    operator = None
    if cfg.metrics_port > 0:
        operator = OperatorMetrics(opts.source_topic, opts.out(opts.topics.sft_examples))
    return JobPoller(
        rest,
        cfg.job_metrics_interval_s,
        cfg.job_metrics_port,
        operator=operator,
        operator_port=cfg.metrics_port if cfg.metrics_port > 0 else -1,
    )


def _backfill_progress(cfg: FlinkConfig, opts: RunOptions) -> BackfillProgress | None:
    """The backfill's progress line (committed input offsets), started before the job
    commits any; without it (Kafka not answering here) the backfill still runs."""
    try:
        return start_backfill_progress(
            cfg.bootstrap, opts.source_topic, source_group(cfg, opts), cfg.job_metrics_interval_s
        )
    except Exception as exc:
        log.warning("backfill progress unavailable: %s", exc)
        return None


def _wait(result, outcome: JobOutcome, done: threading.Event) -> None:
    try:
        result.wait()
        outcome.ok, outcome.status = True, "finished"
    except Exception as exc:
        cancelled = "cancel" in str(exc).lower()
        outcome.ok, outcome.status = cancelled, "cancelled" if cancelled else f"failed: {exc}"
        if not cancelled:
            log.error("flink job failed: %s", exc)
    finally:
        done.set()


def run(argv: list[str]) -> int:
    """`plum flink run ...`: parse, check and resume, then `run_job`."""
    args = build_parser().parse_args(argv)
    try:
        cfg = load_flink_config(
            args.config,
            bootstrap=args.bootstrap,
            topic_prefix=args.topic_prefix,
            parallelism=args.parallelism,
            checkpoint_dir=args.checkpoint_dir,
            metrics_port=args.metrics_port,
            rest_port=args.rest_port,
            job_metrics_port=args.job_metrics_port,
            cluster_rest=args.cluster,
        )
        Settings.load(args.config).check(CHECKS)  # [flink] against what it reads
    except ConfigError as exc:
        print(f"plum flink: {exc}", file=sys.stderr)
        return 2
    if args.backfill and (args.from_ms is None or args.to_ms is None or args.from_ms >= args.to_ms):
        print("plum flink: --backfill needs --from T1 --to T2 with T1 < T2", file=sys.stderr)
        return 2
    if not args.backfill and (args.from_ms is not None or args.to_ms is not None):
        print("plum flink: --from/--to only apply with --backfill", file=sys.stderr)
        return 2
    checkpoint_dir = cfg.resolved_checkpoint_dir()
    if args.backfill:
        # A backfill's checkpoints live apart from the live job's so neither resumes the other.
        checkpoint_dir = (
            checkpoint_dir / f"backfill-{args.from_ms}-{args.to_ms}{args.output_suffix}"
        )
    restore = args.restore
    if restore is None and not args.fresh and not args.backfill:
        found = latest_checkpoint(checkpoint_dir)
        restore = str(found) if found else None
    if restore is not None:
        try:
            check_restorable(restore)
        except IncompatibleCheckpoint as exc:
            print(f"plum flink: {exc}", file=sys.stderr)
            return 2
    opts = RunOptions(
        backfill=args.backfill,
        from_ms=args.from_ms,
        to_ms=args.to_ms,
        output_suffix=args.output_suffix,
        restore_path=restore,
        topics=TopicNames.with_prefix(cfg.topic_prefix) if cfg.topic_prefix else TopicNames(),
    )
    return run_job(cfg, opts, checkpoint_dir)


if __name__ == "__main__":
    # `python -m streams.flink.cli run ...` and `flink run -py streams/flink/cli.py run ...`
    # (a cluster submission) go through the one command table.
    from plum.cli import main

    sys.exit(main(["flink", *sys.argv[1:]]))
