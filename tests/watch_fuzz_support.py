"""Malformed watch records of every kind the contract distinguishes, sent by the outside
client of tests.fuzz_support (Kafka's console producer, librdkafka for raw bytes).

Each builder breaks one valid watch (a dict) in a randomly chosen way and says which
reason `streams.contracts.schema.decode_watch` must give; `fuzz_lines` checks every
record against the contract before it is sent, so a count by reason is known up front.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from streams.contracts import schema
from tests import fuzz_support as fz
from tests.fuzz_support import dumps as _dumps

HUGE_FIELD_CHARS = 200_000  # a large record the contract still accepts (limit 256 KiB)

_FIELDS = ("event_id", "user_id", "video_id", "ts", "watch_time_s", "video_duration_s")
_REQUIRED = (*_FIELDS, "clicked", "surface")
_IDS = ("event_id", "user_id", "video_id")
_NUMBERS = ("watch_time_s", "video_duration_s")


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


def _negative_duration(w: dict, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return _dumps({**w, "watch_time_s": -rng.uniform(0.001, 1e6)})
    return _dumps({**w, "video_duration_s": rng.choice([0, 0.0, -1.0, -rng.uniform(0, 1e6)])})


def _watch_time_exceeds(w: dict, rng: random.Random) -> str:
    d = w["video_duration_s"]
    return _dumps({**w, "watch_time_s": d * rng.uniform(1.51, 1000.0) + 0.01})


def _bad_satisfaction(w: dict, rng: random.Random) -> str:
    return _dumps({**w, "satisfaction": rng.choice([-0.01, 1.0001, 2, -5, 1e300])})


# kind -> (reason it must get, builder). Several kinds may share a reason.
KINDS: dict[str, tuple[str, Callable[[dict, random.Random], str]]] = {
    **fz.shared_kinds("user_id", _REQUIRED, _IDS, _wrong_type),
    "negative_duration": (schema.NEGATIVE_DURATION, _negative_duration),
    "watch_time_exceeds": (schema.WATCH_TIME_EXCEEDS_DURATION, _watch_time_exceeds),
    "future_timestamp": (schema.FUTURE_TIMESTAMP, fz.future_timestamp),
    "bad_satisfaction": (schema.BAD_SATISFACTION, _bad_satisfaction),
    "oversized": (schema.OVERSIZED_PAYLOAD, functools.partial(fz.oversized, pad_field="surface")),
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
    limits = schema.ValidationLimits(now_ms=now_ms)
    after: dict[str, list[tuple[str, str]]] = {}
    by_reason: Counter = Counter()
    watches = [w for _, w in valid]
    decode = functools.partial(schema.decode_watch, limits=limits)
    for at, line, reason in fz.break_records(KINDS, watches, count, seed, decode):
        key, w = valid[at]
        by_reason[reason] += 1
        after.setdefault(w["event_id"], []).append((key, line))
    return after, by_reason


def huge_but_valid(w: dict, i: int) -> dict:
    """A valid watch of ~200 KB (a huge surface string), under the contract's limit."""
    return {**w, "event_id": f"{w['event_id']}-huge-{i}", "surface": "s" * HUGE_FIELD_CHARS}
