"""`plum data import movielens DIR`: write a real data set to the replay topics.

    plum data import movielens build/data/ml-100k [--bootstrap H:P] [--topic-prefix P]
                                                  [--limit N] [--config PATH]

If DIR lacks the files it runs the shared fetch script
(`../shared/data/fetch-movielens-100k`, beside the repository).
Uploads go to `plum.uploads.replay.v1` keyed by video id, watches to
`plum.watches.replay.v1` keyed by user id, produced in one merged timestamp order (so
an upload is always sent before the first watch of its item) with the record timestamp
set to the event time. `--limit N` stops after the N-th watch. The mapping from
ratings to watches is documented in `streams.datasets.movielens`.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monitoring.metrics import Metrics, serve_metrics
from plum.config import (
    DEFAULT_KAFKA_BOOTSTRAP,
    REPO_ROOT,
    ConfigError,
    default_config_path,
    from_mapping,
    kafka_bootstrap,
)
from plum.runtime import Progress
from streams.contracts.schema import encode, encode_key
from streams.contracts.topics import TopicNames
from streams.datasets import movielens
from streams.kafka.admin import existing_topics
from streams.kafka.clients import make_producer

log = logging.getLogger(__name__)

DATASET = "movielens"
DEFAULT_FETCH_SCRIPT = REPO_ROOT.parent / "shared" / "data" / "fetch-movielens-100k"
PROGRESS_EVERY_S = 2.0


class DataImportError(RuntimeError):
    """The data set could not be fetched, or the import could not be written."""


@dataclass(frozen=True)
class ImportCounts:
    uploads: int
    watches: int
    seconds: float

    @property
    def total(self) -> int:
        return self.uploads + self.watches


def fetch_movielens(
    directory: Path, script: Path = DEFAULT_FETCH_SCRIPT, timeout_s: float = 600.0
) -> None:
    """Run the fetch script into `directory` unless the files are already there."""
    if movielens.has_files(directory):
        return
    if not script.is_file():
        raise DataImportError(
            f"{directory} lacks {movielens.REQUIRED_FILES} and the fetch script {script} does not exist"
        )
    log.info("fetching MovieLens-100k into %s with %s", directory, script)
    try:
        proc = subprocess.run(
            [str(script), str(directory)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DataImportError(
            f"{script} {directory} did not finish within {timeout_s:.0f} s"
        ) from None
    if proc.returncode != 0 or not movielens.has_files(directory):
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise DataImportError(f"{script} {directory} failed (exit {proc.returncode}): {tail}")


def write_timeline(
    records: Sequence[movielens.TimelineRecord],
    bootstrap: str,
    names: TopicNames,
    metrics: Metrics | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> ImportCounts:
    """Produce `records` in order (uploads -> names.uploads_replay, watches -> watches_replay),
    flush, and raise DataImportError if any send failed."""
    metrics = metrics or Metrics.for_component("import")
    topic_of = {
        movielens.KIND_UPLOAD: names.uploads_replay,
        movielens.KIND_WATCH: names.watches_replay,
    }
    counter = metrics.counter("plum_import_records_total")
    counted = {kind: counter.labels(dataset=DATASET, topic=t) for kind, t in topic_of.items()}
    _require_topics(bootstrap, sorted(set(topic_of.values())))
    failures: list[BaseException] = []
    producer = make_producer(bootstrap)
    counts = {movielens.KIND_UPLOAD: 0, movielens.KIND_WATCH: 0}

    def event_time() -> str:
        newest = records[max(progress.count, 1) - 1].ts if records else 0
        return "event time " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(newest / 1000))

    progress = Progress(
        "movielens import", "records", progress_every_s, total=len(records), detail=event_time
    )
    try:
        for rec in records:
            topic = topic_of[rec.kind]
            producer.send(
                topic, key=encode_key(rec.key), value=encode(rec.event), timestamp_ms=rec.ts
            ).add_errback(failures.append)
            counts[rec.kind] += 1
            counted[rec.kind].inc()
            if failures:
                raise DataImportError(f"send to {topic} failed: {failures[0]!r}")
            progress.add()
            progress.maybe_report()
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise DataImportError(f"{len(failures)} sends failed, first: {failures[0]!r}")
    progress.report(final=True)
    elapsed = time.monotonic() - progress.t0
    return ImportCounts(counts[movielens.KIND_UPLOAD], counts[movielens.KIND_WATCH], elapsed)


def _require_topics(bootstrap: str, topics: Sequence[str]) -> None:
    # The broker does not auto-create topics; without this check a send would block for
    # max_block_ms and fail with a timeout that does not name the cause.
    existing = existing_topics(bootstrap)
    missing = [t for t in topics if t not in existing]
    if missing:
        raise DataImportError(
            f"topics {missing} do not exist on {bootstrap}; create them with `plum kafka topics`"
        )


def _load_config(path: str | None) -> movielens.MovieLensConfig:
    if path is None and not default_config_path().is_file():
        return from_mapping(movielens.MovieLensConfig, {}, "movielens")
    return movielens.load_movielens_config(path)


def _default_bootstrap(config_path: str | None) -> str:
    try:
        return kafka_bootstrap(config_path)
    except ConfigError:  # no usable config file: the documented default
        return DEFAULT_KAFKA_BOOTSTRAP


def import_movielens(
    directory: Path,
    bootstrap: str,
    names: TopicNames,
    cfg: movielens.MovieLensConfig | None = None,
    limit: int | None = None,
    fetch_script: Path = DEFAULT_FETCH_SCRIPT,
    metrics: Metrics | None = None,
) -> ImportCounts:
    fetch_movielens(directory, fetch_script)
    t0 = time.monotonic()
    data = movielens.load(directory)
    records = movielens.timeline(data, cfg or movielens.MovieLensConfig(), limit)
    log.info(
        "movielens: %d users, %d items, %d ratings parsed; %d records to write (%.1f s)",
        len(data.user_ids),
        len(data.movies),
        len(data.ratings),
        len(records),
        time.monotonic() - t0,
    )
    return write_timeline(records, bootstrap, names, metrics)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plum data import movielens",
        description="MovieLens-100k into the replay topics: uploads + watches from ratings",
    )
    p.add_argument(
        "directory", type=Path, help="where ml-100k.inter/.item/.user are (fetched if missing)"
    )
    p.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap H:P (default: [kafka] of the config)"
    )
    p.add_argument(
        "--topic-prefix", default="", help="prefix of the topic names (tests use a unique one)"
    )
    p.add_argument("--limit", type=int, default=None, help="stop after this many watches")
    p.add_argument(
        "--config", default=None, help="config TOML (default: $PLUM_CONFIG or configs/demo.toml)"
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve /metrics during the import (0: any free port)"
    )
    p.add_argument(
        "--fetch-script", type=Path, default=DEFAULT_FETCH_SCRIPT, help=argparse.SUPPRESS
    )
    return p


def movielens_import(argv: list[str]) -> int:
    """`plum data import movielens DIR [...]`: fetch if missing, then write the timeline."""
    args = _parser().parse_args(argv)
    # kafka-python logs every connection at INFO; keep the import's own progress readable.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger("kafka").level))
    if args.limit is not None and args.limit < 0:
        print(f"plum data: --limit must be >= 0, got {args.limit}", file=sys.stderr)
        return 2
    cfg = _load_config(args.config)
    bootstrap = args.bootstrap or _default_bootstrap(args.config)
    names = TopicNames.with_prefix(args.topic_prefix) if args.topic_prefix else TopicNames()
    metrics = Metrics.for_component("import")
    server = serve_metrics(metrics, args.metrics_port) if args.metrics_port is not None else None
    if server is not None:
        log.info("movielens import: metrics on http://127.0.0.1:%d/metrics", server.port)
    try:
        counts = import_movielens(
            args.directory, bootstrap, names, cfg, args.limit, args.fetch_script, metrics
        )
    except (DataImportError, movielens.MovieLensFormatError, FileNotFoundError) as exc:
        print(f"plum data: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    print(
        f"movielens: wrote {counts.uploads} uploads to {names.uploads_replay} and "
        f"{counts.watches} watches to {names.watches_replay} in {counts.seconds:.1f} s"
    )
    return 0
