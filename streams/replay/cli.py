"""`plum replay copy`, `plum replay play` and `plum replay backfill`: replays and backfills.

    plum replay copy --topic plum.watches.v1 --from T1 --to T2 [--bootstrap H:P]
                     [--config P] [--topic-prefix P] [--batch-records N] [--max-rate R]
    plum replay play [--speed S] [--max-rate R] [--id ID] [--metrics-port PORT]
                     [--bootstrap H:P] [--config P] [--topic-prefix P]
    plum replay backfill [--from T1] [--to T2] [--id ID] [plum flink run options...]

`copy` copies the records of a source topic whose Kafka timestamps Kafka's time index puts
in [T1, T2) into that topic's replay topic, exactly once (streams/replay/copy.py): run the
same command again after a crash or a SIGTERM and it finishes the copy without copying
anything twice. `play` plays the uploads and watches replay topics into the live topics
in record-timestamp order, paced, exactly once (streams/replay/play.py): the same `--id`
resumes where it stopped (a stop by SIGTERM/SIGINT exits 0: the play is resumable, as a
service's stop is clean); what `plum up --data movielens` runs. `backfill` is `plum flink run --backfill` over the watches replay topic,
event time [T1, T2) (default: all of it), into `<output>.backfill-<ID>`, never into the
live outputs; it refuses an ID whose outputs already hold records. Times are epoch ms,
ISO-8601 (`2023-11-14T22:13:20Z`) or `now` (resolved once: a copy is identified by its
range in ms, so an interrupted `--to now` copy is finished with the range its first log
line prints). Note the two ranges: `copy` selects by the record's Kafka timestamp, the
backfill by the event time (`ts`) inside the record.

Exit codes: 0 done (and for `play`, also stopped by SIGTERM/SIGINT: resumable); 1 the
copy or backfill failed or was stopped before its end, or the play failed; 2 bad
arguments (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from plum.config import DEFAULT_KAFKA_BOOTSTRAP, ConfigError, kafka_bootstrap
from plum.times import format_time_ms, parse_time_ms
from streams.contracts import topics as topic_defs

log = logging.getLogger(__name__)

END_OF_TIME_MS = 2**62  # a backfill's default end: after every event time
OUTPUT_SUFFIX = ".backfill-{id}"


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit 2 (argparse adds the usage lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


class _BadArguments(ValueError):
    pass


def _time(text: str, flag: str) -> int:
    try:
        return parse_time_ms(text)
    except argparse.ArgumentTypeError as exc:
        raise _BadArguments(f"{flag}: {exc}") from None


# ------------------------------------------------------------------ copy


def _copy_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="plum replay copy",
        description="Copy a time range of a source topic into its replay topic, exactly once.",
    )
    p.add_argument(
        "--topic",
        required=True,
        help=f"the source topic, one of {sorted(topic_defs.REPLAY_OF)} (without --topic-prefix)",
    )
    p.add_argument("--from", dest="from_", required=True, help="range start (incl.)")
    p.add_argument("--to", required=True, help="range end (excl.)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap H:P (default: [kafka])")
    p.add_argument("--config", default=None, help="config TOML (default: $PLUM_CONFIG)")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name (tests)")
    p.add_argument(
        "--batch-records", type=int, default=5000, help="records per transaction (default 5000)"
    )
    p.add_argument("--max-rate", type=float, default=None, help="copy at most R records/s")
    return p


def _request(args: argparse.Namespace):
    from streams.replay.copy import CopyRequest

    try:
        target = topic_defs.replay_topic(args.topic)
    except ValueError as exc:
        raise _BadArguments(str(exc)) from None
    if args.batch_records < 1:
        raise _BadArguments(f"--batch-records must be >= 1, got {args.batch_records}")
    if args.max_rate is not None and args.max_rate <= 0:
        raise _BadArguments(f"--max-rate must be > 0, got {args.max_rate}")
    from_ms, to_ms = _time(args.from_, "--from"), _time(args.to, "--to")
    if from_ms >= to_ms:
        raise _BadArguments(
            f"--from {format_time_ms(from_ms)} must be before --to {format_time_ms(to_ms)}"
        )
    prefix = args.topic_prefix
    return CopyRequest(prefix + args.topic, prefix + target, from_ms, to_ms)


def _bootstrap(args: argparse.Namespace) -> str:
    if args.bootstrap:
        return args.bootstrap
    try:
        return kafka_bootstrap(args.config)
    except ConfigError:
        if args.config is not None:
            raise
        return DEFAULT_KAFKA_BOOTSTRAP


def copy(argv: list[str]) -> int:
    """`plum replay copy ...`: the copy, then one summary line on stdout."""
    args = _copy_parser().parse_args(argv)
    try:
        request = _request(args)
    except _BadArguments as exc:
        print(f"plum replay copy: {exc}", file=sys.stderr)
        return 2
    from confluent_kafka import KafkaException

    from streams.replay.copy import CopyOptions, ReplayError, copy_range

    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger("kafka").level))
    try:
        result = copy_range(
            _bootstrap(args),
            request,
            CopyOptions(batch_records=args.batch_records, max_rate=args.max_rate),
        )
    except (ReplayError, KafkaException, TimeoutError) as exc:
        print(f"plum replay copy: {exc}", file=sys.stderr)
        return 1
    span = f"[{format_time_ms(request.from_ms)}, {format_time_ms(request.to_ms)})"
    line = (
        f"replay copy: {result.copied} records of {request.source} {span} copied to"
        f" {request.target} in {result.transactions} transactions, {result.seconds:.1f} s"
        f" ({result.offsets} offsets in the range"
    )
    if result.earlier:
        line += f", {result.earlier} copied by an earlier run"
    print(line + ")")
    if not result.finished:
        # The same range (`now` resolved) is the same copy: that rerun copies only the rest.
        print(
            "plum replay copy: stopped before the end of the range; finish it with"
            f" --topic {args.topic} --from {request.from_ms} --to {request.to_ms}",
            file=sys.stderr,
        )
        return 1
    return 0


# ------------------------------------------------------------------ play


def _play_parser() -> argparse.ArgumentParser:
    from streams.replay.play import DEFAULT_PLAY_ID

    p = _Parser(
        prog="plum replay play",
        description="Play the replay topics into the live topics in event-time order, exactly"
        " once (uploads and watches, merged by record timestamp).",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="event time runs this many times faster than wall time (0: no event-time pacing)",
    )
    p.add_argument("--max-rate", type=float, default=None, help="play at most R records/s")
    p.add_argument(
        "--id",
        default=DEFAULT_PLAY_ID,
        help=f"transactional id and position group: the same id resumes (default {DEFAULT_PLAY_ID})",
    )
    p.add_argument("--batch-records", type=int, default=500, help="records per transaction")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics (0: any port)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap H:P (default: [kafka])")
    p.add_argument("--config", default=None, help="config TOML (default: $PLUM_CONFIG)")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name (tests)")
    return p


def play(argv: list[str]) -> int:
    """`plum replay play ...`: play to the end, then one summary line on stdout."""
    args = _play_parser().parse_args(argv)
    from confluent_kafka import KafkaException

    from streams.replay.play import PlayOptions, PlayRequest, ReplayError
    from streams.replay.play import play as play_replay

    prefix = args.topic_prefix
    routes = tuple(
        (prefix + topic_defs.REPLAY_OF[live], prefix + live)
        for live in (topic_defs.UPLOADS, topic_defs.WATCHES)  # uploads win ties
    )
    try:
        request = PlayRequest(routes, args.id, args.speed, args.max_rate, args.batch_records)
    except ValueError as exc:
        print(f"plum replay play: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger("kafka").level))
    try:
        result = play_replay(_bootstrap(args), request, PlayOptions(metrics_port=args.metrics_port))
    except (ReplayError, KafkaException, TimeoutError) as exc:
        print(f"plum replay play: {exc}", file=sys.stderr)
        return 1
    line = (
        f"replay play {request.play_id}: {result.played} records played in"
        f" {result.transactions} transactions, {result.seconds:.1f} s"
    )
    if result.earlier:
        line += f" ({result.earlier} played by an earlier run)"
    print(line)
    if not result.finished:  # SIGTERM/SIGINT: a clean stop of a resumable play (exit 0)
        print(
            f"plum replay play: stopped before the end; resume with --id {request.play_id}",
            file=sys.stderr,
        )
    return 0


# ------------------------------------------------------------------ backfill


def _backfill_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="plum replay backfill",
        description="Re-run the Flink job over the watches replay topic into"
        " <output>.backfill-<ID> (bounded: it ends at the topic's end offsets at start)."
        " Other options go to `plum flink run` (--config, --bootstrap, --topic-prefix,"
        " --checkpoint-dir, --parallelism, --cluster ...).",
    )
    p.add_argument("--from", dest="from_", default=None, help="event time start (default: 0)")
    p.add_argument("--to", default=None, help="event time end, excl. (default: all)")
    p.add_argument(
        "--id",
        dest="backfill_id",
        default=None,
        help="names the outputs <topic>.backfill-<ID> (default: <from ms>-<to ms>, or 'all')",
    )
    p.add_argument("--config", default=None)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--topic-prefix", default=None)
    return p


def backfill_args(argv: list[str]) -> tuple[list[str], str]:
    """The `plum flink run` arguments of a `plum replay backfill` command line, and the
    output suffix; _BadArguments for what the two cannot mean together."""
    args, rest = _backfill_parser().parse_known_args(argv)
    for flag in ("--backfill", "--output-suffix", "--fresh", "--restore"):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise _BadArguments(f"{flag} is set by plum replay backfill itself")
    from_ms = 0 if args.from_ is None else _time(args.from_, "--from")
    to_ms = END_OF_TIME_MS if args.to is None else _time(args.to, "--to")
    if from_ms >= to_ms:
        raise _BadArguments(
            f"--from {format_time_ms(from_ms)} must be before --to {format_time_ms(to_ms)}"
        )
    backfill_id = args.backfill_id
    if backfill_id is None:
        whole = args.from_ is None and args.to is None
        backfill_id = "all" if whole else f"{from_ms}-{to_ms}"
    if not backfill_id or not all(c.isalnum() or c in "-_" for c in backfill_id):
        raise _BadArguments(f"--id must be letters, digits, '-' or '_', got {backfill_id!r}")
    suffix = OUTPUT_SUFFIX.format(id=backfill_id)
    out = ["--backfill", "--from", str(from_ms), "--to", str(to_ms), "--output-suffix", suffix]
    for flag, value in (
        ("--config", args.config),
        ("--bootstrap", args.bootstrap),
        ("--topic-prefix", args.topic_prefix),
    ):
        if value is not None:
            out += [flag, value]
    return out + rest, suffix


def _used_outputs(bootstrap: str, prefix: str, suffix: str) -> dict[str, int]:
    """The backfill's output topics that exist and hold offsets, with their counts."""
    from streams.kafka.admin import existing_topics
    from streams.kafka.clients import end_offsets

    names = topic_defs.TopicNames.with_prefix(prefix) if prefix else topic_defs.TopicNames()
    outputs = [n + suffix for n in (names.sft_examples, names.cooccurrence, names.deadletter)]
    have = existing_topics(bootstrap)
    used = {}
    for name in (n for n in outputs if n in have):
        total = sum(end_offsets(bootstrap, [name]).values())
        if total:
            used[name] = total
    return used


def backfill(argv: list[str]) -> int:
    """`plum replay backfill ...`: check the outputs are new, then `plum flink run --backfill`."""
    try:
        flink_argv, suffix = backfill_args(argv)
    except _BadArguments as exc:
        print(f"plum replay backfill: {exc}", file=sys.stderr)
        return 2
    from streams.flink import cli as flink_cli
    from streams.flink.job import load_flink_config

    parsed = flink_cli.build_parser().parse_args(flink_argv)
    try:
        cfg = load_flink_config(
            parsed.config, bootstrap=parsed.bootstrap, topic_prefix=parsed.topic_prefix
        )
    except ConfigError as exc:
        print(f"plum replay backfill: {exc}", file=sys.stderr)
        return 2
    used = _used_outputs(cfg.bootstrap, cfg.topic_prefix, suffix)
    if used:
        print(
            f"plum replay backfill: outputs {used} already hold records (an earlier backfill"
            " with this id); choose another --id",
            file=sys.stderr,
        )
        return 1
    log.info("replay backfill into *%s: plum flink run %s", suffix, " ".join(flink_argv))
    return flink_cli.run(flink_argv)
