"""Malformed records for the fault tests of any JSON topic, and an outside client to send
them: Kafka's own console producer (org.apache.kafka.tools.ConsoleProducer from the jars
`make setup` resolved), so nothing of our producer code is on the input path.

A topic's fuzz module (tests.watch_fuzz_support, tests.upload_fuzz_support) names its
kinds: kind -> (the reason its decoder must give, a builder that breaks one valid event,
a dict, in a randomly chosen way). The breakages every JSON contract shares (not JSON,
not an object, unknown schema, a missing field, an empty id, random text, oversized) are
here; `break_records` builds a flood from the kinds and checks every record against the
decoder before it is sent, so a count by reason is known up front.

The console producer reads stdin as UTF-8 lines (`key<TAB>value`): a value cannot hold
a newline, and bytes that are not UTF-8 reach Kafka as U+FFFD. Records that need raw
bytes (not UTF-8 at all) go through librdkafka's plain producer (confluent-kafka)
instead, which is not our producer code either.
"""

from __future__ import annotations

import functools
import json
import random
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from plum.jvm import java_binary, kafka_classpath
from streams.contracts import schema

KEY_SEPARATOR = "\t"
NULL_MARKER = "<<tombstone>>"  # the console producer sends a record with no value
TOO_LARGE_FOR_BROKER = 1_200_000  # over the topics' max.message.bytes (1 MiB)

Builder = Callable[[dict, random.Random], str]
Kinds = Mapping[str, tuple[str, Builder]]  # kind -> (reason it must get, builder)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True)


def not_json(obj: dict, rng: random.Random, id_field: str) -> str:
    """`obj` written as text that is not JSON (a lone surrogate goes in `id_field`)."""
    text = dumps(obj)
    return rng.choice(
        [
            lambda: text[: rng.randrange(1, len(text) - 1)],  # torn write
            lambda: text + "}",  # trailing garbage
            lambda: text.replace('"', "'"),  # single quotes
            lambda: "\ufeff" + text,  # a byte-order mark
            lambda: text.replace(f'"{obj[id_field]}"', '"u\\ud800x"', 1),  # lone surrogate
            lambda: "[" * 600 + "]" * 600,  # deeper than MAX_JSON_DEPTH
            lambda: dumps({**obj, "ts": 0})[:-1] + ',"n":' + "9" * 5000 + "}",  # huge int
            lambda: "{" + "".join(rng.choice("{}[]:,\"'x1 ") for _ in range(40)),
        ]
    )()


def not_object(obj: dict, rng: random.Random) -> str:
    return rng.choice([dumps(list(obj.values())), "42", '"an event"', "null", "true", "[]"])


def unknown_schema(obj: dict, rng: random.Random) -> str:
    return dumps({**obj, "schema": rng.choice([0, 2, 99, "1", None, [1]])})


def missing_field(obj: dict, rng: random.Random, required: Sequence[str]) -> str:
    """One of `required` left out, or null."""
    name = rng.choice(required)
    if rng.random() < 0.5:
        return dumps({k: v for k, v in obj.items() if k != name})
    return dumps({**obj, name: None})


def empty_id(obj: dict, rng: random.Random, ids: Sequence[str]) -> str:
    return dumps({**obj, rng.choice(ids): rng.choice(["", " ", "\t \n"])})


def future_timestamp(obj: dict, rng: random.Random) -> str:
    ts = rng.choice([obj["ts"] + 100 * 365 * 86_400_000, 10**25, 2**63, 2**64 + 7])
    return dumps({**obj, "ts": ts})


def oversized(obj: dict, rng: random.Random, pad_field: str) -> str:
    """Over the contract's payload limit (256 KiB), under the broker's (1 MiB)."""
    pad = rng.randrange(schema.DEFAULT_MAX_PAYLOAD_BYTES + 1, 700_000)
    return dumps({**obj, pad_field: "x" * pad})


def garbage_text(obj: dict, rng: random.Random) -> str:
    """Random bytes as the console producer turns them into text (not UTF-8 -> U+FFFD)."""
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    text = raw.replace(b"\n", b"").replace(b"\r", b"").decode("utf-8", "replace")
    return "~" + text  # never a JSON value's first character


def shared_kinds(
    id_field: str, required: Sequence[str], ids: Sequence[str], wrong_type: Builder
) -> dict[str, tuple[str, Builder]]:
    """The kinds every JSON contract has, first in each topic's table (in this order):
    `id_field` is the key a torn record keeps, `required` the fields one of which goes
    missing, `ids` the id fields one of which is emptied, `wrong_type` the topic's own
    breakage of a field's type."""
    return {
        "not_json": (schema.NOT_JSON, functools.partial(not_json, id_field=id_field)),
        "random_text": (schema.NOT_JSON, garbage_text),
        "not_object": (schema.NOT_OBJECT, not_object),
        "unknown_schema": (schema.UNKNOWN_SCHEMA, unknown_schema),
        "missing_field": (
            schema.MISSING_FIELD,
            functools.partial(missing_field, required=required),
        ),
        "wrong_type": (schema.WRONG_TYPE, wrong_type),
        "empty_id": (schema.EMPTY_ID, functools.partial(empty_id, ids=ids)),
    }


def break_records(
    kinds: Kinds,
    valid: Sequence[dict],
    count: int,
    seed: int,
    decode: Callable[[bytes], Any],
) -> Iterator[tuple[int, str, str]]:
    """`count` malformed records, each a copy of one of `valid` broken one way:
    (index into `valid`, the line, the reason `decode` gives it).

    Every kind comes first once, then kinds at random (oversized ones rarer: they are
    large). Each line is checked: `decode` must raise ValidationError with its kind's
    reason, so a builder that makes a valid event or another reason fails here."""
    rng = random.Random(seed)
    names = list(kinds)
    weights = [0.05 if k == "oversized" else 1.0 for k in names]
    for i in range(count):
        kind = names[i] if i < len(names) else rng.choices(names, weights)[0]
        at = rng.randrange(len(valid))
        reason, build = kinds[kind]
        line = build(valid[at], rng)
        assert "\n" not in line and "\r" not in line, kind
        try:
            decode(line.encode("utf-8", "surrogatepass"))
        except schema.ValidationError as err:
            assert err.reason == reason, (kind, err, line[:300])
        else:
            raise AssertionError(f"{kind} built a valid event: {line[:300]}")
        yield at, line, reason


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


def raw_bytes(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """`count` keyed records of random bytes that are not UTF-8 (a 0xff lead byte)."""
    rng = random.Random(seed)
    return [
        (f"raw-{i}".encode(), b"\xff" + rng.randbytes(rng.randrange(1, 2000))) for i in range(count)
    ]


def _collect(errors: list) -> Callable:
    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    return on_delivery
