"""Malformed watch records of every kind the contract distinguishes, and an outside client
to send them: Kafka's own console producer (org.apache.kafka.tools.ConsoleProducer from
the jars `make setup` resolved), so nothing of our producer code is on the input path.

Each builder breaks one valid watch (a dict) in a randomly chosen way and says which
reason `streams.contracts.schema.decode_watch` must give; `fuzz_records` checks every
record against the contract before it is sent, so a count by reason is known up front.

The console producer reads stdin as UTF-8 lines (`key<TAB>value`): a value cannot hold
a newline, and bytes that are not UTF-8 reach Kafka as U+FFFD. Records that need raw
bytes (not UTF-8 at all) go through librdkafka's plain producer (confluent-kafka)
instead, which is not our producer code either.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

from plum.jvm import java_binary, kafka_classpath
from streams.contracts import schema

KEY_SEPARATOR = "\t"
NULL_MARKER = "<<tombstone>>"  # the console producer sends a record with no value
HUGE_FIELD_CHARS = 200_000  # a large record the contract still accepts (limit 256 KiB)
TOO_LARGE_FOR_BROKER = 1_200_000  # over the watch topic's max.message.bytes (1 MiB)

_FIELDS = ("event_id", "user_id", "video_id", "ts", "watch_time_s", "video_duration_s")
_REQUIRED = (*_FIELDS, "clicked", "surface")
_IDS = ("event_id", "user_id", "video_id")
_NUMBERS = ("watch_time_s", "video_duration_s")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True)


def _not_json(w: dict, rng: random.Random) -> str:
    text = _dumps(w)
    return rng.choice(
        [
            lambda: text[: rng.randrange(1, len(text) - 1)],  # torn write
            lambda: text + "}",  # trailing garbage
            lambda: text.replace('"', "'"),  # single quotes
            lambda: "\ufeff" + text,  # a byte-order mark
            lambda: text.replace(f'"{w["user_id"]}"', '"u\\ud800x"', 1),  # lone surrogate
            lambda: "[" * 600 + "]" * 600,  # deeper than MAX_JSON_DEPTH
            lambda: _dumps({**w, "ts": 0})[:-1] + ',"n":' + "9" * 5000 + "}",  # huge int
            lambda: "{" + "".join(rng.choice("{}[]:,\"'x1 ") for _ in range(40)),
        ]
    )()


def _not_object(w: dict, rng: random.Random) -> str:
    return rng.choice([_dumps(list(w.values())), "42", '"a watch"', "null", "true", "[]"])


def _unknown_schema(w: dict, rng: random.Random) -> str:
    return _dumps({**w, "schema": rng.choice([0, 2, 99, "1", None, [1]])})


def _missing_field(w: dict, rng: random.Random) -> str:
    name = rng.choice(_REQUIRED)
    if rng.random() < 0.5:
        return _dumps({k: v for k, v in w.items() if k != name})
    return _dumps({**w, name: None})


def _wrong_type(w: dict, rng: random.Random) -> str:
    name = rng.choice([*_REQUIRED, "satisfaction", "context_video_id", "ts"])
    numeric = name in (*_NUMBERS, "satisfaction")
    choices: list[Any]
    if numeric:
        choices = ["1.0", True, [1.0], {"s": 1}, float("nan"), float("inf"), 10**400]
    elif name == "ts":
        choices = ["1700000000000", float(w["ts"]), -1, True, [w["ts"]], {"ms": w["ts"]}]
    elif name == "clicked":
        choices = [1, 0, "true", [True]]
    else:  # ids, surface, context
        choices = [17, 1.5, False, ["x"], {"id": "x"}]
    return _dumps({**w, name: rng.choice(choices)})


def _empty_id(w: dict, rng: random.Random) -> str:
    return _dumps({**w, rng.choice(_IDS): rng.choice(["", " ", "\t \n"])})


def _negative_duration(w: dict, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return _dumps({**w, "watch_time_s": -rng.uniform(0.001, 1e6)})
    return _dumps({**w, "video_duration_s": rng.choice([0, 0.0, -1.0, -rng.uniform(0, 1e6)])})


def _watch_time_exceeds(w: dict, rng: random.Random) -> str:
    d = w["video_duration_s"]
    return _dumps({**w, "watch_time_s": d * rng.uniform(1.51, 1000.0) + 0.01})


def _future_timestamp(w: dict, rng: random.Random) -> str:
    ts = rng.choice([w["ts"] + 100 * 365 * 86_400_000, 10**25, 2**63, 2**64 + 7])
    return _dumps({**w, "ts": ts})


def _bad_satisfaction(w: dict, rng: random.Random) -> str:
    return _dumps({**w, "satisfaction": rng.choice([-0.01, 1.0001, 2, -5, 1e300])})


def _oversized(w: dict, rng: random.Random) -> str:
    pad = rng.randrange(schema.DEFAULT_MAX_PAYLOAD_BYTES + 1, 700_000)
    return _dumps({**w, "surface": "x" * pad})


def _garbage_text(w: dict, rng: random.Random) -> str:
    """Random bytes as the console producer turns them into text (not UTF-8 -> U+FFFD)."""
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    text = raw.replace(b"\n", b"").replace(b"\r", b"").decode("utf-8", "replace")
    return "~" + text  # never a JSON value's first character


# kind -> (reason it must get, builder). Several kinds may share a reason.
KINDS: dict[str, tuple[str, Callable[[dict, random.Random], str]]] = {
    "not_json": (schema.NOT_JSON, _not_json),
    "random_text": (schema.NOT_JSON, _garbage_text),
    "not_object": (schema.NOT_OBJECT, _not_object),
    "unknown_schema": (schema.UNKNOWN_SCHEMA, _unknown_schema),
    "missing_field": (schema.MISSING_FIELD, _missing_field),
    "wrong_type": (schema.WRONG_TYPE, _wrong_type),
    "empty_id": (schema.EMPTY_ID, _empty_id),
    "negative_duration": (schema.NEGATIVE_DURATION, _negative_duration),
    "watch_time_exceeds": (schema.WATCH_TIME_EXCEEDS_DURATION, _watch_time_exceeds),
    "future_timestamp": (schema.FUTURE_TIMESTAMP, _future_timestamp),
    "bad_satisfaction": (schema.BAD_SATISFACTION, _bad_satisfaction),
    "oversized": (schema.OVERSIZED_PAYLOAD, _oversized),
}


def fuzz_lines(
    valid: list[tuple[str, dict]], count: int, seed: int, now_ms: int
) -> tuple[dict[str, list[tuple[str, str]]], Counter]:
    """`count` malformed records, each a copy of a valid watch broken one way.

    Returns {event_id of the valid watch: [(key, value line), ...] to send right after
    it} (the same key, and a ts no newer than the valid one, so a malformed record never
    moves a partition's watermark past what the valid stream already did) and the count
    sent per reason. Oversized records are rarer (they are large); each kind gets at
    least a handful."""
    rng = random.Random(seed)
    limits = schema.ValidationLimits(now_ms=now_ms)
    kinds = list(KINDS)
    weights = [0.05 if k == "oversized" else 1.0 for k in kinds]
    after: dict[str, list[tuple[str, str]]] = {}
    by_reason: Counter = Counter()
    for i in range(count):
        kind = kinds[i] if i < len(kinds) else rng.choices(kinds, weights)[0]
        key, w = valid[rng.randrange(len(valid))]
        reason, build = KINDS[kind]
        line = build(w, rng)
        assert "\n" not in line and "\r" not in line, kind
        try:
            schema.decode_watch(line.encode("utf-8", "surrogatepass"), limits)
        except schema.ValidationError as err:
            assert err.reason == reason, (kind, err, line[:300])
        else:
            raise AssertionError(f"{kind} built a valid watch: {line[:300]}")
        by_reason[reason] += 1
        after.setdefault(w["event_id"], []).append((key, line))
    return after, by_reason


def huge_but_valid(w: dict, i: int) -> dict:
    """A valid watch of ~200 KB (a huge surface string), under the contract's limit."""
    return {**w, "event_id": f"{w['event_id']}-huge-{i}", "surface": "s" * HUGE_FIELD_CHARS}


def console_produce(bootstrap: str, topic: str, lines: list[tuple[str, str | None]]) -> str:
    """Send `key<TAB>value` lines with Kafka's console producer; a None value is sent as a
    record with no value. Returns the tool's output (it logs refused records, such as one
    over the topic's max.message.bytes, and goes on)."""
    text = "".join(
        f"{key}{KEY_SEPARATOR}{NULL_MARKER if value is None else value}\n" for key, value in lines
    )
    cmd = [
        java_binary(),
        "-Xmx512m",
        "-cp",
        kafka_classpath(),
        "org.apache.kafka.tools.ConsoleProducer",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--property",
        "parse.key=true",
        "--property",
        f"key.separator={KEY_SEPARATOR}",
        "--property",
        f"null.marker={NULL_MARKER}",
        "--producer-property",
        "max.request.size=2097152",  # the broker, not the client, refuses the too-large
        "--producer-property",
        "acks=all",
        "--producer-property",
        "linger.ms=20",
    ]
    done = subprocess.run(
        cmd,
        input=text.encode("utf-8", "surrogatepass"),
        capture_output=True,
        timeout=180,
    )
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"console producer failed ({done.returncode}):\n{out[-3000:]}"
    return out


def raw_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Arbitrary bytes (not UTF-8) with librdkafka's plain producer, keyed like the rest."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})
    errors = []
    for key, value in records:
        producer.produce(topic, value=value, key=key, on_delivery=_collect(errors))
        producer.poll(0)
    assert producer.flush(60) == 0, "raw records not delivered in 60 s"
    assert not errors, errors[:3]


def _collect(errors: list) -> Callable:
    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    return on_delivery
